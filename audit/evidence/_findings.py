"""The vocabulary of provenance evidence: a :class:`Finding`, its strengths and sources, the
IPTC digital source types, and how findings become bounded text and the ``evidence`` /
``evidence_source`` columns.

Shared by the readers (:mod:`audit.evidence._metadata` for generator text, EXIF and XMP;
:mod:`audit.provenance_c2pa` for Content Credentials) and by the verdict rule and the outputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

# Strengths, strongest first (the order is used to sort findings and to pick evidence_source).
DECLARES_AI = "declares-ai"
DECLARES_CAPTURE = "declares-capture"
WEAK = "weak"
INFO = "info"
STRENGTHS = (DECLARES_AI, DECLARES_CAPTURE, WEAK, INFO)

SOURCE_C2PA = "c2pa"
SOURCE_PNG_TEXT = "png-text"
SOURCE_EXIF = "exif"
SOURCE_XMP = "xmp"

# A finding's text (one line) is cut to this many characters: enough to recognise a prompt or
# a camera, short enough for a CSV cell and a report card.
MAX_TEXT_CHARS = 200

# IPTC digital source types that declare generation by a trained model (IPTC NewsCodes).
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
CAPTURE_SOURCE_TYPES = frozenset({"digitalCapture"})

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


@dataclass(frozen=True)
class Finding:
    """One piece of provenance evidence about one file."""

    kind: str  # what was found, e.g. "digitalSourceType", "generator parameters", "camera"
    strength: str  # one of STRENGTHS
    source: str  # c2pa | png-text | exif | xmp
    text: str  # one bounded line, archive text included verbatim (escape where shown)

    def line(self) -> str:
        return f"{self.strength} [{self.source}] {self.kind}: {self.text}"


def bounded_line(value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    """Archive text as one line of at most ``limit`` characters (controls become spaces)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = " ".join(_CONTROL.sub(" ", text[: limit * 4]).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def source_type_name(value: str) -> str:
    """'http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture' -> 'digitalCapture'."""
    return value.strip().rstrip("/").rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- the columns


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: STRENGTHS.index(f.strength))


def evidence_cell(findings: Iterable[Finding]) -> str:
    """The ``evidence`` column: one finding a line (the report splits on newlines)."""
    return "\n".join(f.line() for f in findings)


def evidence_sources(findings: Iterable[Finding]) -> str:
    """The ``evidence_source`` column: the sources, strongest finding's first, without repeats."""
    return ", ".join(dict.fromkeys(f.source for f in sort_findings(findings)))
