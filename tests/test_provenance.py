"""The evidence stage: C2PA, generator text, EXIF/XMP -> findings, the verdict rule, the CSV and
the report. Every fixture is made here: the C2PA images are signed by c2pa-python's Builder with
an EC P-256 chain generated for the test session (a CA with keyCertSign, a leaf with
digitalSignature and extendedKeyUsage emailProtection), so nothing is downloaded.
"""

from __future__ import annotations

import datetime
import io
import json
from dataclasses import dataclass
from pathlib import Path

import c2pa  # a hard dependency: a broken install must fail here, not skip the C2PA tests
import pytest
from click.testing import CliRunner
from helpers.cli import results_by_path, results_rows, scan_args
from PIL import Image, PngImagePlugin

from audit.cli import main
from audit.evidence import (
    DECLARES_AI,
    DECLARES_CAPTURE,
    INFO,
    MAX_FIELD_CHARS,
    MAX_TEXT_CHARS,
    WEAK,
    EvidenceOptions,
    Finding,
    has_c2pa_marker,
    read_evidence,
)
from audit.evidence import _c2pa as provenance_c2pa
from audit.model import ModelCard, build_network, save_model
from audit.pipeline import ResultWriter
from audit.rows import ResultRow
from audit.verdicts import Decision, decide

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
A1111_PARAMETERS = (
    "a photo of a cat on a sofa\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 512x512, Model: v1-5-pruned"
)
COMFY_PROMPT = json.dumps({"3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20}},
                           "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}}})
HOSTILE = '<script>alert(1)</script> <img src="http://example.com/beacon.png">'


# --------------------------------------------------------------------------- fixture builders


def image(seed: int = 0, size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), ((seed * 40) % 256, 90, 160))


def png_with_text(**chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        # A long one compressed (zTXt), the others plain tEXt: both kinds are read.
        info.add_text(key, value, zip=len(value) > 100)
    buffer = io.BytesIO()
    image().save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def jpeg_with(exif: Image.Exif | None = None, xmp: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    extra = {}
    if exif is not None:
        extra["exif"] = exif
    if xmp is not None:
        extra["xmp"] = xmp
    image().save(buffer, "JPEG", quality=90, **extra)
    return buffer.getvalue()


def camera_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS R5"
    exif[0x0131] = "Digital Photo Professional 4.15"
    sub = exif.get_ifd(0x8769)
    sub[0x9003] = "2024:05:01 10:11:12"
    sub[0xA434] = "RF24-105mm F4 L IS USM"
    return exif


def xmp_source_type(name: str) -> bytes:
    return (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'Iptc4xmpExt:DigitalSourceType="{IPTC}{name}"/></rdf:RDF></x:xmpmeta>'
    ).encode("utf-8")


@dataclass(frozen=True)
class SigningChain:
    signer_chain_pem: bytes  # leaf, then CA
    private_key_pem: bytes
    ca_pem: bytes


@pytest.fixture(scope="session")
def chain() -> SigningChain:
    """An EC P-256 CA (keyCertSign) and a leaf (digitalSignature, EKU emailProtection)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "audit tests")])

    def usage(**flags: bool) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                 "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
        return x509.KeyUsage(**{n: flags.get(n, False) for n in names})

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("audit test CA")).issuer_name(name("audit test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("audit test signer")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return SigningChain(
        signer_chain_pem=leaf.public_bytes(pem) + ca.public_bytes(pem),
        private_key_pem=leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        ca_pem=ca.public_bytes(pem),
    )


def c2pa_signed_jpeg(chain: SigningChain, source_type: str, seed: int = 0) -> bytes:
    """A JPEG with an embedded C2PA manifest whose c2pa.created action has this source type."""
    manifest = {
        "claim_generator_info": [{"name": "audit-test-generator", "version": "1.0"}],
        "title": "fixture.jpg",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.created", "digitalSourceType": IPTC + source_type,
             "softwareAgent": {"name": "Test Diffusion 1.0"}},
        ]}}],
    }
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(
        alg=b"es256", sign_cert=chain.signer_chain_pem, private_key=chain.private_key_pem, ta_url=None))
    source = io.BytesIO()
    image(seed).save(source, "JPEG", quality=90)
    source.seek(0)
    signed = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        builder.sign(signer, "image/jpeg", source, signed)
    return signed.getvalue()


def corrupt_manifest(signed: bytes) -> bytes:
    """Overwrite bytes inside the manifest store (lengths kept, so the JPEG still decodes)."""
    data = bytearray(signed)
    at = data.find(b"c2pa.actions")
    assert at > 0
    data[at + 40: at + 80] = b"\x00" * 40
    return bytes(data)


def evidence_of(data: bytes, options: EvidenceOptions | None = None) -> list[Finding]:
    opened = Image.open(io.BytesIO(data))
    opened.load()
    return read_evidence(data, opened.format, opened, options or EvidenceOptions())


def strongest(findings: list[Finding]) -> Finding:
    assert findings, "no findings"
    return findings[0]


# --------------------------------------------------------------------------- generator text


def test_a1111_parameters_chunk_declares_ai() -> None:
    findings = evidence_of(png_with_text(parameters=A1111_PARAMETERS))
    top = strongest(findings)
    assert (top.strength, top.source, top.kind) == (DECLARES_AI, "png-text", "generator parameters")
    assert "Stable Diffusion web UI" in top.text and "Steps: 20" in top.text
    decision = decide(False, findings)
    assert decision.is_ai and decision.reason.startswith("declared AI by png-text generator parameters")


def test_comfyui_prompt_and_workflow_chunks_declare_ai() -> None:
    workflow = json.dumps({"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}] * 20})
    findings = evidence_of(png_with_text(prompt=COMFY_PROMPT, workflow=workflow))
    texts = [f.text for f in findings if f.strength == DECLARES_AI]
    assert any("ComfyUI node graph" in t for t in texts) and any("ComfyUI workflow" in t for t in texts)
    assert decide(False, findings).is_ai


def test_text_in_a_generator_key_without_the_generator_format_is_only_info() -> None:
    findings = evidence_of(png_with_text(prompt="remember to crop this", Comment="scanned at the library"))
    assert findings and all(f.strength == INFO for f in findings)
    assert decide(False, findings) == Decision(False, "model")


def test_generator_parameters_in_exif_user_comment_and_description() -> None:
    exif = Image.Exif()
    # AUTOMATIC1111 writes JPEG/WebP parameters as a UNICODE (UTF-16 big-endian) UserComment.
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111_PARAMETERS.encode("utf-16-be")
    findings = evidence_of(jpeg_with(exif=exif))
    top = strongest(findings)
    assert (top.strength, top.source) == (DECLARES_AI, "exif") and "UserComment" in top.text and "Sampler: Euler a" in top.text

    exif = Image.Exif()
    exif[0x010E] = A1111_PARAMETERS
    assert strongest(evidence_of(jpeg_with(exif=exif))).strength == DECLARES_AI


def test_generator_parameters_in_webp_exif() -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111_PARAMETERS.encode("utf-16-be")
    buffer = io.BytesIO()
    image().save(buffer, "WEBP", exif=exif)
    top = strongest(evidence_of(buffer.getvalue()))
    assert (top.strength, top.source) == (DECLARES_AI, "exif") and "Steps: 20" in top.text


@pytest.mark.parametrize(("software", "strength"), [("NovelAI", DECLARES_AI), ("Adobe Firefly 2", DECLARES_AI),
                                                    ("GIMP 2.10.36", INFO), ("Imagenomic Portraiture", INFO)])
def test_software_declares_ai_only_for_known_generator_names(software: str, strength: str) -> None:
    exif = Image.Exif()
    exif[0x0131] = software
    findings = [f for f in evidence_of(jpeg_with(exif=exif)) if f.kind == "software"]
    assert [f.strength for f in findings] == [strength]


# --------------------------------------------------------------------------- EXIF and XMP


def test_camera_exif_is_weak_evidence_and_the_verdict_stays_the_models() -> None:
    findings = evidence_of(jpeg_with(exif=camera_exif()))
    camera = [f for f in findings if f.kind == "camera"]
    assert [(f.strength, f.source) for f in camera] == [(WEAK, "exif")]
    assert camera[0].text == "Canon EOS R5, lens RF24-105mm F4 L IS USM, taken 2024:05:01 10:11:12"
    assert decide(True, findings) == Decision(True, "model"), "camera EXIF never clears an image"
    assert decide(False, findings) == Decision(False, "model")


@pytest.mark.parametrize(("source_type", "strength", "is_ai"), [
    ("trainedAlgorithmicMedia", DECLARES_AI, True),
    ("compositeWithTrainedAlgorithmicMedia", DECLARES_AI, True),
    ("digitalCapture", WEAK, False),
    ("digitalArt", INFO, False),
])
def test_xmp_digital_source_type(source_type: str, strength: str, is_ai: bool) -> None:
    findings = evidence_of(jpeg_with(xmp=xmp_source_type(source_type)))
    found = [f for f in findings if f.kind == "IPTC digitalSourceType"]
    assert [(f.strength, f.source, f.text) for f in found] == [(strength, "xmp", source_type)]
    assert decide(False, findings).is_ai is is_ai


def test_xmp_remote_manifest_reference_is_noted_and_not_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("the evidence stage tried to fetch a URL")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    packet = b'<x:xmpmeta><rdf:Description dcterms:provenance="https://example.com/manifest.c2pa"/></x:xmpmeta>'
    findings = evidence_of(jpeg_with(xmp=packet))
    assert [f.text for f in findings if f.kind == "C2PA remote manifest"] == [
        "referenced, not fetched (offline): https://example.com/manifest.c2pa"]


# --------------------------------------------------------------------------- C2PA


@pytest.fixture(scope="module")
def signed_ai(chain: SigningChain) -> bytes:
    return c2pa_signed_jpeg(chain, "trainedAlgorithmicMedia")


def test_c2pa_ai_manifest_declares_ai_and_says_the_signer_is_unchecked(signed_ai: bytes) -> None:
    assert has_c2pa_marker(signed_ai)
    findings = evidence_of(signed_ai)
    top = strongest(findings)
    assert (top.strength, top.source, top.kind) == (DECLARES_AI, "c2pa", "digitalSourceType")
    assert top.text.startswith("trainedAlgorithmicMedia (signature valid; signingCredential.untrusted")
    assert "could not be checked against a trust list" in top.text
    summary = [f.text for f in findings if f.kind == "manifest"]
    assert len(summary) == 1
    assert "claim generator audit-test-generator 1.0" in summary[0] and "c2pa.created" in summary[0]
    assert "signed by audit test signer, audit tests" in summary[0]
    assert decide(False, findings).reason.startswith("declared AI by c2pa digitalSourceType: trainedAlgorithmicMedia")


def test_c2pa_signer_chaining_to_configured_trust_anchors_is_trusted(signed_ai: bytes, chain: SigningChain) -> None:
    options = EvidenceOptions(trust_anchors_pem=chain.ca_pem.decode("ascii"))
    provenance_c2pa.check_options(options)
    top = strongest(evidence_of(signed_ai, options))
    assert top.text == "trainedAlgorithmicMedia (signature valid; signer on the configured trust list)"


def test_c2pa_digital_capture_declares_capture_but_clears_nothing(chain: SigningChain) -> None:
    findings = evidence_of(c2pa_signed_jpeg(chain, "digitalCapture"))
    top = strongest(findings)
    assert (top.strength, top.source) == (DECLARES_CAPTURE, "c2pa") and top.text.startswith("digitalCapture")
    assert decide(True, findings) == Decision(True, "model")
    assert decide(False, findings) == Decision(False, "model")


def test_c2pa_manifest_of_a_changed_image_is_invalid_but_its_ai_declaration_counts(signed_ai: bytes) -> None:
    changed = bytearray(signed_ai)
    changed[-20] ^= 0xFF  # a byte of the image data: the manifest's hash no longer matches
    top = strongest(evidence_of(bytes(changed)))
    assert top.strength == DECLARES_AI and "manifest invalid: assertion.dataHash.mismatch" in top.text


def test_corrupt_c2pa_manifest_is_an_info_note_not_a_crash(signed_ai: bytes) -> None:
    findings = evidence_of(corrupt_manifest(signed_ai))
    notes = [f for f in findings if f.source == "c2pa"]
    assert [(f.kind, f.strength) for f in notes] == [("manifest unreadable", INFO)]
    assert notes[0].text.startswith("C2PA manifest present but could not be read: ")
    assert decide(False, findings) == Decision(False, "model")


def test_c2pa_reader_is_not_called_without_a_jumbf_marker(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("c2pa.Reader called on a file without a manifest store")

    monkeypatch.setattr(c2pa, "Reader", refuse)
    plain = jpeg_with(exif=camera_exif())
    assert not has_c2pa_marker(plain)
    assert [f.source for f in evidence_of(plain)] == ["exif", "exif"]  # camera, software: no c2pa note


def test_bad_trust_anchors_are_refused_early() -> None:
    with pytest.raises(provenance_c2pa.ProvenanceError, match="no PEM certificate|not a PEM"):
        provenance_c2pa.check_options(EvidenceOptions(trust_anchors_pem="not a certificate"))


# --------------------------------------------------------------------------- safety


def test_long_metadata_is_cut_to_the_limits() -> None:
    long_prompt = "masterpiece, " * 20000 + "\n" + "Steps: 20, Sampler: Euler a, Seed: 1"
    assert len(long_prompt) > MAX_FIELD_CHARS
    findings = evidence_of(png_with_text(parameters=long_prompt, Description="x" * 100000))
    assert all(len(f.text) <= MAX_TEXT_CHARS and "\n" not in f.text for f in findings)
    # The A1111 markers sit beyond the field limit: the field is cut before it is examined,
    # so this is not recognised as generator parameters.
    assert all(f.strength == INFO for f in findings)
    short = evidence_of(png_with_text(parameters="masterpiece, " * 100 + "\nSteps: 20, Sampler: Euler a"))
    assert strongest(short).strength == DECLARES_AI and strongest(short).text.endswith("…")


def test_evidence_cells_are_neutralised_in_the_csv(tmp_path: Path) -> None:
    writer = ResultWriter(tmp_path, write_xlsx=False)
    writer.write(ResultRow(path="a.png", root="r", evidence="=HYPERLINK(\"http://example.com\")",
                           evidence_source="+x", verdict_reason="@cmd"))
    writer.close()
    row = results_rows(tmp_path)[0]
    assert row["evidence"].startswith("'=") and row["evidence_source"] == "'+x" and row["verdict_reason"] == "'@cmd"


# --------------------------------------------------------------------------- end to end


def make_model(folder: Path, threshold: float) -> Path:
    import torch

    torch.manual_seed(0)
    save_model(build_network("resnet18-s1stem"), ModelCard(name="t", threshold=threshold), folder / "m")
    return folder / "m.json"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, chain: SigningChain, signed_ai: bytes) -> Path:
    root = tmp_path_factory.mktemp("provenance") / "archive"
    root.mkdir()
    files = {
        "a1111.png": png_with_text(parameters=A1111_PARAMETERS),
        "camera.jpg": jpeg_with(exif=camera_exif()),
        "capture_c2pa.jpg": c2pa_signed_jpeg(chain, "digitalCapture", seed=2),
        "comfyui.png": png_with_text(prompt=COMFY_PROMPT),
        "corrupt_c2pa.jpg": corrupt_manifest(signed_ai),
        "hostile.png": png_with_text(parameters=HOSTILE + "\nSteps: 20, Sampler: Euler a"),
        "plain.jpg": jpeg_with(),
        "signed_ai.jpg": signed_ai,
        "xmp_ai.jpg": jpeg_with(xmp=xmp_source_type("trainedAlgorithmicMedia")),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def scanned_rows(*args: str | Path) -> dict[str, dict[str, str]]:
    """`audit scan ARGS` (its report only when ARGS ask for it), which must succeed; its rows by path."""
    result = scan_args(*args, "--workers", "0", "--quiet", report=True)
    assert result.exit_code == 0, result.output
    return results_by_path(Path(args[args.index("--out") + 1]))


DECLARED = {"a1111.png": "png-text", "comfyui.png": "png-text", "hostile.png": "png-text",
            "signed_ai.jpg": "c2pa", "xmp_ai.jpg": "xmp"}


def test_scan_flags_declared_images_whatever_the_model_says(archive: Path, tmp_path: Path) -> None:
    never_flags = make_model(tmp_path, threshold=1.0)  # a probability is never above 1
    rows = scanned_rows(archive, "--model", never_flags, "--out", tmp_path / "out", "--no-report")
    assert sorted(rows) == sorted(p.name for p in archive.iterdir()), "one row per file"
    for path, row in rows.items():
        assert row["status"] == "ok" and float(row["prob_ai"]) < 1.0, path
        if path in DECLARED:
            assert row["verdict"] == "ai-generated", path
            assert row["verdict_reason"].startswith(f"declared AI by {DECLARED[path]} "), (path, row["verdict_reason"])
            assert row["evidence_source"].startswith(DECLARED[path]), path
        else:
            assert (row["verdict"], row["verdict_reason"]) == ("real", "model"), path
    assert rows["camera.jpg"]["evidence"].splitlines()[0].startswith("weak [exif] camera: Canon EOS R5")
    assert rows["capture_c2pa.jpg"]["evidence"].startswith("declares-capture [c2pa] digitalSourceType: digitalCapture")
    assert "could not be checked against a trust list" in rows["signed_ai.jpg"]["evidence"]
    assert "C2PA manifest present but could not be read" in rows["corrupt_c2pa.jpg"]["evidence"]
    assert rows["plain.jpg"]["evidence"] == rows["plain.jpg"]["evidence_source"] == ""
    assert HOSTILE in rows["hostile.png"]["evidence"], "kept as text in the CSV"


def test_camera_exif_and_c2pa_capture_do_not_clear_what_the_model_flags(archive: Path, tmp_path: Path) -> None:
    always_flags = make_model(tmp_path, threshold=0.0)
    rows = scanned_rows(archive, "--model", always_flags, "--out", tmp_path / "out", "--no-report")
    for path in ("camera.jpg", "capture_c2pa.jpg", "plain.jpg"):
        assert (rows[path]["verdict"], rows[path]["verdict_reason"]) == ("ai-generated", "model"), path


def test_trust_anchors_option_trusts_the_signer_and_refuses_a_file_without_certificates(
        archive: Path, tmp_path: Path, chain: SigningChain) -> None:
    model = make_model(tmp_path, threshold=1.0)
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(chain.ca_pem)
    rows = scanned_rows(archive, "--model", model, "--out", tmp_path / "out", "--no-report", "--include", "signed_ai.jpg",
                "--trust-anchors", anchors)
    assert "signature valid; signer on the configured trust list" in rows["signed_ai.jpg"]["evidence"]
    assert "untrusted" not in rows["signed_ai.jpg"]["evidence"]

    result = CliRunner().invoke(main, ["scan", str(archive), "--model", str(model), "--out", str(tmp_path / "out2"),
                                       "--no-report", "--trust-anchors", str(model)])
    assert result.exit_code == 2 and "--trust-anchors" in result.output
    assert not (tmp_path / "out2").exists(), "a usage error writes nothing"


def test_no_evidence_leaves_the_verdict_to_the_model(archive: Path, tmp_path: Path) -> None:
    rows = scanned_rows(archive, "--model", make_model(tmp_path, threshold=1.0), "--out", tmp_path / "out",
                "--no-report", "--no-evidence")
    assert {row["verdict"] for row in rows.values()} == {"real"}
    assert {row["evidence"] + row["evidence_source"] for row in rows.values()} == {""}


@pytest.mark.slow
def test_report_shows_score_and_evidence_escaped_and_fetches_nothing(archive: Path, tmp_path: Path) -> None:
    from audit.report import render_report_files

    model = make_model(tmp_path, threshold=1.0)
    scanned_rows(archive, "--model", model, "--out", tmp_path / "out", "--no-report", "--include", "*.png",
         "--include", "signed_ai.jpg")
    rendered = render_report_files(tmp_path / "out", model=model)
    assert rendered.refused_urls == (), "the renderer did not even ask for the URL in the metadata"
    html = rendered.html_path.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in html and '<img src="http://example.com' not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "below the threshold 1.0000" in html, "the model's score beside the evidence"
    assert "declared AI by c2pa digitalSourceType: trainedAlgorithmicMedia" in html
    assert "could not be checked against a trust list" in html
    assert "Provenance evidence and the verdict" in html, "the method section states the rule"
