"""Reviewers' decisions: recorded once by content (sha256), carried by every later run.

A decision says of one image's bytes ``confirmed-ai``, ``false-positive`` or ``unsure``, with who
decided, when, a note, and the model id and ``prob_ai`` the reviewer saw. It lives in the run
store's ``decisions`` table (audit.store._store), which is only ever appended to: a change adds a row,
and the newest row for a sha256 is its current decision. Because the key is the content, a file
renamed, moved or copied keeps its decision and an edited one loses it.

Decisions reach the store three ways, all through :func:`record_decisions` (one transaction):
``audit review set`` on the command line, and ``audit review import`` of a results.xlsx /
results.csv whose ``review`` and ``review_note`` cells a reviewer filled in, or of the CSV that
the HTML report's decision buttons export (audit.review._import). A scan then writes each file's current decision into
its ``review*`` columns (:class:`ReviewTally`), and the report and ``--fail-on-flagged`` go by them.
"""

from __future__ import annotations

import getpass
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from audit.errors import UsageError
from audit.rows import REVIEW_DECISIONS, ResultRow
from audit.store import (
    RunStore,
    append_decisions,
    current_decision_rows,
    decision_history_rows,
    latest_result,
    review_cell_rows,
    stored_results,
    utc_text,
)
from audit.verdicts import VERDICT_AI, VERDICT_UNCERTAIN

CONFIRMED, CLEARED, UNSURE = REVIEW_DECISIONS  # confirmed-ai, false-positive, unsure
# Bounds on text from a spreadsheet or a page: a note is for a sentence or a paragraph.
MAX_NOTE_CHARS = 2000
MAX_NAME_CHARS = 200
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


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
    table in id order, each row replacing the one before. No ``source`` or ``recorded_at`` (only
    the history shows them): this is on every nightly run's path."""
    return {row[0]: Decision(*row[:7], id=row[7]) for row in current_decision_rows(store)}


def review_cells(store: RunStore) -> tuple[dict[str, tuple[str, str, str, str, str]], int]:
    """What a run writes into each decided file's review columns, by sha256: (review,
    review_note, reviewed_by, reviewed_at, review_model_id) of the current decision; and the id
    of the newest decision among them (0: none). One query, so the two agree even while a
    reviewer records decisions (`audit review` does not wait for the scan's lock); newest row
    last so it wins."""
    cells, newest = {}, 0
    for row in review_cell_rows(store):
        newest, cells[row[1]] = row[0], row[2:]
    return cells, newest


def decision_history(store: RunStore, sha256: str) -> list[Decision]:
    """Every decision ever recorded for these bytes, oldest first."""
    return [_decision_from(row) for row in decision_history_rows(store, sha256)]


def known_sha256s(store: RunStore, sha256s: Iterable[str]) -> set[str]:
    """Those of ``sha256s`` that some run scored into this store (a result under any model)."""
    return set(stored_results(store, sha256s))


def record_decisions(store: RunStore, decisions: Sequence[Decision]) -> None:
    """Append the decisions in one transaction: all of them reach the store, or none."""
    append_decisions(store, [(d.sha256, d.decision, d.decided_by, d.decided_at, d.note, d.model_id, d.prob_ai, d.source)
                             for d in decisions])


def resolve_target(store: RunStore, target: str) -> str:
    """``audit review set``'s first argument: a sha256, or a file whose bytes are hashed now."""
    from audit.model import file_sha256

    text = target.strip().lower()
    if SHA256_PATTERN.fullmatch(text):
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
        return cls(*review_cells(store))

    def apply(self, row: ResultRow) -> None:
        cells = self.cells.get(row.sha256) if row.sha256 else None
        if cells is None and row.verdict != VERDICT_AI:  # most rows of a nightly run
            self.counts["not-flagged"] += 1
            if row.verdict == VERDICT_UNCERTAIN:
                self.counts["uncertain-awaiting"] += 1
            return
        if cells is not None:
            row.review, row.review_note, row.reviewed_by, row.reviewed_at, row.review_model_id = cells
            self.rows_with_decision += 1
        if row.verdict == VERDICT_UNCERTAIN:  # a person looked and said what it is: settled, whatever the model
            self.counts["uncertain-decided" if row.review in (CONFIRMED, CLEARED) else "uncertain-awaiting"] += 1
        state = review_state(row.verdict, row.model_id, row.review, row.review_model_id)
        self.counts[state] += 1
        if cleared_under_other_model(row.verdict, row.model_id, row.review, row.review_model_id):
            self.cleared_under_other_model += 1

    @property
    def flagged_not_cleared(self) -> int:
        return self.counts["awaiting"] + self.counts["confirmed"]

    @property
    def uncertain_not_decided(self) -> int:
        """Uncertain rows no reviewer has called confirmed-ai or false-positive."""
        return self.counts["uncertain-awaiting"]

    def to_json(self) -> dict[str, Any]:
        """summary.json's ``review``: the flagged files three ways, and what the run went by."""
        return {
            "flagged_awaiting_review": self.counts["awaiting"],
            "flagged_confirmed": self.counts["confirmed"],
            "flagged_cleared": self.counts["cleared"],
            "cleared_under_another_model": self.cleared_under_other_model,
            "uncertain_awaiting_review": self.counts["uncertain-awaiting"],
            "uncertain_decided": self.counts["uncertain-decided"],
            "files_with_decision": self.rows_with_decision,
            # Changes whenever a decision is recorded: a rerun with new decisions is not "unchanged".
            "decisions_up_to": self.decisions_up_to,
        }


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
