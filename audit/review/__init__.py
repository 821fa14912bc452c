"""Reviewers' decisions: recorded by sha256, append-only, and imported from a filled-in
results.xlsx / results.csv or the report's export.
"""

from __future__ import annotations

from audit import lazy_exports
from audit.review._decisions import (
    LIST_HEADER,
    MAX_NOTE_CHARS,
    ReviewTally,
    cleared_under_other_model,
    current_decisions,
    decision_history,
    describe_decision,
    review_state,
    set_decision,
)

# Imported when first asked for: these pull in torch, pandas or OpenCV.
_LAZY = {
    "import_decisions": "audit.review._import",
}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["LIST_HEADER", "MAX_NOTE_CHARS", "ReviewTally", "cleared_under_other_model", "current_decisions", "decision_history", "describe_decision", "import_decisions", "review_state", "set_decision"]
