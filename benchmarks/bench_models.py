"""Scan throughput of the shipped models, in one run: the same folder, the same options, one
`audit scan` process per model, alternating (A B A B ...) so that a busy machine weighs on both.
Run by hand (it is not a test). Prints images per second of each and the ratio to the first.

    .venv/bin/python benchmarks/bench_models.py --data /tmp/cifake-test \\
        --models cifake-resnet18 general-resnet18 --repeats 2

Each scan scores every file (--full, its own fresh store), without report or XLSX, on the CPU.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from audit.summary import RunSummary, read_summary  # noqa: E402 - after the path


def timed_scan(data: Path, model: str, work: Path, extra: list[str]) -> tuple[float, RunSummary]:
    """One `audit scan` of every file in ``data``: its wall-clock seconds and its summary."""
    out = work / f"out-{model}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "audit.cli", "scan", str(data), "--model", model, "--out", str(out),
               "--store", str(out) + ".sqlite", "--quiet", "--no-report", "--no-xlsx", "--full", "--device", "cpu", *extra]
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if finished.returncode not in (0, 3, 4):
        raise SystemExit(f"scan failed with exit code {finished.returncode}: {command}")
    return seconds, read_summary(out / "summary.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["cifake-resnet18", "general-resnet18"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--scan-args", default="", help="extra `audit scan` options, one string")
    args = parser.parse_args()
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-models-") as work:
        for repeat in range(args.repeats):
            for model in args.models:
                seconds, summary = timed_scan(args.data, model, Path(work), args.scan_args.split())
                files = summary.files
                rate = files / seconds if files else 0.0
                print(f"run {repeat + 1} {model}: {files} files in {seconds:.1f} s = {rate:.0f} images/s (wall clock, with start-up)")
                best[model] = max(best.get(model, 0.0), rate)
    first = args.models[0]
    for model in args.models:
        print(f"{model}: best {best[model]:.0f} images/s, {best[model] / best[first]:.2f}x of {first}")


if __name__ == "__main__":
    main()
