"""Benchmark reviewers' decisions at the scale of an archive. Run by hand (it is not a test).

1. A first `audit scan` of the folder (--no-report) on a fresh run store; the store is then copied,
   so one copy has no decisions and the other gets them.
2. A spreadsheet with a decision on every row: the run's results.xlsx columns, with `review`
   (confirmed-ai / false-positive / unsure, chosen from the sha256 so copies of one image agree)
   and a `review_note`, written with openpyxl as a reviewer's spreadsheet program would save it.
3. `audit review import` of it, timed as a process (wall clock, start-up included) and in-process
   (`import_decisions` alone). Target: at most 10 s for 20,000 decisions.
4. Nightly reruns of the unchanged folder on each store, interleaved (without, with, without,
   ...) so that the load of a shared machine falls on both alike; after one untimed rerun on each
   (the first rerun after an import writes a new XLSX, since its review columns changed), the
   median of --repeats timed reruns each. Target: with decisions within 10% of without.
5. The XLSX written again from each store's results.csv (what a night whose rows changed does,
   with or without decisions), interleaved, medians.

Example (the CIFAKE test split, 20,000 files, the shipped model):

    .venv/bin/python benchmarks/bench_review.py --data /tmp/cifake-test --model audit/weights/cifake-resnet18.json \
        [--work /tmp/bench-review]   # keeps the first run, so that a second invocation skips its scan
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from audit.summary import read_summary  # noqa: E402 - after the path

DECISIONS = ("confirmed-ai", "false-positive", "unsure")


def run(command: list[str]) -> float:
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if finished.returncode not in (0, 3, 4):
        raise SystemExit(f"{' '.join(command[:4])}... failed ({finished.returncode}):\n{finished.stderr[-2000:]}")
    return seconds


def scan(data: Path, model: Path, out: Path, store: Path, extra: list[str]) -> tuple[float, dict]:
    seconds = run([sys.executable, "-m", "audit.cli", "scan", str(data), "--model", str(model), "--out", str(out),
                   "--store", str(store), "--quiet", *extra])
    return seconds, read_summary(out / "summary.json")


def copy_store(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API (the WAL included)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)


def write_decisions_xlsx(results_xlsx: Path, target: Path) -> int:
    """The run's spreadsheet with a decision and a note on every row; returns the rows filled."""
    from openpyxl import Workbook, load_workbook

    source = load_workbook(results_xlsx, read_only=True)
    rows = source.active.iter_rows(values_only=True)
    header = list(next(rows))
    sha_col, review_col, note_col = (header.index(name) for name in ("sha256", "review", "review_note"))
    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("results")
    sheet.append(header)
    filled = 0
    for row in rows:
        row = list(row)
        if row[sha_col]:
            row[review_col] = DECISIONS[int(row[sha_col][:8], 16) % 3]
            row[note_col] = f"checked against the source ({row[sha_col][:6]})"  # copies of one image agree
            filled += 1
        sheet.append(row)
    source.close()
    workbook.save(target)
    return filled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder of images (e.g. the CIFAKE test split)")
    parser.add_argument("--model", type=Path, default=REPO / "audit" / "weights" / "cifake-resnet18.json")
    parser.add_argument("--repeats", type=int, default=3, help="timed reruns on each store")
    parser.add_argument("--scan-args", default="--no-report", help="`audit scan` options of every run (with =)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the first run and its store here, and reuse them when there (skips the first scan)")
    args = parser.parse_args()
    extra = args.scan_args.split()

    work = Path(tempfile.mkdtemp(prefix="bench-review-"))
    try:
        without, with_decisions = work / "without.sqlite", work / "with.sqlite"
        kept = args.work / "first-run.sqlite" if args.work else None
        if kept is not None and kept.is_file() and (args.work / "first" / "summary.json").is_file():
            shutil.copytree(args.work / "first", work / "first")
            copy_store(kept, without)
            with sqlite3.connect(without) as db:  # the next runs compare with this copy of the first run
                db.execute("UPDATE runs SET out_dir = ?", (str((work / "first").resolve()),))
            print(f"first run reused from {args.work}")
        else:
            first_s, first = scan(args.data, args.model, work / "first", without, extra)
            print(f"first run: {first['files']} files in {first_s:.1f} s (scored {first['files_scored']})")
            if kept is not None:
                args.work.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(args.work / "first", ignore_errors=True)
                shutil.copytree(work / "first", args.work / "first")
                copy_store(without, kept)
        copy_store(without, with_decisions)

        xlsx = work / "decisions.xlsx"
        filled = write_decisions_xlsx(work / "first" / "results.xlsx", xlsx)
        import_s = run([sys.executable, "-m", "audit.cli", "review", "import", str(xlsx), "--store", str(with_decisions),
                        "--by", "bench"])
        with sqlite3.connect(with_decisions) as db:
            recorded = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
        # The same import in-process on a fresh copy, without interpreter start-up.
        sys.path.insert(0, str(REPO))
        from audit.review import import_decisions
        from audit.store import RunStore

        probe = work / "probe.sqlite"
        copy_store(without, probe)
        store = RunStore(probe)
        started = time.perf_counter()
        outcome = import_decisions(store, xlsx, by="bench")
        in_process_s = time.perf_counter() - started
        store.close()
        print(f"import: {filled} rows with a decision, {recorded} decisions recorded (one per distinct sha256); "
              f"`audit review import` {import_s:.2f} s wall, import_decisions in-process {in_process_s:.2f} s "
              f"(target <= 10 s)\n  {outcome.lines()[0]}")

        warm = {}
        for name, store_path in (("without", without), ("with", with_decisions)):
            warm[name], summary = scan(args.data, args.model, work / f"warm-{name}", store_path, extra)
            print(f"untimed first rerun {name} decisions: {warm[name]:.2f} s, files_with_decision "
                  f"{summary.review['files_with_decision']}, awaiting {summary.review['flagged_awaiting_review']}")
        times: dict[str, list[float]] = {"without": [], "with": []}
        for repeat in range(args.repeats):
            for name, store_path in (("without", without), ("with", with_decisions)):
                seconds, summary = scan(args.data, args.model, work / f"{name}-{repeat}", store_path, extra)
                assert summary.files_scored == 0
                times[name].append(seconds)
        median = {name: statistics.median(values) for name, values in times.items()}
        print(f"reruns without decisions: {', '.join(f'{t:.2f}' for t in times['without'])} s; median {median['without']:.2f} s")
        print(f"reruns with {recorded} decisions: {', '.join(f'{t:.2f}' for t in times['with'])} s; median {median['with']:.2f} s")
        print(f"ratio with/without: {median['with'] / median['without']:.3f} (target: at most 1.10)")

        # A night whose rows changed (new decisions, or any new file) writes the XLSX again instead
        # of copying it: that write, with and without the review columns filled, interleaved.
        from audit.pipeline import write_xlsx_from_csv

        writes: dict[str, list[float]] = {"without": [], "with": []}
        for repeat in range(args.repeats):
            for name in ("without", "with"):
                started = time.perf_counter()
                write_xlsx_from_csv(work / f"{name}-0" / "results.csv", work / f"rewrite-{name}.xlsx")
                writes[name].append(time.perf_counter() - started)
        rewrite = {name: statistics.median(values) for name, values in writes.items()}
        print(f"XLSX written again (a night whose rows changed): without {rewrite['without']:.2f} s, with decisions "
              f"{rewrite['with']:.2f} s (medians of {args.repeats}); ratio {rewrite['with'] / rewrite['without']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
