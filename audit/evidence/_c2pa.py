"""C2PA Content Credentials: reading an embedded manifest store into findings, and the trust
configuration the reader runs with.

Only bytes that contain a JUMBF box (``jumb``) are read: every embedded manifest store is a
JUMBF superbox (JPEG APP11, PNG ``caBX``, WebP ``C2PA``, ...), so a file without that marker has
no embedded manifest and the C2PA library is neither imported nor called. Read: validation
state, the digitalSourceType of the active manifest's actions, the claim generator and the
signer.

Offline: the reader runs with ``remote_manifest_fetch`` and ``ocsp_fetch`` off. No trust list
ships with the tool; an operator may configure trust anchors (``audit scan --trust-anchors
FILE.pem``). Without them a valid signature reads back as ``signingCredential.untrusted``, and
the finding says the signer could not be checked against a trust list.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any, Mapping

from audit.errors import UsageError
from audit.evidence._findings import (
    AI_SOURCE_TYPES,
    CAPTURE_SOURCE_TYPES,
    DECLARES_AI,
    DECLARES_CAPTURE,
    INFO,
    SOURCE_C2PA,
    Finding,
    bounded_line,
    source_type_name,
)

_MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff", "GIF": "image/gif"}
_JUMBF_MARKER = b"jumb"


@dataclass(frozen=True)
class EvidenceOptions:
    """How evidence is read. ``trust_anchors_pem``: PEM root certificates a C2PA signer may
    chain to; empty means no trust list is configured (every signer reads as untrusted)."""

    trust_anchors_pem: str = ""


class ProvenanceError(UsageError):
    """The evidence options cannot be used (e.g. trust anchors that are not PEM certificates)."""


# --------------------------------------------------------------------------- the reader's configuration


_CONTEXTS: dict[tuple[int, str], Any] = {}


def c2pa_settings(trust_anchors_pem: str) -> dict[str, Any]:
    settings: dict[str, Any] = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors_pem:
        settings["trust"] = {"trust_anchors": trust_anchors_pem}
    return settings


def c2pa_context(options: EvidenceOptions) -> Any:
    """One reader context per process (DataLoader workers are separate processes; native
    handles are not shared across fork)."""
    key = (os.getpid(), options.trust_anchors_pem)
    if key not in _CONTEXTS:
        import c2pa

        try:
            _CONTEXTS[key] = c2pa.Context.from_dict(c2pa_settings(options.trust_anchors_pem))
        except Exception as exc:  # noqa: BLE001 - c2pa raises its own error classes
            raise ProvenanceError(f"the C2PA reader cannot be configured: {bounded_line(exc)}") from None
    return _CONTEXTS[key]


def check_options(options: EvidenceOptions) -> None:
    """Fail early (a usage error) on trust anchors that are not PEM certificates.

    Parsed with ``cryptography`` (a c2pa-python dependency) rather than by building a C2PA
    context here: the native library is then first loaded in the decode workers, after fork.
    """
    if not options.trust_anchors_pem:
        return
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(options.trust_anchors_pem.encode("ascii", "replace"))
    except ValueError as exc:
        raise ProvenanceError(f"--trust-anchors: not a PEM certificate bundle ({bounded_line(exc, 120)})") from None
    if not certificates:
        raise ProvenanceError("--trust-anchors: the file holds no PEM certificate")


def load_trust_anchors(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read(4 * 1024 * 1024)
    except OSError as exc:
        raise ProvenanceError(f"--trust-anchors: cannot read {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- reading


def has_c2pa_marker(data: bytes) -> bool:
    """The cheap test in front of the C2PA reader: an embedded manifest store is a JUMBF
    superbox, whose box type ``jumb`` appears in the bytes in every container format."""
    return _JUMBF_MARKER in data


@dataclass(frozen=True)
class ManifestFacts:
    """What the active C2PA manifest says, in the form the findings need."""

    state: str  # Trusted | Valid | Invalid (c2pa's validation state)
    failure_codes: tuple[str, ...]
    source_types: tuple[str, ...]  # digitalSourceType names of the actions, in order
    actions: tuple[str, ...]
    generator: str
    signer: str


def manifest_facts(manifest: Mapping[str, Any], state: str, results: Mapping[str, Any] | None) -> ManifestFacts:
    source_types, actions = [], []
    for assertion in manifest.get("assertions") or []:
        if not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions") or []:
            actions.append(str(action.get("action", "")))
            if action.get("digitalSourceType"):
                source_types.append(source_type_name(str(action["digitalSourceType"])))
    generators = [
        " ".join(str(info.get(k, "")) for k in ("name", "version")).strip()
        for info in manifest.get("claim_generator_info") or []
        if isinstance(info, Mapping)
    ] or [str(manifest.get("claim_generator", ""))]
    signature = manifest.get("signature_info") or {}
    signer = ", ".join(str(signature[k]) for k in ("common_name", "issuer") if signature.get(k)) or "unknown signer"
    active = (results or {}).get("activeManifest") or {}
    failures = tuple(str(item.get("code", "")) for item in active.get("failure") or [])
    return ManifestFacts(
        state=state or "unknown",
        failure_codes=failures,
        source_types=tuple(dict.fromkeys(source_types)),
        actions=tuple(dict.fromkeys(actions)),
        generator=", ".join(g for g in generators if g) or "unknown",
        signer=signer,
    )


def signature_text(facts: ManifestFacts) -> str:
    """The validation outcome in words; says plainly when no trust list could be checked."""
    untrusted = "signingCredential.untrusted" in facts.failure_codes
    other_failures = [code for code in facts.failure_codes if code != "signingCredential.untrusted"]
    if other_failures:
        return f"manifest invalid: {', '.join(other_failures[:4])}"
    if facts.state == "Trusted":
        return "signature valid; signer on the configured trust list"
    if untrusted:
        return "signature valid; signingCredential.untrusted: the signer could not be checked against a trust list"
    return f"validation state {facts.state}"


def c2pa_manifest_findings(facts: ManifestFacts) -> list[Finding]:
    valid = facts.state in ("Valid", "Trusted") and not [
        c for c in facts.failure_codes if c != "signingCredential.untrusted"
    ]
    findings = []
    for name in facts.source_types:
        if name in AI_SOURCE_TYPES:
            # A declaration of generation counts even when the manifest fails validation: an
            # edit after signing breaks the hash but does not make the image less generated.
            strength = DECLARES_AI
        elif name in CAPTURE_SOURCE_TYPES and valid:
            strength = DECLARES_CAPTURE
        else:
            strength = INFO
        findings.append(Finding("digitalSourceType", strength, SOURCE_C2PA, bounded_line(f"{name} ({signature_text(facts)})")))
    findings.append(Finding("manifest", INFO, SOURCE_C2PA, bounded_line(
        f"claim generator {facts.generator}; actions {', '.join(facts.actions) or 'none'}; signed by {facts.signer}; "
        f"{signature_text(facts)}", limit=300,  # the report shows lines up to 300 characters
    )))
    return findings


def c2pa_findings(data: bytes, image_format: str, options: EvidenceOptions) -> list[Finding]:
    """Read the embedded manifest store; a broken one becomes an info finding saying why."""
    mime = _MIME_TYPES.get(image_format)
    if mime is None:
        return [Finding("manifest", INFO, SOURCE_C2PA, f"JUMBF data present, but C2PA is not read from {image_format} files")]
    import c2pa  # imported here: files without a JUMBF marker never load the native library

    try:
        with c2pa.Reader(mime, io.BytesIO(data), context=c2pa_context(options)) as reader:
            manifest = reader.get_active_manifest()
            state = reader.get_validation_state() or ""
            results = reader.get_validation_results()
    except Exception as exc:  # noqa: BLE001 - a corrupt manifest is this file's evidence, not a crash
        message = bounded_line(exc, 160) or type(exc).__name__
        if "ManifestNotFound" in type(exc).__name__ or "no JUMBF" in message:
            return []  # the marker was a coincidence: no manifest store
        return [Finding("manifest unreadable", INFO, SOURCE_C2PA, f"C2PA manifest present but could not be read: {message}")]
    if not manifest:
        return [Finding("manifest", INFO, SOURCE_C2PA, "manifest store without an active manifest")]
    return c2pa_manifest_findings(manifest_facts(manifest, state, results))
