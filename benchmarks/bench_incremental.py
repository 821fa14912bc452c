"""Benchmark the nightly rerun: a first `audit scan` over a folder on a fresh run store, then a
second one over the unchanged folder on the same store. Run by hand (it is not a test).

Both runs are separate `audit scan` processes timed by wall clock, which is what a nightly job
costs: interpreter and torch start-up, model loading, the walk, the store lookups, the CSV,
XLSX and summary.json. The second run decodes and scores nothing. By default both runs pass
--no-report (the report's Grad-CAM of up to --max-gallery flagged images and the PDF are redone
every run, whatever the store holds); --with-report times them with the report too.

Example (the CIFAKE test split, 20,000 files; the target is a ratio of at least 20):

    .venv/bin/python benchmarks/bench_incremental.py --extract-zip ../shared/data/cifake.zip \\
        --data /tmp/cifake-test --model audit/weights/cifake-resnet18.json

Smoke test on a busy machine: --limit 300 extracts only the first 300 files of the split.
Without --model a randomly initialised model of the default architecture is made in a temporary
folder: the timings do not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def extract_split(zip_path: Path, split: str, target: Path, limit: int | None) -> int:
    """Extract SPLIT/ of the CIFAKE zip (its first ``limit`` files) into ``target``."""
    with zipfile.ZipFile(zip_path) as archive:
        members = [m for m in archive.infolist() if m.filename.startswith(f"{split}/") and not m.is_dir()]
        members = members[:limit] if limit else members
        for member in members:
            archive.extract(member, target)
    return len(members)


def make_random_model(folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from audit.model import ModelCard, build_network, save_model

    card = ModelCard(name="bench-random")
    save_model(build_network(card.variant), card, folder / "bench-random")
    return folder / "bench-random.json"


def timed_scan(data: Path, model: Path, out: Path, store: Path, extra: list[str]) -> tuple[float, dict]:
    command = [sys.executable, "-m", "audit.cli", "scan", str(data), "--model", str(model), "--out", str(out),
               "--store", str(store), "--quiet", *extra]
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if finished.returncode not in (0, 3, 4):
        raise SystemExit(f"audit scan failed with exit code {finished.returncode}")
    return seconds, json.loads((out / "summary.json").read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of images to scan (made by --extract-zip)")
    parser.add_argument("--extract-zip", type=Path, help="first extract SPLIT/ of this CIFAKE zip into --data")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="extract only the first N files (smoke test)")
    parser.add_argument("--model", type=Path, default=None, help="model card; default: a random model of the default architecture")
    parser.add_argument("--with-report", action="store_true", help="render report.html/pdf in both runs")
    parser.add_argument("--scan-args", default="", help="more `audit scan` options, e.g. --scan-args=\"--no-xlsx --workers 1\" (with =, as it starts with --)")
    args = parser.parse_args()

    if args.extract_zip:
        print(f"extracted {extract_split(args.extract_zip, args.split, args.data, args.limit)} files to {args.data}")
    work = Path(tempfile.mkdtemp(prefix="bench-incremental-"))
    try:
        model = args.model or make_random_model(work)
        extra = ([] if args.with_report else ["--no-report"]) + args.scan_args.split()
        store = work / "audit-store.sqlite"
        first_s, first = timed_scan(args.data, model, work / "first", store, extra)
        second_s, second = timed_scan(args.data, model, work / "second", store, extra)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"files: {first['files']}  (report: {'yes' if args.with_report else 'no, --no-report'})")
    print(f"first run:  {first_s:8.2f} s wall, scored {first['files_scored']}, reused {first['files_reused']}; "
          f"stages {first['seconds']}")
    print(f"second run: {second_s:8.2f} s wall, scored {second['files_scored']}, reused {second['files_reused']}; "
          f"stages {second['seconds']}")
    print(f"ratio first/second: {first_s / second_s:.1f}x (target: at least 20x on the 20,000-file CIFAKE test split)")


if __name__ == "__main__":
    main()
