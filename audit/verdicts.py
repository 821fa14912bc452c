"""The verdict rule, one place for the scan, `audit explain`, the report and the review.

A row's verdict is the model's (``prob_ai`` at or above the card's threshold), except that a
declaration of AI generation in the file's metadata flags the image whatever the model says, and
that a score the model cannot stand behind (audit.model.uncertain_reason: a probability in the
card's band, an image unlike the training images, a verdict that flips under mild degradation)
is ``uncertain``: a person should look.
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
VERDICT_UNCERTAIN = "uncertain"  # the model cannot judge it; verdict_reason says why
VERDICT_ERROR = "error"  # the file could not be scored; its row says why
MODEL_REASON = "model"  # verdict_reason when the model's score decided
_REASON_CHARS = 160


@dataclass(frozen=True)
class Decision:
    is_ai: bool
    reason: str  # the row's verdict_reason
    uncertain: bool = False

    @property
    def verdict(self) -> str:
        return VERDICT_AI if self.is_ai else VERDICT_UNCERTAIN if self.uncertain else VERDICT_REAL


def decide(model_says_ai: bool, findings: Iterable[Finding], uncertain: str | None = None) -> Decision:
    """The model's verdict, overruled by a declaration of AI generation; ``uncertain`` (why the
    model cannot judge, or None) turns the model's verdict into ``uncertain``."""
    from audit.evidence import DECLARES_AI, bounded_line

    declarations = [f for f in findings if f.strength == DECLARES_AI]
    if declarations:
        first = declarations[0]
        return Decision(True, bounded_line(f"declared AI by {first.source} {first.kind}: {first.text}", _REASON_CHARS))
    if uncertain:
        return Decision(False, bounded_line(uncertain, _REASON_CHARS), uncertain=True)
    return Decision(model_says_ai, MODEL_REASON)


def judge(prob_ai: float, threshold: float, findings: Iterable[Finding] = (), uncertain: str | None = None) -> Decision:
    """The verdict of a scored image: the card's threshold on ``prob_ai``, then :func:`decide`."""
    return decide(prob_ai >= threshold, findings, uncertain)
