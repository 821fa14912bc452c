"""`audit` commands run in the test process through click's runner, and what a scan wrote."""

from __future__ import annotations

import csv
import sqlite3
from pathlib import Path

from click.testing import CliRunner, Result

from audit.cli import main
from audit.summary import RunSummary, read_summary


def invoke(*args: str | Path) -> Result:
    """`audit ARGS` in this process; an exception that escapes the command fails the test."""
    return CliRunner().invoke(main, [str(arg) for arg in args], catch_exceptions=False)


def scan_args(*args: str | Path, report: bool = False) -> Result:
    """`audit scan ARGS`, without the report stage unless asked (tests/test_report.py covers it)."""
    return invoke("scan", *args, *(() if report else ("--no-report",)))


def scan_archive(archive: Path, model: Path, out: Path, store: Path | None = None, *extra: str | Path,
                 quiet: bool = True, report: bool = False) -> Result:
    """One night's `audit scan` of ARCHIVE with MODEL into OUT (and STORE, else the default
    store): no decode workers, batches of 8."""
    return scan_args(archive, "--model", model, "--out", out, *(("--store", store) if store is not None else ()),
                     "--workers", "0", "--batch-size", "8", *(("--quiet",) if quiet else ()), *extra, report=report)


def summary_of(out: Path) -> RunSummary:
    return read_summary(out / "summary.json")


def csv_rows(path: Path) -> list[dict[str, str]]:
    """A results.csv (or any CSV the tool writes) as dicts; cells stay as written."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def results_rows(out: Path) -> list[dict[str, str]]:
    return csv_rows(out / "results.csv")


def results_by_path(out: Path) -> dict[str, dict[str, str]]:
    return {row["path"]: row for row in results_rows(out)}


def count_in_store(store: Path, table: str) -> int:
    """Rows of a table in a run store that another process may be writing (0 before it exists)."""
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as db:
            return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
