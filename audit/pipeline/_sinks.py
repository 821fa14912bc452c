"""Where a scan's rows go: each destination is a sink with one small interface.

The row loop of a scan is ``for item in rows: sinks.add(item)``. A sink takes each
:class:`ScannedFile` as it comes (``add``), completes its work at the end of a run (``close``),
and cleans up when the run stops early (``abort``). The sinks of a local scan are the results
files (CSV/XLSX), the run store's batch committer (:mod:`audit.pipeline._reuse`), the tally of verdicts
that summary.json reports, and the progress bar; a distributed engine feeds the same sinks.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from audit.errors import raise_if_disk_full
from audit.intake import FileRecord
from audit.pipeline._outputs import ResultWriter
from audit.rows import STATUS_ERROR, STATUS_OK, ResultRow
from audit.verdicts import VERDICT_AI, VERDICT_ERROR, VERDICT_REAL, VERDICT_UNCERTAIN

# Where a row came from: scored now, the stored result of the same bytes met earlier
# (a duplicate), or re-emitted from the run store for an unchanged file.
SCORED, DUPLICATE, REUSED = "scored", "duplicate", "reused"
_LOG_EVERY_SECONDS = 10.0


@dataclass(frozen=True)
class ScannedFile:
    record: FileRecord
    row: ResultRow
    origin: str  # SCORED, DUPLICATE or REUSED


class RowSink(Protocol):
    def add(self, item: ScannedFile) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class Sinks:
    """Hands each row to every sink, in order; closes them in order at the end of the run."""

    def __init__(self, *sinks: RowSink) -> None:
        self.sinks = sinks

    def add(self, item: ScannedFile) -> None:
        for sink in self.sinks:
            sink.add(item)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()

    def abort(self) -> None:
        """Every sink cleans up, even when one of them fails to."""
        errors = []
        for sink in self.sinks:
            try:
                sink.abort()
            except Exception as exc:  # noqa: BLE001 - the stop that caused the abort is what matters
                errors.append(exc)
        if errors:
            print(f"audit scan: note: cleaning up after the stop failed: {errors[0]}", file=sys.stderr, flush=True)


class ResultFiles:
    """results.csv (and results.xlsx) under temporary names; ``close`` completes them and keeps the
    renames for the run to commit together with summary.json."""

    def __init__(self, writer: ResultWriter) -> None:
        self.writer = writer
        self.renames: list[tuple[Path, Path]] = []
        self.seconds = 0.0  # writing rows and completing the files

    def add(self, item: ScannedFile) -> None:
        started = time.perf_counter()
        try:
            self.writer.write(item.row)
        except OSError as exc:
            raise_if_disk_full(exc, "results.csv", self.writer.csv_path.parent)
            raise
        self.seconds += time.perf_counter() - started

    def close(self) -> None:
        started = time.perf_counter()
        self.renames = self.writer.finish()
        self.seconds += time.perf_counter() - started

    def abort(self) -> None:
        self.writer.abort()

    @property
    def sha256(self) -> dict[str, str]:
        return self.writer.sha256


@dataclass
class Tally:
    """The counts summary.json and the closing line report."""

    files: int = 0
    scored: int = 0  # rows scored in this run (not re-emitted from the store)
    by_status: dict[str, int] = field(default_factory=lambda: {STATUS_OK: 0, STATUS_ERROR: 0})
    by_verdict: dict[str, int] = field(default_factory=lambda: {VERDICT_AI: 0, VERDICT_REAL: 0,
                                                                      VERDICT_UNCERTAIN: 0, VERDICT_ERROR: 0})
    # confusion[true_label][verdict], for rows whose true label is known
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, item: ScannedFile) -> None:
        row = item.row
        self.files += 1
        self.scored += item.origin != REUSED
        self.by_status[row.status] = self.by_status.get(row.status, 0) + 1
        self.by_verdict[row.verdict] = self.by_verdict.get(row.verdict, 0) + 1
        if row.true_label:
            per_label = self.confusion.setdefault(row.true_label, {})
            per_label[row.verdict] = per_label.get(row.verdict, 0) + 1

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def labelled_summary(self) -> dict[str, Any] | None:
        if not self.confusion:
            return None
        scored = sum(n for label, verdicts in self.confusion.items() for v, n in verdicts.items() if v != VERDICT_ERROR)
        correct = sum(verdicts.get(label, 0) for label, verdicts in self.confusion.items())
        return {
            "files": sum(sum(v.values()) for v in self.confusion.values()),
            "scored": scored,
            "correct": correct,
            "accuracy": correct / scored if scored else None,
            "confusion": self.confusion,
        }

    def closing_line(self, out_dir: Path) -> str:
        v = self.by_verdict
        return (f"audit scan: {self.files} files: {v[VERDICT_AI]} ai-generated, {v[VERDICT_REAL]} real, "
                f"{v[VERDICT_UNCERTAIN]} uncertain, {v[VERDICT_ERROR]} errors -> {out_dir}")


class Progress:
    """A tqdm bar on an interactive stderr, plain periodic lines otherwise, or nothing."""

    def __init__(self, total: int, mode: str) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.total, self.done = mode, total, 0
        self.started = self.last_log = time.monotonic()
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True)
        self.closed = False

    def add(self, item: ScannedFile | None = None) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self.last_log >= _LOG_EVERY_SECONDS:
                self.last_log = now
                self.log_line()

    def log_line(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        print(f"audit scan: {self.done}/{self.total} files, {self.done / elapsed:.1f} files/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "log":
            self.log_line()

    def abort(self) -> None:
        self.close()
