"""Provenance evidence: findings read from an image's bytes (C2PA, generator text chunks, EXIF/XMP),
with their strength, and the ``evidence`` cells of a row.
"""

from __future__ import annotations

from audit.evidence._c2pa import EvidenceOptions, check_options, has_c2pa_marker, load_trust_anchors
from audit.evidence._findings import (
    DECLARES_AI,
    DECLARES_CAPTURE,
    INFO,
    MAX_TEXT_CHARS,
    WEAK,
    Finding,
    bounded_line,
    evidence_cell,
    evidence_sources,
)
from audit.evidence._metadata import MAX_FIELD_CHARS, read_evidence

__all__ = ["DECLARES_AI", "DECLARES_CAPTURE", "EvidenceOptions", "Finding", "INFO", "MAX_FIELD_CHARS", "MAX_TEXT_CHARS", "WEAK", "bounded_line", "check_options", "evidence_cell", "evidence_sources", "has_c2pa_marker", "load_trust_anchors", "read_evidence"]
