"""``audit review import``: the decisions a reviewer filled into a results.xlsx / results.csv,
or the CSV the HTML report's decision buttons export, taken into the run store.

The file is read as text, cell by cell, and only the columns an import needs (IMPORT_COLUMNS):
a formula is kept as the text typed, never evaluated. Each row is checked on its own (a decision
the tool knows, a valid sha256 the store has scanned, a note of bounded length); what is new or
changed is recorded in one transaction (audit.review._decisions.record_decisions), and the user is told
why every other row was ignored.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from audit.review._decisions import (
    MAX_NAME_CHARS,
    SHA256_PATTERN,
    Decision,
    ReviewError,
    check_note,
    current_decisions,
    decision_history,
    default_reviewer,
    normalise_decision,
    record_decisions,
    stored_results,
)
from audit.review._sheets import RESULTS_SHEET, csv_rows, is_flagged_sheet, is_results_sheet, xlsx_rows
from audit.rows import REVIEW_DECISIONS, unneutralise
from audit.store import RunStore, first_recorded_from, utc_text

# Reasons listed by row per kind of problem; the counts are always complete.
MAX_LISTED_PER_REASON = 10
_ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_FORMULA_PREFIXES = ("=", "+", "-", "@")


@dataclass
class ImportReport:
    """What ``audit review import`` did, for the user: counts, and why each ignored row was."""

    file: Path
    rows: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    without_decision: int = 0
    copies: int = 0  # rows that repeat, for a copy of an image (same sha256), another row's decision
    formula_notes: int = 0
    ignored: dict[str, list[str]] = field(default_factory=dict)  # reason -> rows ("row 7: ...")
    imported_before: str = ""  # when this very file was imported before, if it was

    @property
    def ignored_count(self) -> int:
        return sum(len(rows) for rows in self.ignored.values())

    def ignore(self, reason: str, where: str) -> None:
        self.ignored.setdefault(reason, []).append(where)

    def lines(self) -> list[str]:
        taken = self.new + self.changed
        out = [f"{self.file}: {self.rows} rows: {self.new} new decisions, {self.changed} changed, "
               f"{self.unchanged} unchanged, {self.ignored_count} ignored, {self.without_decision} without a decision"
               + (f", {self.copies} repeating the decision of a copy of the same image" if self.copies else "")]
        if self.imported_before:
            out.append(f"this file was imported before ({self.imported_before}); only what differs from the "
                       f"current decisions was recorded")
        if self.formula_notes:
            out.append(f"{self.formula_notes} note(s) start like a spreadsheet formula (= + - @): kept as plain text, "
                       f"never evaluated")
        for reason, rows in self.ignored.items():
            shown = ", ".join(rows[:MAX_LISTED_PER_REASON]) + (f", ... ({len(rows)} in all)" if len(rows) > MAX_LISTED_PER_REASON else "")
            out.append(f"ignored ({reason}): {shown}")
        out.append(f"recorded {taken} decision(s) in one transaction" if taken else "nothing recorded")
        return out


# The columns a file of decisions needs; results.xlsx/results.csv and the report's export have them.
REQUIRED_IMPORT_COLUMNS = ("sha256", "review")
# Every column an import reads (the others are never looked at, so edits to them change nothing).
IMPORT_COLUMNS = ("sha256", "review", "review_note", "reviewed_at", "model_id", "decided_by", "decided_at")


@dataclass(frozen=True)
class TableRow:
    """A row of decisions as read: where it is ("row 7", "results-2 row 7"), its cells in the
    header's order, and whether it repeats a row of another sheet (the XLSX's ``flagged`` sheets)."""

    where: str
    cells: list[str]
    repeated: bool = False


def read_table(path: Path, columns: Sequence[str] = IMPORT_COLUMNS) -> tuple[list[str], list[TableRow]]:
    """(header, rows) of an XLSX (its ``flagged`` and every ``results`` sheet, else its first
    sheet) or a CSV, cells as text with the spreadsheet quoting undone. Only the cells under
    ``columns`` are read (the others are ""): an import needs 8 of results.xlsx's columns. Row
    numbers are the spreadsheet's (the header is row 1); a sheet other than ``results`` is named."""
    if not path.is_file():
        raise ReviewError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        sheets = xlsx_rows(path, set(columns))
    elif suffix in (".csv", ".txt"):
        sheets = [(RESULTS_SHEET, list(enumerate(csv_rows(path), start=1)))]
    else:
        raise ReviewError(f"{path}: not an .xlsx or .csv file")
    sheets = [(name, rows) for name, rows in sheets if rows]
    if not sheets:
        raise ReviewError(f"{path} is empty: expected a results.xlsx/results.csv of audit scan or the report's export")
    # The results sheet's header names the columns; another sheet's cells are moved under it by name.
    header = next(([cell.strip() for cell in rows[0][1]] for name, rows in sheets if is_results_sheet(name)),
                  [cell.strip() for cell in sheets[0][1][0][1]])
    table = []
    for name, rows in sheets:
        own = [cell.strip() for cell in rows[0][1]]
        moves = [(own.index(column), header.index(column)) for column in columns if column in own and column in header]
        prefix = "" if name == RESULTS_SHEET else f"{name} "
        for number, cells in rows[1:]:
            kept = [""] * len(header)
            for source, target in moves:
                if source < len(cells):
                    kept[target] = unneutralise(cells[source])
            table.append(TableRow(f"{prefix}row {number}", kept, repeated=is_flagged_sheet(name)))
    return header, table


@dataclass(frozen=True)
class _Candidate:
    where: str
    decision: Decision
    exported_at: str  # the row's reviewed_at: the decision the file showed when it was written
    repeated: bool = False  # from the flagged sheet, which repeats rows of the results sheets


def import_decisions(store: RunStore, path: Path, by: str | None = None) -> ImportReport:
    """``audit review import``: take the decisions of a results.xlsx/results.csv or of the
    report's export; record the new and changed ones in one transaction; say what was ignored."""
    header, rows = read_table(path)
    _check_columns(path, header)
    report = ImportReport(file=path, rows=sum(not row.repeated for row in rows))
    source, report.imported_before = _import_source(store, path)
    candidates = _read_candidates(rows, _RowCells.of(header), report, source, by)
    changes, current = _changes_by_sha256(store, path, candidates, report)
    taken = _agreed_decisions(changes, current, report)
    if taken:
        record_decisions(store, taken)
    return report


def _check_columns(path: Path, header: list[str]) -> None:
    """Refuse a file that is not one of decisions (ReviewError): it lacks a column an import needs."""
    missing = [name for name in REQUIRED_IMPORT_COLUMNS if name not in header]
    if missing == ["review"] and "verdict" in header:
        raise ReviewError(f"{path} has no review column: it was written by an audit older than reviewer decisions; "
                          f"import the results.xlsx of a newer run")
    if missing:
        raise ReviewError(f"{path} is not a results.xlsx/results.csv of audit scan nor a decisions export of its "
                          f"report: it lacks the column(s) {', '.join(missing)}")


def _import_source(store: RunStore, path: Path) -> tuple[str, str]:
    """The source each decision of this file is recorded with (the file's sha256 and name), and
    when this very file was imported before ("on ..."; "" if never)."""
    from audit.model import file_sha256

    file_hash = file_sha256(path)
    before = first_recorded_from(store, f"import sha256:{file_hash}")
    return f"import sha256:{file_hash} {path.name[:MAX_NAME_CHARS]}", f"on {before}" if before else ""


@dataclass(frozen=True)
class _RowCells:
    """A table's cells by column name; "" for a column the file lacks or a row too short."""

    column: dict[str, int]

    @classmethod
    def of(cls, header: list[str]) -> "_RowCells":
        return cls({name: header.index(name) for name in header if name})

    def get(self, row: list[str], name: str) -> str:
        index = self.column.get(name)
        return row[index] if index is not None and index < len(row) else ""


def _read_candidates(rows: list[TableRow], cells: _RowCells, report: ImportReport, source: str,
                     by: str | None) -> list[_Candidate]:
    """The rows that say a decision the tool can take; the others are counted in ``report``."""
    now = utc_text()  # the decision time of the rows that do not say theirs
    candidates = [candidate for candidate in (_row_candidate(row, cells, report, source, by, now) for row in rows)
                  if candidate is not None]
    # A flagged-sheet row that says what the results row of its file says is that row again.
    on_results = {(c.decision.sha256, c.decision.decision, c.decision.note) for c in candidates if not c.repeated}
    candidates = [c for c in candidates
                  if not (c.repeated and (c.decision.sha256, c.decision.decision, c.decision.note) in on_results)]
    report.formula_notes = sum(1 for c in candidates if c.decision.note.lstrip().startswith(_FORMULA_PREFIXES))
    # A results row left empty is not "without a decision" when its flagged-sheet row has one.
    decided_on_flagged = {candidate.decision.sha256 for candidate in candidates if candidate.repeated}
    report.without_decision = sum(1 for row in rows if not row.repeated and not cells.get(row.cells, "review").strip()
                                  and cells.get(row.cells, "sha256").strip().lower() not in decided_on_flagged)
    return candidates


def _row_candidate(table_row: TableRow, cells: _RowCells, report: ImportReport, source: str,
                   by: str | None, now: str) -> _Candidate | None:
    """One row as a decision to consider, or None: no decision in it, or one that cannot be
    taken (``report`` says why)."""
    where, row = table_row.where, table_row.cells
    review, note = cells.get(row, "review").strip(), cells.get(row, "review_note")
    if not review:
        if note.strip():
            report.ignore("a note without a decision", where)
        return None
    sha256 = cells.get(row, "sha256").strip().lower()
    decision = normalise_decision(review)
    problem = check_note(note)
    if not SHA256_PATTERN.fullmatch(sha256):
        report.ignore("no valid sha256 in the row", where)
    elif decision is None:
        report.ignore(f"unknown decision value (use {', '.join(REVIEW_DECISIONS)})", f"{where}: {review[:40]!r}")
    elif problem:
        report.ignore("note too long", f"{where}: {problem}")
    else:
        decided_at = cells.get(row, "decided_at").strip()
        made = Decision(
            sha256=sha256, decision=decision, note=note, source=source,
            decided_by=(by or cells.get(row, "decided_by").strip() or default_reviewer())[:MAX_NAME_CHARS],
            decided_at=decided_at if _ISO_UTC.fullmatch(decided_at) else now,
            model_id=cells.get(row, "model_id").strip()[:MAX_NAME_CHARS])
        return _Candidate(where, made, cells.get(row, "reviewed_at").strip(), table_row.repeated)
    return None


def _changes_by_sha256(store: RunStore, path: Path, candidates: list[_Candidate],
                       report: ImportReport) -> tuple[dict[str, list[_Candidate]], dict[str, Decision]]:
    """The candidates that would change a decision, by sha256 (with the model and prob_ai the
    store has for those bytes), and the current decisions; the others are counted in ``report``."""
    known = stored_results(store, [c.decision.sha256 for c in candidates])
    if candidates and not known:
        raise ReviewError(f"none of the {len(candidates)} decisions in {path} is for a file this run store "
                          f"({store.path}) has scanned: is the file from another run store or another tool? "
                          f"Nothing was recorded")
    current = current_decisions(store)
    changes: dict[str, list[_Candidate]] = {}
    unchanged: list[_Candidate] = []
    for candidate in candidates:
        sha256 = candidate.decision.sha256
        now_current = current.get(sha256)
        if sha256 not in known:
            report.ignore("unknown sha256: no scan recorded these bytes in this run store", candidate.where)
        elif now_current and _repeats(candidate, now_current):
            unchanged.append(candidate)
        elif now_current and _is_stale(store, candidate, now_current):
            report.ignore("stale: the file shows an older decision that a newer one replaced", f"{candidate.where} "
                          f"(now {now_current.decision} by {now_current.decided_by} at {now_current.decided_at})")
        else:
            changes.setdefault(sha256, []).append(candidate_with_result(candidate, known[sha256]))
    # A flagged-sheet row repeats a results row: counted when the results row said nothing.
    on_results = {candidate.decision.sha256 for candidate in candidates if not candidate.repeated}
    report.unchanged += sum(1 for c in unchanged if not c.repeated or c.decision.sha256 not in on_results)
    return changes, current


def _agreed_decisions(changes: dict[str, list[_Candidate]], current: dict[str, Decision],
                      report: ImportReport) -> list[Decision]:
    """One decision per sha256 to record. Copies of one image given different decisions are
    ignored (ask, do not guess); copies that agree count once. A row of the flagged sheet is the
    same file as a row of a results sheet: the same decision typed in both is one decision, and a
    decision typed in one only is taken; two different ones are a conflict, as for copies."""
    taken: list[Decision] = []
    for sha256, same in changes.items():
        if len({(c.decision.decision, c.decision.note) for c in same}) > 1:
            for candidate in same:
                report.ignore("conflicting decisions for the same content (copies of one image, or a file's row on the "
                              "flagged sheet and on a results sheet)", candidate.where)
            continue
        taken.append(same[0].decision)
        report.copies += max(0, sum(not c.repeated for c in same) - 1)
        if sha256 in current:
            report.changed += 1
        else:
            report.new += 1
    return taken

def candidate_with_result(candidate: _Candidate, results: dict[str, float | None]) -> _Candidate:
    """The model id and prob_ai the reviewer saw, from the store, not from the file's cells (an
    edited cell changes nothing): the row's model when the store has its result for these bytes,
    else the model that judged them last."""
    model_id = candidate.decision.model_id if candidate.decision.model_id in results else next(iter(results))
    decision = dataclasses.replace(candidate.decision, model_id=model_id, prob_ai=results[model_id])
    return dataclasses.replace(candidate, decision=decision)


def _repeats(candidate: _Candidate, current: Decision) -> bool:
    """The row says what the current decision says: nothing to record. The same decision given
    while another model's result was on screen is new, though (a false positive cleared again under
    a new model), unless the row is the current decision as the spreadsheet showed it (its
    reviewed_at is the decision's time): an untouched cell re-clears nothing."""
    made = candidate.decision
    if (made.decision, made.note) != (current.decision, current.note):
        return False
    same_model = not made.model_id or made.model_id == current.model_id
    return same_model or candidate.exported_at == current.decided_at


def _is_stale(store: RunStore, candidate: _Candidate, current: Decision) -> bool:
    """The row repeats an older decision exactly as the file showed it when it was written (its
    reviewed_at), while a newer decision has replaced it since: an old spreadsheet, not a change."""
    if not candidate.exported_at or candidate.exported_at >= current.decided_at:
        return False
    shown = candidate.decision
    return any(old.decided_at == candidate.exported_at and (old.decision, old.note) == (shown.decision, shown.note)
               for old in decision_history(store, shown.sha256))
