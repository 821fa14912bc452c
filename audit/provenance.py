"""The evidence stage: a file's bytes (and its opened Pillow image) -> provenance findings.

What is read, all from the bytes the load stage already holds (the file is not opened again):

* **C2PA Content Credentials** (c2pa-python), only when the bytes contain a JUMBF box
  (``jumb``): every embedded manifest store is a JUMBF superbox (JPEG APP11, PNG ``caBX``, WebP
  ``C2PA``, ...), so a file without that marker has no embedded manifest and the C2PA library
  is neither imported nor called. Read: validation state, the digitalSourceType of the active
  manifest's actions, the claim generator and the signer.
* **Generator text**: PNG tEXt/iTXt/zTXt ``parameters`` (Stable Diffusion web UIs), ``prompt``
  and ``workflow`` (ComfyUI), ``Software``, ``Comment`` and ``Description`` (NovelAI and
  others); the same text in EXIF UserComment and ImageDescription (JPEG, WebP, PNG eXIf, TIFF).
* **EXIF**: Make, Model, Software, DateTimeOriginal, lens. **XMP**: the IPTC DigitalSourceType
  (``Iptc4xmpExt:DigitalSourceType``), CreatorTool, and a remote-manifest reference.

Offline: nothing is fetched. The C2PA reader runs with ``remote_manifest_fetch`` and
``ocsp_fetch`` off. No trust list ships with the tool (the C2PA trust list is published online
and cannot be downloaded at run time); an operator may configure trust anchors
(``audit scan --trust-anchors FILE.pem``). Without them a valid signature reads back as
``signingCredential.untrusted``, and the finding says the signer could not be checked against a
trust list.

Safety: metadata is archive input. Each field is cut to :data:`MAX_FIELD_CHARS` before it is
looked at, each finding's text to :data:`MAX_TEXT_CHARS` and one line; it is only ever compared
with fixed strings (no XML parser, no JSON evaluation, no URL is followed). Escaping happens
where it is shown (CSV neutralisation in audit.results, jinja2 autoescape in the report).

Errors are data: anything that goes wrong while reading metadata becomes an ``info`` finding
that says so; :func:`read_evidence` never raises.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from PIL import Image
from audit.errors import UsageError

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

# A metadata field is cut to this many characters before it is examined. ComfyUI workflows
# run to tens of kB; the markers looked for sit in the first few hundred characters.
MAX_FIELD_CHARS = 64 * 1024
# A finding's text (one line) is cut to this many characters: enough to recognise a prompt or
# a camera, short enough for a CSV cell and a report card.
MAX_TEXT_CHARS = 200

IPTC_SOURCE_TYPE_PREFIX = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# IPTC digital source types that declare generation by a trained model (IPTC NewsCodes).
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
CAPTURE_SOURCE_TYPES = frozenset({"digitalCapture"})

# Generator names looked for (whole words, any case) in EXIF/PNG Software and XMP CreatorTool.
# Each writes its own name there; photo editors (Photoshop, GIMP, Lightroom) are not listed.
KNOWN_GENERATORS = (
    "NovelAI", "Stable Diffusion", "AUTOMATIC1111", "ComfyUI", "InvokeAI", "Fooocus", "Midjourney",
    "DALL-E", "DALL·E", "Adobe Firefly", "Imagen", "Leonardo.Ai", "NightCafe", "DiffusionBee",
    "Draw Things", "Kandinsky", "DreamStudio",
)
_GENERATOR_PATTERN = re.compile(
    r"(?<![\w])(" + "|".join(re.escape(name) for name in KNOWN_GENERATORS) + r")(?![\w])", re.IGNORECASE
)

# PNG text keys (compared in lower case) read as generator text, and how each is recognised.
_PNG_TEXT_KEYS = ("parameters", "prompt", "workflow", "software", "comment", "description")

# EXIF tags (IFD0 and the Exif sub-IFD).
_EXIF_IFD = 0x8769
_TAG_IMAGE_DESCRIPTION = 0x010E
_TAG_MAKE = 0x010F
_TAG_MODEL = 0x0110
_TAG_SOFTWARE = 0x0131
_TAG_DATETIME_ORIGINAL = 0x9003
_TAG_USER_COMMENT = 0x9286
_TAG_LENS_MAKE = 0xA433
_TAG_LENS_MODEL = 0xA434

_MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "TIFF": "image/tiff", "GIF": "image/gif"}
_JUMBF_MARKER = b"jumb"
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


@dataclass(frozen=True)
class EvidenceOptions:
    """How evidence is read. ``trust_anchors_pem``: PEM root certificates a C2PA signer may
    chain to; empty means no trust list is configured (every signer reads as untrusted)."""

    trust_anchors_pem: str = ""


class ProvenanceError(UsageError):
    """The evidence options cannot be used (e.g. trust anchors that are not PEM certificates)."""


# --------------------------------------------------------------------------- text helpers


def bounded_line(value: Any, limit: int = MAX_TEXT_CHARS) -> str:
    """Archive text as one line of at most ``limit`` characters (controls become spaces)."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = " ".join(_CONTROL.sub(" ", text[: limit * 4]).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _field(value: Any) -> str:
    """A metadata value as text, cut to MAX_FIELD_CHARS before anything looks at it."""
    if isinstance(value, bytes):
        return value[:MAX_FIELD_CHARS].decode("utf-8", "replace")
    return str(value)[:MAX_FIELD_CHARS]


def decode_user_comment(raw: Any) -> str:
    """EXIF UserComment: an 8-byte character-code header, then the text (Exif 2.32, 4.6.5)."""
    if not isinstance(raw, bytes):
        return _field(raw)
    raw = raw[: 2 * MAX_FIELD_CHARS + 8]
    header, body = raw[:8], raw[8:]
    if header.startswith(b"UNICODE"):
        # UTF-16 of either byte order (A1111 writes big-endian); keep the one that reads as text.
        candidates = [body.decode(codec, "replace") for codec in ("utf-16-be", "utf-16-le")]
        return max(candidates, key=lambda text: sum(ch.isascii() and ch.isprintable() for ch in text))[:MAX_FIELD_CHARS]
    if header.startswith((b"ASCII", b"\x00" * 8, b"JIS")):
        return body.decode("utf-8", "replace").rstrip("\x00")[:MAX_FIELD_CHARS]
    return raw.decode("utf-8", "replace").rstrip("\x00")[:MAX_FIELD_CHARS]


# --------------------------------------------------------------------------- generator text


def generator_text_finding(key: str, value: str, source: str) -> Finding | None:
    """Recognise generator output in one text field (a PNG chunk or an EXIF text tag).

    Declarations need the generator's own format, not just the key: an A1111 ``parameters``
    block has ``Steps:``/``Sampler:``/``Seed:``; a ComfyUI ``prompt`` is a node graph with
    ``class_type``, its ``workflow`` has ``nodes``; NovelAI's ``Comment`` is JSON with
    ``steps``/``sampler``. Other text in those keys is shown as info only.
    """
    key_lower = key.lower()
    text = _field(value)
    if not text.strip():
        return None
    label = key
    if _looks_like_sd_parameters(text):
        return Finding("generator parameters", DECLARES_AI, source, bounded_line(f"{label} (Stable Diffusion web UI): {text}"))
    if key_lower == "prompt" and '"class_type"' in text:
        return Finding("generator parameters", DECLARES_AI, source, bounded_line(f"{label} (ComfyUI node graph): {text}"))
    if key_lower == "workflow" and '"nodes"' in text:
        return Finding("generator parameters", DECLARES_AI, source, bounded_line(f"{label} (ComfyUI workflow): {text}"))
    if key_lower == "comment" and '"steps"' in text and ('"sampler"' in text or '"seed"' in text):
        return Finding("generator parameters", DECLARES_AI, source, bounded_line(f"{label} (NovelAI-style settings): {text}"))
    if key_lower == "software":
        return software_finding(text, source)
    return Finding("text", INFO, source, bounded_line(f"{label}: {text}"))


def _looks_like_sd_parameters(text: str) -> bool:
    """The A1111/Forge/SD.Next format: the prompt, then a line 'Steps: N, Sampler: X, ... Seed: N'."""
    head = text[:MAX_FIELD_CHARS]
    return "Steps:" in head and ("Sampler:" in head or "Seed:" in head)


def software_finding(text: str, source: str, kind: str = "software") -> Finding:
    """A Software/CreatorTool value: a known generator's name declares AI, anything else is info."""
    match = _GENERATOR_PATTERN.search(text)
    if match:
        return Finding(kind, DECLARES_AI, source, bounded_line(f"known generator '{match.group(1)}' in {text}"))
    return Finding(kind, INFO, source, bounded_line(text))


def png_text_findings(info: Mapping[str, Any]) -> list[Finding]:
    """PNG tEXt/zTXt/iTXt chunks as Pillow decoded them into ``image.info`` (zTXt inflation is
    bounded by Pillow's MAX_TEXT_CHUNK)."""
    findings = []
    for key, value in info.items():
        if isinstance(key, str) and key.lower() in _PNG_TEXT_KEYS and isinstance(value, (str, bytes)):
            finding = generator_text_finding(key, _field(value), SOURCE_PNG_TEXT)
            if finding is not None:
                findings.append(finding)
    return findings


# --------------------------------------------------------------------------- EXIF


def exif_findings(exif: Mapping[int, Any], exif_ifd: Mapping[int, Any]) -> list[Finding]:
    """Generator text in UserComment/ImageDescription, Software, and camera fields (weak)."""
    if not exif and not exif_ifd:
        return []  # most archive images (CIFAKE included): no EXIF at all
    findings = []
    for tag, name, value in (
        (_TAG_USER_COMMENT, "UserComment", exif_ifd.get(_TAG_USER_COMMENT)),
        (_TAG_IMAGE_DESCRIPTION, "ImageDescription", exif.get(_TAG_IMAGE_DESCRIPTION)),
    ):
        if value is None:
            continue
        text = decode_user_comment(value) if tag == _TAG_USER_COMMENT else _field(value)
        finding = generator_text_finding(name, text, SOURCE_EXIF)
        if finding is not None:
            findings.append(finding)
    software = exif.get(_TAG_SOFTWARE)
    if software:
        findings.append(software_finding(_field(software), SOURCE_EXIF))
    camera = camera_description(exif, exif_ifd)
    if camera:
        # Easy to write into any file and easy to strip: weak, and never clears an image.
        findings.append(Finding("camera", WEAK, SOURCE_EXIF, camera))
    return findings


def camera_description(exif: Mapping[int, Any], exif_ifd: Mapping[int, Any]) -> str:
    parts = []
    make, model = (bounded_line(_field(exif.get(tag) or ""), 60) for tag in (_TAG_MAKE, _TAG_MODEL))
    if make or model:
        # Many cameras repeat the make in the model ("Canon" / "Canon EOS R5"): say it once.
        parts.append(model if make and model.lower().startswith(make.lower()) else " ".join(p for p in (make, model) if p))
    lens = " ".join(bounded_line(_field(exif_ifd.get(tag) or ""), 60) for tag in (_TAG_LENS_MAKE, _TAG_LENS_MODEL)).strip()
    if lens:
        parts.append(f"lens {lens}")
    taken = bounded_line(_field(exif_ifd.get(_TAG_DATETIME_ORIGINAL) or ""), 40)
    if taken:
        parts.append(f"taken {taken}")
    return bounded_line(", ".join(parts)) if parts else ""


def _read_exif(image: Image.Image) -> tuple[Mapping[int, Any], Mapping[int, Any]]:
    exif = image.getexif()  # parsed once by Pillow (the load stage already asked for orientation)
    if not exif:
        return {}, {}
    return exif, exif.get_ifd(_EXIF_IFD)


# --------------------------------------------------------------------------- XMP

_XMP_SOURCE_TYPE = re.compile(r"DigitalSourceType\s*(?:=\s*[\"']|>)\s*([^\"'<\s]{1,300})")
_XMP_CREATOR_TOOL = re.compile(r"CreatorTool\s*(?:=\s*[\"']|>)\s*([^\"'<]{1,300})")
_XMP_REMOTE_MANIFEST = re.compile(r"dcterms:provenance\s*(?:=\s*[\"']|>)\s*([^\"'<\s]{1,300})")


def xmp_packet(image: Image.Image) -> str:
    """The XMP packet, wherever Pillow put it (JPEG APP1, PNG iTXt, WebP XMP chunk, TIFF 700)."""
    info = image.info
    for value in (info.get("xmp"), info.get("XML:com.adobe.xmp")):
        if value:
            return _field(value)
    if image.format == "TIFF":
        tags = getattr(image, "tag_v2", {})
        if 700 in tags:
            return _field(tags[700])
    return ""


def source_type_name(value: str) -> str:
    """'http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture' -> 'digitalCapture'."""
    return value.strip().rstrip("/").rsplit("/", 1)[-1]


def xmp_findings(packet: str) -> list[Finding]:
    """Matched with bounded regular expressions, never an XML parser (no entities, no fetch)."""
    findings = []
    for match in _XMP_SOURCE_TYPE.finditer(packet):
        name = source_type_name(match.group(1))
        if name in AI_SOURCE_TYPES:
            strength = DECLARES_AI
        elif name in CAPTURE_SOURCE_TYPES:
            strength = WEAK  # an unsigned claim of capture is as easy to write as camera EXIF
        else:
            strength = INFO
        findings.append(Finding("IPTC digitalSourceType", strength, SOURCE_XMP, bounded_line(name)))
    tool = _XMP_CREATOR_TOOL.search(packet)
    if tool:
        findings.append(software_finding(tool.group(1), SOURCE_XMP, kind="CreatorTool"))
    remote = _XMP_REMOTE_MANIFEST.search(packet)
    if remote:
        findings.append(Finding("C2PA remote manifest", INFO, SOURCE_XMP,
                                f"referenced, not fetched (offline): {bounded_line(remote.group(1), 120)}"))
    return findings


# --------------------------------------------------------------------------- C2PA


def has_c2pa_marker(data: bytes) -> bool:
    """The cheap test in front of the C2PA reader: an embedded manifest store is a JUMBF
    superbox, whose box type ``jumb`` appears in the bytes in every container format."""
    return _JUMBF_MARKER in data


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


# --------------------------------------------------------------------------- the stage


def read_evidence(data: bytes, image_format: str, image: Image.Image, options: EvidenceOptions) -> list[Finding]:
    """All findings for one file, strongest first. Never raises."""
    findings: list[Finding] = []
    readers = (
        lambda: c2pa_findings(data, image_format, options) if has_c2pa_marker(data) else [],
        lambda: png_text_findings(image.info) if image_format == "PNG" else [],
        lambda: exif_findings(*_read_exif(image)),
        lambda: xmp_findings(xmp_packet(image)),
    )
    for source, read in zip((SOURCE_C2PA, SOURCE_PNG_TEXT, SOURCE_EXIF, SOURCE_XMP), readers):
        try:
            findings.extend(read())
        except Exception as exc:  # noqa: BLE001 - broken metadata never costs the row
            findings.append(Finding("unreadable", INFO, source, f"metadata could not be read: {bounded_line(exc, 160)}"))
    return sort_findings(findings)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: STRENGTHS.index(f.strength))


def evidence_cell(findings: Iterable[Finding]) -> str:
    """The ``evidence`` column: one finding a line (the report splits on newlines)."""
    return "\n".join(f.line() for f in findings)


def evidence_sources(findings: Iterable[Finding]) -> str:
    """The ``evidence_source`` column: the sources, strongest finding's first, without repeats."""
    return ", ".join(dict.fromkeys(f.source for f in sort_findings(findings)))
