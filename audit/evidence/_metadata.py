"""The evidence stage: a file's bytes (and its opened Pillow image) -> provenance findings.

What is read, all from the bytes the load stage already holds (the file is not opened again):

* **C2PA Content Credentials** (c2pa-python), only when the bytes contain a JUMBF box
  (``jumb``): read by :mod:`audit.provenance_c2pa`, which also holds the reader's trust
  configuration (:class:`~audit.provenance_c2pa.EvidenceOptions`, ``--trust-anchors``).
* **Generator text**: PNG tEXt/iTXt/zTXt ``parameters`` (Stable Diffusion web UIs), ``prompt``
  and ``workflow`` (ComfyUI), ``Software``, ``Comment`` and ``Description`` (NovelAI and
  others); the same text in EXIF UserComment and ImageDescription (JPEG, WebP, PNG eXIf, TIFF).
* **EXIF**: Make, Model, Software, DateTimeOriginal, lens. **XMP**: the IPTC DigitalSourceType
  (``Iptc4xmpExt:DigitalSourceType``), CreatorTool, and a remote-manifest reference.

What a finding is (strengths, sources, the ``evidence`` columns) is in
:mod:`audit.evidence._findings`.

Offline: nothing is fetched (the C2PA reader's remote-manifest and OCSP fetches are off, and a
remote manifest named in XMP is only noted).

Safety: metadata is archive input. Each field is cut to :data:`MAX_FIELD_CHARS` before it is
looked at, each finding's text to :data:`~audit.evidence._findings.MAX_TEXT_CHARS` and one
line; it is only ever compared with fixed strings (no XML parser, no JSON evaluation, no URL is
followed). Escaping happens where it is shown (CSV neutralisation in audit.pipeline._outputs, jinja2
autoescape in the report).

Errors are data: anything that goes wrong while reading metadata becomes an ``info`` finding
that says so; :func:`read_evidence` never raises.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from PIL import Image

from audit.evidence._c2pa import EvidenceOptions, c2pa_findings, has_c2pa_marker
from audit.evidence._findings import (
    AI_SOURCE_TYPES,
    CAPTURE_SOURCE_TYPES,
    DECLARES_AI,
    INFO,
    SOURCE_C2PA,
    SOURCE_EXIF,
    SOURCE_PNG_TEXT,
    SOURCE_XMP,
    WEAK,
    Finding,
    bounded_line,
    sort_findings,
    source_type_name,
)

# A metadata field is cut to this many characters before it is examined. ComfyUI workflows
# run to tens of kB; the markers looked for sit in the first few hundred characters.
MAX_FIELD_CHARS = 64 * 1024

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


# --------------------------------------------------------------------------- text helpers


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
