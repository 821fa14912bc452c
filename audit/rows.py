"""What one result row is: its columns, its statuses, and how its text cells are neutralised for spreadsheets.

The row schema is defined once, by :class:`ResultRow`; :data:`RESULT_COLUMNS` is derived from it.
New columns (the evidence stage's ``evidence``, ``evidence_source`` and ``verdict_reason``) are
appended as new fields with defaults at the end, so existing readers that go by column name keep
working. Every text cell, evidence included, goes through :func:`neutralise`.

Everything is written to ``NAME.tmp`` beside the final name and renamed when complete, so a
killed run leaves either a complete file or none under the final name.
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass
from typing import Any

STATUS_OK = "ok"
STATUS_ERROR = "error"


@dataclass
class ResultRow:
    """One row of results.csv: one discovered file. The field order is the column order."""

    path: str  # relative to its root, POSIX separators
    root: str
    sha256: str = ""
    bytes: int | None = None
    format: str = ""
    width: int | None = None
    height: int | None = None
    status: str = STATUS_OK  # ok | error
    error: str = ""
    prob_ai: float | None = None  # calibrated probability of "AI-generated"
    verdict: str = ""  # ai-generated | real | uncertain | error
    threshold: float | None = None
    true_label: str = ""  # ai-generated | real | "" when unknown
    model_id: str = ""
    scanned_at: str = ""  # ISO 8601 UTC
    note: str = ""  # e.g. "animated: first of 12 frames scored"
    # The evidence stage (audit.evidence._metadata): findings one a line, strongest first; their sources;
    # and what decided the verdict ("model", or the declaration of AI generation that did).
    evidence: str = ""
    evidence_source: str = ""
    verdict_reason: str = ""
    # The reviewer's current decision on these bytes (audit.review._decisions), carried from the run store by
    # sha256: confirmed-ai | false-positive | unsure, its note, who and when, and the model id
    # whose result the reviewer saw. Not part of a stored result: every run fills them afresh.
    review: str = ""
    review_note: str = ""
    reviewed_by: str = ""
    reviewed_at: str = ""
    review_model_id: str = ""
    # How unlike the training images the image is (audit.model.NoveltyStatistics: about 1 for a typical
    # training image); empty when the model card has no novelty statistics.
    novelty: float | None = None

    def cells(self) -> tuple[Any, ...]:
        return _row_cells(self)


RESULT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ResultRow))
_row_cells = operator.attrgetter(*RESULT_COLUMNS)
REVIEW_COLUMNS: tuple[str, ...] = ("review", "review_note", "reviewed_by", "reviewed_at", "review_model_id")
# The columns a scored result is made of: what the run store keeps and its scoring key names.
SCORED_COLUMNS: tuple[str, ...] = tuple(name for name in RESULT_COLUMNS if name not in REVIEW_COLUMNS)
# The decisions a reviewer can pick in the spreadsheet's drop-down (audit.review._decisions validates them).
REVIEW_DECISIONS: tuple[str, ...] = ("confirmed-ai", "false-positive", "unsure")

# Spreadsheets run a cell that starts with one of these as a formula (OWASP "CSV injection").
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_NEUTRALISED_FIRST = frozenset((*_FORMULA_PREFIXES, "'"))  # a set: this runs for every cell of every row


def neutralise(value: Any) -> Any:
    """Prefix a text cell that a spreadsheet would evaluate with a single quote.

    A cell that already starts with a quote gets one more, so that :func:`unneutralise` can
    always strip exactly one (a file really named ``'=x.jpg`` survives the round trip).
    """
    if isinstance(value, str) and value[:1] in _NEUTRALISED_FIRST:
        return "'" + value
    return value


_NEUTRALISED_PREFIXES = tuple("'" + first for first in _NEUTRALISED_FIRST)


def unneutralise(text: str) -> str:
    """The cell's original text: undoes :func:`neutralise`."""
    return text[1:] if text.startswith(_NEUTRALISED_PREFIXES) else text


