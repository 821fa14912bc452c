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
import dataclasses
import functools
import getpass
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from audit.errors import UsageError
from audit.results import REVIEW_DECISIONS, ResultRow, unneutralise
from audit.verdicts import VERDICT_AI
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


class ReviewError(UsageError):
    """A decision or a file of decisions that cannot be taken at all; the user must act (exit 2)."""


@dataclass(slots=True)  # not frozen: a run builds one per reviewed sha256, and frozen ones cost 3x
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
    """Every sha256's current decision (its newest row): read once per run, in one pass over the
    table in id order, each row replacing the one before. Plain tuples and no ``source`` or
    ``recorded_at`` (only the history shows them): this is on every nightly run's path."""
    cursor = store.db.cursor()
    cursor.row_factory = None
    cursor.execute("SELECT sha256, decision, decided_by, decided_at, note, model_id, prob_ai, id FROM decisions ORDER BY id")
    return {row[0]: Decision(*row[:7], id=row[7]) for row in cursor}


def review_cells(store: RunStore) -> dict[str, tuple[str, str, str, str, str]]:
    """What a run writes into each decided file's review columns, by sha256: (review,
    review_note, reviewed_by, reviewed_at, review_model_id) of the current decision. Tuples
    straight from SQLite, newest row last so it wins: this is on every nightly run's path."""
    cursor = store.db.cursor()
    cursor.row_factory = None
    cursor.execute("SELECT sha256, decision, note, decided_by, decided_at, model_id FROM decisions ORDER BY id")
    return {row[0]: row[1:] for row in cursor}


def decision_history(store: RunStore, sha256: str) -> list[Decision]:
    """Every decision ever recorded for these bytes, oldest first."""
    rows = store.db.execute("SELECT * FROM decisions WHERE sha256 = ? ORDER BY id", (sha256,)).fetchall()
    return [_decision_from(row) for row in rows]


def known_sha256s(store: RunStore, sha256s: Iterable[str]) -> set[str]:
    """Those of ``sha256s`` that some run scored into this store (a result under any model)."""
    return set(stored_results(store, sha256s))


def stored_results(store: RunStore, sha256s: Iterable[str]) -> dict[str, dict[str, float | None]]:
    """For each of ``sha256s`` that some run scored into this store: prob_ai by model id, the
    newest result first (so the first key is the model that judged these bytes last)."""
    wanted, found = sorted(set(sha256s)), {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = store.db.execute(f"SELECT sha256, model_id, row_json FROM scores WHERE sha256 IN ({marks}) "
                                "ORDER BY scored_run DESC", chunk)
        for sha256, model_id, row_json in rows:
            found.setdefault(sha256, {}).setdefault(model_id, json.loads(row_json).get("prob_ai"))
    return found


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

    cells: dict[str, tuple[str, str, str, str, str]]  # from review_cells()
    decisions_up_to: int = 0  # the newest decision's id
    counts: Counter = field(default_factory=Counter)
    rows_with_decision: int = 0
    cleared_under_other_model: int = 0

    @classmethod
    def from_store(cls, store: RunStore) -> "ReviewTally":
        return cls(review_cells(store), store.db.execute("SELECT coalesce(max(id), 0) FROM decisions").fetchone()[0])

    def apply(self, row: ResultRow) -> None:
        cells = self.cells.get(row.sha256) if row.sha256 else None
        if cells is None and row.verdict != VERDICT_AI:  # most rows of a nightly run
            self.counts["not-flagged"] += 1
            return
        if cells is not None:
            row.review, row.review_note, row.reviewed_by, row.reviewed_at, row.review_model_id = cells
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
            "decisions_up_to": self.decisions_up_to,
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


def read_table(path: Path, columns: Sequence[str] = IMPORT_COLUMNS) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(row number, cells)]) of an XLSX (its "results" sheet, else the first) or a CSV,
    cells as text with the spreadsheet quoting undone. Only the cells under ``columns`` are read
    (the others are ""): an import needs 8 of results.xlsx's columns. Row numbers are the
    spreadsheet's (the header is row 1)."""
    if not path.is_file():
        raise ReviewError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        rows = _xlsx_rows(path, set(columns))
    elif suffix in (".csv", ".txt"):
        rows = list(enumerate(_csv_rows(path), start=1))
    else:
        raise ReviewError(f"{path}: not an .xlsx or .csv file")
    if not rows:
        raise ReviewError(f"{path} is empty: expected a results.xlsx/results.csv of audit scan or the report's export")
    header = [cell.strip() for cell in rows[0][1]]
    wanted = [index for index, name in enumerate(header) if name in columns]
    table = []
    for number, cells in rows[1:]:
        kept = [""] * len(header)
        for index in wanted:
            if index < len(cells):
                kept[index] = unneutralise(cells[index])
        table.append((number, kept))
    return header, table


_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PACKAGE_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"
# An XLSX part larger than this uncompressed is refused before it is parsed (a zip bomb).
MAX_XLSX_PART_BYTES = 1 << 30


def _xlsx_rows(path: Path, columns: set[str]) -> list[tuple[int, list[str]]]:
    """The sheet's rows (the header whole, then only the cells under ``columns``), streamed from
    its XML with lxml, which hands over one element per row.

    openpyxl takes about 0.5 ms to read a row of results.xlsx, most of it on cells an import does
    not need; this is what keeps an import of 20,000 decisions within seconds. A cell holding a
    formula is read as its text (``=...``), never as a value: a note typed as a formula stays
    what was typed.
    """
    import zipfile

    from lxml import etree as ElementTree

    try:
        with zipfile.ZipFile(path) as package:
            sheet = _results_sheet_part(package)
            for part in (sheet, "xl/sharedStrings.xml"):
                if part in package.namelist() and package.getinfo(part).file_size > MAX_XLSX_PART_BYTES:
                    raise ReviewError(f"{path}: {part} is larger than {MAX_XLSX_PART_BYTES >> 20} MiB uncompressed")
            shared = _shared_strings(package)
            with package.open(sheet) as handle:
                rows = ElementTree.iterparse(handle, events=("end",), tag=_MAIN + "row", resolve_entities=False,
                                             no_network=True)
                return _sheet_rows(rows, shared, columns)
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, OSError, ValueError, IndexError) as exc:
        raise ReviewError(f"{path} cannot be read as an XLSX workbook ({type(exc).__name__}: {exc})") from None


def _results_sheet_part(package: Any) -> str:
    from lxml import etree as ElementTree

    workbook = ElementTree.fromstring(package.read("xl/workbook.xml"))
    sheets = [(sheet.get("name"), sheet.get(_REL + "id")) for sheet in workbook.iter(_MAIN + "sheet")]
    if not sheets:
        raise ValueError("the workbook has no sheet")
    rel_id = next((rid for name, rid in sheets if name == "results"), sheets[0][1])
    relations = ElementTree.fromstring(package.read("xl/_rels/workbook.xml.rels"))
    target = next(rel.get("Target") for rel in relations.iter(_PACKAGE_REL + "Relationship") if rel.get("Id") == rel_id)
    return target.lstrip("/") if target.startswith("/") else f"xl/{target}"


def _shared_strings(package: Any) -> list[str]:
    from lxml import etree as ElementTree

    if "xl/sharedStrings.xml" not in package.namelist():
        return []
    strings = []
    with package.open("xl/sharedStrings.xml") as handle:
        for _, element in ElementTree.iterparse(handle, events=("end",), tag=_MAIN + "si", resolve_entities=False,
                                                no_network=True):
            strings.append(_inline_text(element))
            element.clear(keep_tail=True)
    return strings


def _inline_text(element: Any) -> str:
    """The text of a string item: its <t>, or its rich-text runs' <t>s (phonetic hints left out)."""
    parts = []
    for child in element:
        if child.tag == _MAIN + "t":
            parts.append(child.text or "")
        elif child.tag == _MAIN + "r":
            parts.extend(t.text or "" for t in child.iter(_MAIN + "t"))
    return "".join(parts)


@functools.lru_cache(maxsize=4096)
def _column_index(letters: str) -> int:
    """0-based column of a cell reference's letters (``AB`` of ``AB12``)."""
    index = 0
    for char in letters.upper():
        index = index * 26 + (ord(char) - 64)
    return index - 1


def _column_letters(index: int) -> str:
    letters, number = "", index + 1
    while number:
        number, remainder = divmod(number - 1, 26)
        letters = chr(65 + remainder) + letters
    return letters


def _sheet_rows(events: Any, shared: list[str], columns: set[str]) -> list[tuple[int, list[str]]]:
    rows: list[tuple[int, list[str]]] = []
    wanted: set[int] | None = None  # the header row is read whole; then only the wanted columns
    wanted_letters: set[str] = set()
    for _, element in events:
        number = int(element.get("r") or (rows[-1][0] + 1 if rows else 1))
        cells: list[str] = []
        for position, cell in enumerate(element.iterchildren(_MAIN + "c")):
            reference = cell.get("r")
            letters = reference.rstrip("0123456789") if reference else ""
            if wanted is not None and letters not in wanted_letters and (letters or position not in wanted):
                continue  # most cells: a string test, no parsing
            column = _column_index(letters) if letters else position
            cells.extend([""] * (column - len(cells)))
            cells.append(_cell_text(cell, shared))
        if any(cells):
            rows.append((number, cells))
            if wanted is None:
                wanted = {index for index, name in enumerate(cells) if name.strip() in columns}
                wanted_letters = {_column_letters(index) for index in wanted}
        element.clear(keep_tail=True)  # the rows read so far are not kept as XML
        while element.getprevious() is not None:
            del element.getparent()[0]
    return rows


def _cell_text(cell: Any, shared: list[str]) -> str:
    value = inline = None
    for child in cell:
        tag = child.tag
        if tag == _MAIN + "f" and child.text:
            return "=" + child.text
        if tag == _MAIN + "v":
            value = child
        elif tag == _MAIN + "is":
            inline = child
    kind = cell.get("t")
    if kind == "inlineStr":
        return _inline_text(inline) if inline is not None else ""
    text = value.text if value is not None and value.text else ""
    if kind == "s" and text:
        return shared[int(text)]
    if kind == "b":
        return "TRUE" if text == "1" else "FALSE"
    return text


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
    if missing == ["review"] and "verdict" in header:
        raise ReviewError(f"{path} has no review column: it was written by an audit older than reviewer decisions; "
                          f"import the results.xlsx of a newer run")
    if missing:
        raise ReviewError(f"{path} is not a results.xlsx/results.csv of audit scan nor a decisions export of its "
                          f"report: it lacks the column(s) {', '.join(missing)}")
    column = {name: header.index(name) for name in header if name}
    report = ImportReport(file=path, rows=len(rows))
    file_hash = file_sha256(path)
    source = f"import sha256:{file_hash} {path.name[:MAX_NAME_CHARS]}"
    before = store.db.execute("SELECT min(recorded_at) FROM decisions WHERE source LIKE ?",
                              (f"import sha256:{file_hash}%",)).fetchone()[0]
    report.imported_before = f"on {before}" if before else ""
    now = utc_text()

    def cell(row: list[str], name: str) -> str:
        index = column.get(name)
        return row[index] if index is not None and index < len(row) else ""

    candidates: list[_Candidate] = []
    for number, row in rows:
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
            model_id=cell(row, "model_id").strip()[:MAX_NAME_CHARS], source=source), cell(row, "reviewed_at").strip()))

    known = stored_results(store, [c.decision.sha256 for c in candidates])
    current = current_decisions(store)
    by_sha256: dict[str, list[_Candidate]] = {}
    for candidate in candidates:
        sha256 = candidate.decision.sha256
        if sha256 not in known:
            report.ignore("unknown sha256: no scan recorded these bytes in this run store", candidate.where)
            continue
        now_current = current.get(sha256)
        if now_current and _repeats(candidate, now_current):
            report.unchanged += 1
            continue
        if now_current and _is_stale(store, candidate, now_current):
            report.ignore("stale: the file shows an older decision that a newer one replaced", f"{candidate.where} "
                          f"(now {now_current.decision} by {now_current.decided_by} at {now_current.decided_at})")
            continue
        by_sha256.setdefault(sha256, []).append(candidate_with_result(candidate, known[sha256]))

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
        report.copies += len(same) - 1
        if sha256 in current:
            report.changed += 1
        else:
            report.new += 1
    if taken:
        record_decisions(store, taken)
    return report


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
