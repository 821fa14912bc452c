"""Reviewers' decisions: recorded once by content (sha256), carried by every later run.

A decision says of one image's bytes ``confirmed-ai``, ``false-positive`` or ``unsure``, with who
decided, when, a note, and the model id and ``prob_ai`` the reviewer saw. It lives in the run
store's ``decisions`` table (audit.store), which is only ever appended to: a change adds a row,
and the newest row for a sha256 is its current decision. Because the key is the content, a file
renamed, moved or copied keeps its decision and an edited one loses it.

Decisions reach the store three ways, all through :func:`record_decisions` (one transaction):
``audit review set`` on the command line, and ``audit review import`` of a results.xlsx /
results.csv whose ``review`` and ``review_note`` cells a reviewer filled in, or of the CSV that
the HTML report's decision buttons export. A scan then writes each file's current decision into
its ``review*`` columns (:class:`ReviewTally`), and the report and ``--fail-on-flagged`` go by them.
"""

from __future__ import annotations

import csv
import getpass
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from audit.results import REVIEW_DECISIONS, VERDICT_AI, ResultRow, unneutralise
from audit.store import RunStore, utc_text

CONFIRMED, CLEARED, UNSURE = REVIEW_DECISIONS  # confirmed-ai, false-positive, unsure
# Bounds on text from a spreadsheet or a page: a note is for a sentence or a paragraph.
MAX_NOTE_CHARS = 2000
MAX_NAME_CHARS = 200
# Reasons listed by row per kind of problem; the counts are always complete.
MAX_LISTED_PER_REASON = 10
# Lookups per query: under SQLite's old limit of 999 parameters.
_CHUNK = 500
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_FORMULA_PREFIXES = ("=", "+", "-", "@")


class ReviewError(Exception):
    """A decision or a file of decisions that cannot be taken at all; the user must act (exit 2)."""


@dataclass(frozen=True)
class Decision:
    sha256: str
    decision: str  # one of REVIEW_DECISIONS
    decided_by: str
    decided_at: str  # ISO 8601 UTC
    note: str = ""
    model_id: str = ""
    prob_ai: float | None = None
    source: str = ""
    recorded_at: str = ""
    id: int = 0  # its row in the store; 0 before it is recorded


def default_reviewer() -> str:
    """Who decides when nobody says: the login name ($USER, $LOGNAME, or the account's name)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no name in the environment nor in the password database
        return "unknown"


def normalise_decision(text: str) -> str | None:
    """The decision a cell means (``Confirmed AI``, ``false_positive`` and ``unsure`` included); None: not one."""
    value = re.sub(r"[\s_]+", "-", str(text).strip().lower())
    return value if value in REVIEW_DECISIONS else None


# --------------------------------------------------------------------------- the store


def _decision_from(row: Any) -> Decision:
    return Decision(sha256=row["sha256"], decision=row["decision"], decided_by=row["decided_by"],
                    decided_at=row["decided_at"], note=row["note"], model_id=row["model_id"], prob_ai=row["prob_ai"],
                    source=row["source"], recorded_at=row["recorded_at"], id=row["id"])


def current_decisions(store: RunStore) -> dict[str, Decision]:
    """Every sha256's current decision (its newest row): read once per run, one query."""
    rows = store.db.execute(
        "SELECT d.* FROM decisions d JOIN (SELECT sha256, max(id) AS id FROM decisions GROUP BY sha256) newest "
        "ON d.id = newest.id").fetchall()
    return {row["sha256"]: _decision_from(row) for row in rows}


def decision_history(store: RunStore, sha256: str) -> list[Decision]:
    """Every decision ever recorded for these bytes, oldest first."""
    rows = store.db.execute("SELECT * FROM decisions WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()
    return [_decision_from(row) for row in rows]


def known_sha256s(store: RunStore, sha256s: Iterable[str]) -> set[str]:
    """Those of ``sha256s`` that some run scored into this store (a result under any model)."""
    wanted, known = sorted(set(sha256s)), set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        known.update(row[0] for row in store.db.execute(f"SELECT DISTINCT sha256 FROM scores WHERE sha256 IN ({marks})", chunk))
    return known


def latest_result(store: RunStore, sha256: str) -> tuple[str, float | None] | None:
    """(model id, prob_ai) of the newest stored result for these bytes; None: never scanned."""
    row = store.db.execute("SELECT model_id, row_json FROM scores WHERE sha256 = ? ORDER BY scored_run DESC LIMIT 1",
                           (sha256,)).fetchone()
    if row is None:
        return None
    return row[0], json.loads(row[1]).get("prob_ai")


def paths_by_sha256(store: RunStore) -> dict[str, str]:
    """One path the last runs saw for each sha256 (to name a decision's file in listings)."""
    return {row[0]: row[1] for row in store.db.execute("SELECT sha256, path FROM files WHERE sha256 != '' ORDER BY path DESC")}


def record_decisions(store: RunStore, decisions: Sequence[Decision]) -> None:
    """Append the decisions in one transaction: all of them reach the store, or none."""
    recorded_at = utc_text()
    with store._transaction() as db:  # noqa: SLF001 - the store's one way to write atomically
        db.executemany(
            "INSERT INTO decisions (sha256, decision, decided_by, decided_at, recorded_at, note, model_id, prob_ai, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [(d.sha256, d.decision, d.decided_by, d.decided_at, recorded_at, d.note, d.model_id, d.prob_ai, d.source)
             for d in decisions])


def resolve_target(store: RunStore, target: str) -> str:
    """``audit review set``'s first argument: a sha256, or a file whose bytes are hashed now."""
    from audit.model import file_sha256

    text = target.strip().lower()
    if _SHA256.fullmatch(text):
        sha256 = text
    elif Path(target).is_file():
        sha256 = file_sha256(Path(target))
    else:
        raise ReviewError(f"{target!r} is neither a sha256 (64 hex digits) nor a file")
    if not known_sha256s(store, [sha256]):
        where = f" (the bytes of {target})" if sha256 != text else ""
        raise ReviewError(f"no scan recorded sha256 {sha256}{where} in the run store {store.path}: scan the file "
                          f"first (a file edited since its scan has other bytes, so another sha256)")
    return sha256


def check_note(note: str) -> str | None:
    """Why a note cannot be taken, or None."""
    if len(note) > MAX_NOTE_CHARS:
        return f"a note of {len(note)} characters (at most {MAX_NOTE_CHARS})"
    return None


def set_decision(store: RunStore, target: str, decision: str, note: str = "", by: str | None = None) -> Decision:
    """``audit review set``: one decision, recorded with the newest result's model id and prob_ai."""
    value = normalise_decision(decision)
    if value is None:
        raise ReviewError(f"unknown decision {decision!r}: use one of {', '.join(REVIEW_DECISIONS)}")
    problem = check_note(note)
    if problem:
        raise ReviewError(problem)
    sha256 = resolve_target(store, target)
    model_id, prob_ai = latest_result(store, sha256) or ("", None)
    made = Decision(sha256=sha256, decision=value, decided_by=(by or default_reviewer())[:MAX_NAME_CHARS],
                    decided_at=utc_text(), note=note, model_id=model_id, prob_ai=prob_ai, source="set")
    record_decisions(store, [made])
    return made


# --------------------------------------------------------------------------- what a run does with them


def review_state(verdict: str, model_id: str, review: str, review_model_id: str) -> str:
    """Where a row stands for the reviewers: ``awaiting`` (flagged, no decision that settles it),
    ``confirmed``, ``cleared``, or ``not-flagged``. A false positive cleared under another model
    is awaiting again: the new model flags it for its own reasons."""
    if verdict != VERDICT_AI:
        return "not-flagged"
    if review == CONFIRMED:
        return "confirmed"
    if review == CLEARED and (not review_model_id or review_model_id == model_id):
        return "cleared"
    return "awaiting"


def cleared_under_other_model(verdict: str, model_id: str, review: str, review_model_id: str) -> bool:
    return verdict == VERDICT_AI and review == CLEARED and bool(review_model_id) and review_model_id != model_id


@dataclass
class ReviewTally:
    """Fills each row's review columns from the decisions and counts the flagged rows by state."""

    decisions: dict[str, Decision]
    counts: Counter = field(default_factory=Counter)
    rows_with_decision: int = 0
    cleared_under_other_model: int = 0

    def apply(self, row: ResultRow) -> None:
        decision = self.decisions.get(row.sha256) if row.sha256 else None
        if decision is not None:
            row.review, row.review_note = decision.decision, decision.note
            row.reviewed_by, row.reviewed_at, row.review_model_id = decision.decided_by, decision.decided_at, decision.model_id
            self.rows_with_decision += 1
        state = review_state(row.verdict, row.model_id, row.review, row.review_model_id)
        self.counts[state] += 1
        if cleared_under_other_model(row.verdict, row.model_id, row.review, row.review_model_id):
            self.cleared_under_other_model += 1

    @property
    def flagged_not_cleared(self) -> int:
        return self.counts["awaiting"] + self.counts["confirmed"]

    def to_json(self) -> dict[str, Any]:
        """summary.json's ``review``: the flagged files three ways, and what the run went by."""
        return {
            "flagged_awaiting_review": self.counts["awaiting"],
            "flagged_confirmed": self.counts["confirmed"],
            "flagged_cleared": self.counts["cleared"],
            "cleared_under_another_model": self.cleared_under_other_model,
            "files_with_decision": self.rows_with_decision,
            # Changes whenever a decision is recorded: a rerun with new decisions is not "unchanged".
            "decisions_up_to": max((d.id for d in self.decisions.values()), default=0),
        }


# --------------------------------------------------------------------------- import


@dataclass
class ImportReport:
    """What ``audit review import`` did, for the user: counts, and why each ignored row was."""

    file: Path
    rows: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    without_decision: int = 0
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
               f"{self.unchanged} unchanged, {self.ignored_count} ignored, {self.without_decision} without a decision"]
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


def read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of an XLSX (first sheet) or a CSV, every cell as text, spreadsheet quoting undone."""
    if not path.is_file():
        raise ReviewError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        rows = _xlsx_rows(path)
    elif suffix in (".csv", ".txt"):
        rows = _csv_rows(path)
    else:
        raise ReviewError(f"{path}: not an .xlsx or .csv file")
    if not rows:
        raise ReviewError(f"{path} is empty: expected a results.xlsx/results.csv of audit scan or the report's export")
    header = [cell.strip() for cell in rows[0]]
    return header, [[unneutralise(cell) for cell in row] for row in rows[1:]]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _xlsx_rows(path: Path) -> list[list[str]]:
    from zipfile import BadZipFile

    from openpyxl import load_workbook

    try:
        # data_only=False: a formula typed into a cell is read as its text, never as a value.
        workbook = load_workbook(path, read_only=True, data_only=False)
    except (BadZipFile, KeyError, ValueError, OSError) as exc:
        raise ReviewError(f"{path} cannot be read as an XLSX workbook ({exc})") from None
    try:
        sheet = workbook["results"] if "results" in workbook.sheetnames else workbook.worksheets[0]
        return [[_text(value) for value in row] for row in sheet.iter_rows(values_only=True)]
    finally:
        workbook.close()


def _csv_rows(path: Path) -> list[list[str]]:
    # A note of many megabytes must be read to be refused with a reason, not crash the reader.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return list(csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise ReviewError(f"{path} is not UTF-8 text ({exc}); save it as CSV UTF-8") from None
    except csv.Error as exc:
        raise ReviewError(f"{path} is not a readable CSV file ({exc})") from None


@dataclass(frozen=True)
class _Candidate:
    where: str
    decision: Decision
    exported_at: str  # the row's reviewed_at: the decision the file showed when it was written


def import_decisions(store: RunStore, path: Path, by: str | None = None) -> ImportReport:
    """``audit review import``: take the decisions of a results.xlsx/results.csv or of the
    report's export; record the new and changed ones in one transaction; say what was ignored."""
    from audit.model import file_sha256

    header, rows = read_table(path)
    missing = [name for name in REQUIRED_IMPORT_COLUMNS if name not in header]
    if missing:
        raise ReviewError(f"{path} is not a results.xlsx/results.csv of audit scan nor a decisions export of its "
                          f"report: it lacks the column(s) {', '.join(missing)}")
    column = {name: header.index(name) for name in header if name}
    report = ImportReport(file=path, rows=len(rows))
    file_hash = file_sha256(path)
    source = f"import sha256:{file_hash} {path.name}"[:MAX_NAME_CHARS + 80]
    before = store.db.execute("SELECT min(recorded_at) FROM decisions WHERE source LIKE ?",
                              (f"import sha256:{file_hash}%",)).fetchone()[0]
    report.imported_before = f"on {before}" if before else ""
    now = utc_text()

    def cell(row: list[str], name: str) -> str:
        index = column.get(name)
        return row[index] if index is not None and index < len(row) else ""

    candidates: list[_Candidate] = []
    for number, row in enumerate(rows, start=2):  # spreadsheet row numbers: the header is row 1
        where = f"row {number}"
        review, note = cell(row, "review").strip(), cell(row, "review_note")
        if not review:
            report.without_decision += 1
            if note.strip():
                report.ignore("a note without a decision", where)
            continue
        sha256 = cell(row, "sha256").strip().lower()
        if not _SHA256.fullmatch(sha256):
            report.ignore("no valid sha256 in the row", where)
            continue
        decision = normalise_decision(review)
        if decision is None:
            report.ignore(f"unknown decision value (use {', '.join(REVIEW_DECISIONS)})", f"{where}: {review[:40]!r}")
            continue
        problem = check_note(note)
        if problem:
            report.ignore("note too long", f"{where}: {problem}")
            continue
        if note.lstrip().startswith(_FORMULA_PREFIXES):
            report.formula_notes += 1
        decided_by = (by or cell(row, "decided_by").strip() or default_reviewer())[:MAX_NAME_CHARS]
        decided_at = cell(row, "decided_at").strip()
        candidates.append(_Candidate(where, Decision(
            sha256=sha256, decision=decision, decided_by=decided_by,
            decided_at=decided_at if _ISO_UTC.fullmatch(decided_at) else now, note=note,
            model_id=cell(row, "model_id").strip()[:MAX_NAME_CHARS], prob_ai=_float_or_none(cell(row, "prob_ai")),
            source=source), cell(row, "reviewed_at").strip()))

    known = known_sha256s(store, [c.decision.sha256 for c in candidates])
    current = current_decisions(store)
    by_sha256: dict[str, list[_Candidate]] = {}
    for candidate in candidates:
        sha256 = candidate.decision.sha256
        if sha256 not in known:
            report.ignore("unknown sha256: no scan recorded these bytes in this run store", candidate.where)
            continue
        now_current = current.get(sha256)
        if now_current and (now_current.decision, now_current.note) == (candidate.decision.decision, candidate.decision.note):
            report.unchanged += 1
            continue
        if now_current and _is_stale(store, candidate, now_current):
            report.ignore("stale: the file shows an older decision that a newer one replaced", f"{candidate.where} "
                          f"(now {now_current.decision} by {now_current.decided_by} at {now_current.decided_at})")
            continue
        by_sha256.setdefault(sha256, []).append(candidate)

    if candidates and not known:
        raise ReviewError(f"none of the {len(candidates)} decisions in {path} is for a file this run store "
                          f"({store.path}) has scanned: is the file from another run store or another tool? "
                          f"Nothing was recorded")
    taken: list[Decision] = []
    for sha256, same in by_sha256.items():
        if len({(c.decision.decision, c.decision.note) for c in same}) > 1:
            for candidate in same:  # copies of one image given different decisions: ask, do not guess
                report.ignore("conflicting decisions for the same content (copies of one image)", candidate.where)
            continue
        taken.append(same[0].decision)
        if sha256 in current:
            report.changed += 1
        else:
            report.new += 1
    if taken:
        record_decisions(store, taken)
    return report


def _is_stale(store: RunStore, candidate: _Candidate, current: Decision) -> bool:
    """The row repeats an older decision exactly as the file showed it when it was written (its
    reviewed_at), while a newer decision has replaced it since: an old spreadsheet, not a change."""
    if not candidate.exported_at or candidate.exported_at >= current.decided_at:
        return False
    shown = candidate.decision
    return any(old.decided_at == candidate.exported_at and (old.decision, old.note) == (shown.decision, shown.note)
               for old in decision_history(store, shown.sha256))


def _float_or_none(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if 0.0 <= value <= 1.0 else None


# --------------------------------------------------------------------------- listing


LIST_HEADER = ["decided_at", "decision", "by", "sha256", "model", "prob_ai", "path", "note"]


def describe_decision(decision: Decision, path: str = "", with_source: bool = False) -> list[str]:
    """One `audit review list` table row; the note on one line, cut to 60 characters."""
    note = " ".join(decision.note.split())
    note = note if len(note) <= 60 else note[:59] + "…"
    prob = "-" if decision.prob_ai is None else f"{decision.prob_ai:.4f}"
    cells = [decision.decided_at, decision.decision, decision.decided_by, decision.sha256[:16], decision.model_id or "-",
             prob, path or "-", note]
    return cells + ([decision.source] if with_source else [])
