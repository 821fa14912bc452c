"""The verdict rule, one place for the scan, `audit explain`, the report and the review.

A row's verdict is the model's (``prob_ai`` at or above the card's threshold), except that a
declaration of AI generation in the file's metadata flags the image whatever the model says.
Nothing else changes the model's verdict: camera EXIF and a C2PA digitalCapture are shown but
never clear an image, because with no trust list anyone can sign a capture claim with a
certificate they made themselves (README, "Provenance evidence and the verdict").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from audit.evidence import Finding

VERDICT_AI = "ai-generated"
VERDICT_REAL = "real"
VERDICT_ERROR = "error"  # the file could not be scored; its row says why
MODEL_REASON = "model"  # verdict_reason when the model's score decided
_REASON_CHARS = 160


@dataclass(frozen=True)
class Decision:
    is_ai: bool
    reason: str  # the row's verdict_reason

    @property
    def verdict(self) -> str:
        return VERDICT_AI if self.is_ai else VERDICT_REAL


def decide(model_says_ai: bool, findings: Iterable[Finding]) -> Decision:
    """The model's verdict, overruled only by a declaration of AI generation."""
    from audit.evidence import DECLARES_AI, bounded_line

    declarations = [f for f in findings if f.strength == DECLARES_AI]
    if declarations:
        first = declarations[0]
        return Decision(True, bounded_line(f"declared AI by {first.source} {first.kind}: {first.text}", _REASON_CHARS))
    return Decision(model_says_ai, MODEL_REASON)


def judge(prob_ai: float, threshold: float, findings: Iterable[Finding] = ()) -> Decision:
    """The verdict of a scored image: the card's threshold on ``prob_ai``, then :func:`decide`."""
    return decide(prob_ai >= threshold, findings)
