"""Two versions of the audit on the same nights, alternating. Run by hand (it is not a test).

A first run with --before's code makes the run store; each version then gets a copy of it, runs an
unchanged second night (so that its own records are there), and then the unchanged third night is
repeated --reps times, alternating the versions, each from a copy of that version's store as it was
after its second night. With --changes F, last, F of the files are added and F changed and each
version runs that night once. Every night is a fresh `audit scan` process, timed by wall clock.

A version is a source tree (for the code of a commit: `git archive COMMIT | tar -x -C DIR`).

    python3 benchmarks/bench_side_by_side.py --data /work/data/cifake-test/test \\
        --model audit/weights/cifake-resnet18.json --before /tmp/audit-6d5a015 --work /work/data/bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from bench_incremental import change_files, mirror_with_links, scan_command  # noqa: E402 - after the path

from audit.summary import read_summary  # noqa: E402


def copy_store(source: Path, target: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        from_path, to_path = Path(f"{source}{suffix}"), Path(f"{target}{suffix}")
        to_path.unlink(missing_ok=True)
        if from_path.exists():
            shutil.copyfile(from_path, to_path)


def night(code: Path, data: Path, model: Path, store: Path, out: Path, name: str) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    finished = subprocess.run(scan_command(data, model, out, store, []), cwd=code, stdin=subprocess.DEVNULL,
                              env=dict(os.environ, PYTHONPATH=str(code)))
    seconds = time.perf_counter() - started
    if finished.returncode not in (0, 3, 4):
        raise SystemExit(f"audit scan ({name}) failed with exit code {finished.returncode}")
    summary = read_summary(out / "summary.json")
    print(f"{name:7s} {out.name:10s} {seconds:7.2f} s wall, scored {summary.files_scored}, stages {summary.seconds}",
          flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of images (mirrored with hard links)")
    parser.add_argument("--model", type=Path, required=True, help="model card, relative to each version's tree or absolute")
    parser.add_argument("--before", type=Path, required=True, help="source tree of the version to compare against")
    parser.add_argument("--after", type=Path, default=REPO, help="source tree of the version measured (default: this one)")
    parser.add_argument("--reps", type=int, default=4, help="unchanged third nights per version")
    parser.add_argument("--changes", type=float, default=0.0, help="then a night with this fraction added and changed")
    parser.add_argument("--work", type=Path, default=None, help="folder for the copies (on --data's file system)")
    args = parser.parse_args()

    codes = {"before": args.before.resolve(), "after": args.after.resolve()}
    work = Path(tempfile.mkdtemp(prefix="bench-side-by-side-", dir=args.work))
    try:
        data = work / "data"
        print(f"{mirror_with_links(args.data, data)} files", flush=True)
        models = {name: (code / args.model if not args.model.is_absolute() else args.model) for name, code in codes.items()}
        night(codes["before"], data, models["before"], work / "store.sqlite", work / "first", "before")
        for name, code in codes.items():
            copy_store(work / "store.sqlite", work / f"store-{name}.sqlite")
            night(code, data, models[name], work / f"store-{name}.sqlite", work / f"{name}-n2", name)
        times: dict[str, list[float]] = {name: [] for name in codes}
        for _ in range(args.reps):
            for name, code in codes.items():
                copy_store(work / f"store-{name}.sqlite", work / f"run-{name}.sqlite")
                times[name].append(night(code, data, models[name], work / f"run-{name}.sqlite", work / f"{name}-n3", name))
        print("unchanged night, median wall seconds:", {name: round(statistics.median(t), 2) for name, t in times.items()})
        if args.changes > 0:
            print("added, changed:", change_files(data, args.changes), flush=True)
            for name, code in codes.items():
                copy_store(work / f"store-{name}.sqlite", work / f"run-{name}.sqlite")
                night(code, data, models[name], work / f"run-{name}.sqlite", work / f"{name}-n4", name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
