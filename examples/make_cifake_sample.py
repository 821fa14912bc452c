"""Rebuild examples/cifake-sample/ from the CIFAKE zip (run by hand; the output is committed).

The selection is deterministic: from the TEST split, the first 100 REAL and the first 100 FAKE
files by name, leaving out every file listed in DUPLICATES.tsv (byte-identical copies and the
test/FAKE images that also occur in train), so each sample image is unique and unseen in training.

    python examples/make_cifake_sample.py ../shared/data/cifake.zip
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

PER_CLASS = 100
HERE = Path(__file__).parent / "cifake-sample"


def duplicated_names(duplicates_tsv: Path) -> set[str]:
    names: set[str] = set()
    if duplicates_tsv.is_file():
        for line in duplicates_tsv.read_text(encoding="utf-8").splitlines()[1:]:
            _, files = line.split("\t", 1)
            names.update(name.strip() for name in files.split(" | "))
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("zip", type=Path, help="cifake.zip (SPLIT/REAL|FAKE/*.jpg)")
    args = parser.parse_args()
    skip = duplicated_names(args.zip.with_name("DUPLICATES.tsv"))
    with zipfile.ZipFile(args.zip) as archive:
        names = archive.namelist()
        for label in ("REAL", "FAKE"):
            prefix = f"test/{label}/"
            chosen = sorted(n for n in names if n.startswith(prefix) and n != prefix and n not in skip)[:PER_CLASS]
            target = HERE / label
            target.mkdir(parents=True, exist_ok=True)
            for name in chosen:
                (target / name.removeprefix(prefix)).write_bytes(archive.read(name))
            print(f"{label}: {len(chosen)} files -> {target}")


if __name__ == "__main__":
    main()
