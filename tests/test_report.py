"""The report stage: HTML and PDF rendered from a run folder that the tests write themselves.

The run folder holds results.csv and summary.json in the documented format, real image files
and a real (tiny, trained here) model, so these tests depend neither on the scan nor on the
default model. The page is checked in headless Chromium (Playwright), the PDF with poppler's pdftotext.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import run_fixture as rf
import synthetic_detector as sd
from helpers.browser import ReportPage, find_chromium, open_browser
from helpers.cli import csv_rows
from PIL import Image

from audit.report import compute_metrics, read_results, render_report, render_report_files, run_files_fetcher, write_pdf
from audit.rows import unneutralise

EVIDENCE = "XMP CreatorTool: <b>Stable Diffusion</b> <img src=" + rf.EXTERNAL_URL + ">\nsee url(" + rf.EXTERNAL_URL + ")"


class NetworkAttempts:
    """Records (and blocks) every attempt to resolve a name or open a connection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.attempts: list[str] = []

        def refuse(kind: str):
            def blocked(*args, **kwargs):
                self.attempts.append(f"{kind} {args[1:] if kind == 'connect' else args}")
                raise OSError("network disabled in this test")
            return blocked

        monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
        monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
        monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))


def missing_tool(message: str) -> None:
    """Skip on a developer's machine; fail under .ci/run, which installs the tools."""
    if os.environ.get("AUDIT_REQUIRE_REPORT_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def pdf_text(pdf: Path) -> str:
    if shutil.which("pdftotext") is None:
        missing_tool("pdftotext (Debian poppler-utils) is not installed; .ci/run installs it")
    return subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True).stdout


def pdf_pages(pdf: Path) -> int:
    if shutil.which("pdfinfo") is None:
        missing_tool("pdfinfo (Debian poppler-utils) is not installed; .ci/run installs it")
    info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True).stdout
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> rf.FixtureRun:
    """A labelled run with hostile names and metadata, an error row, rendered once."""
    base = tmp_path_factory.mktemp("report")
    archive, run_dir = base / "archive", base / "reports" / "20261125T190000Z"
    model_path = sd.save_trained_model(base / "model")
    files = rf.make_images(archive, 24)
    picture = Image.fromarray(sd.with_patch(sd.background(np.random.default_rng(3)), 1, 1))
    picture.save(archive / "FAKE" / rf.XSS_NAME, format="JPEG", quality=95)
    picture.save(archive / "FAKE" / rf.FORMULA_NAME)
    files += [(archive / "FAKE" / rf.XSS_NAME, "ai-generated"), (archive / "FAKE" / rf.FORMULA_NAME, "ai-generated")]
    rows = rf.write_run(
        run_dir, archive, model_path, files,
        errors=[("REAL/broken <b>x</b>.jpg", "truncated JPEG file: image file is truncated")],
        evidence={f"FAKE/{rf.FORMULA_NAME}": EVIDENCE},
    )
    render_report(run_dir, max_gallery=200)
    return rf.FixtureRun(run_dir=run_dir, archive=archive, model_path=model_path, rows=rows)


@pytest.fixture(scope="module")
def page(run: rf.FixtureRun):
    executable = find_chromium()
    if executable is None:
        missing_tool("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    with open_browser(executable) as browser:
        browser.open(run.run_dir / "report.html")
        yield browser


def flagged(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return sorted((r for r in rows if r["verdict"] == "ai-generated"), key=lambda r: -float(r["prob_ai"]))


# --------------------------------------------------------------------------- files


@pytest.mark.slow
def test_outputs_are_complete_and_small(run: rf.FixtureRun) -> None:
    run_dir = run.run_dir
    assert (run_dir / "report.html").is_file() and (run_dir / "report.pdf").is_file()
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "heatmaps.tmp").exists()
    shown = len(flagged(run.rows))
    assert shown >= 10, "the fixture must flag enough images to make a gallery"
    heatmaps = sorted(p.name for p in (run_dir / "heatmaps").iterdir())
    assert len(heatmaps) == 2 * shown
    assert heatmaps[:2] == ["g0001-gradcam.jpg", "g0001-original.png"], "small originals stay lossless"
    for name in heatmaps[:2]:
        with Image.open(run_dir / "heatmaps" / name) as picture:
            assert max(picture.size) <= 160, "thumbnails are stored at display resolution"
    assert (run_dir / "report.pdf").stat().st_size < 2_000_000


@pytest.mark.slow
def test_csv_cells_are_read_as_the_scan_meant_them(run: rf.FixtureRun) -> None:
    frame = read_results(run.run_dir / "results.csv")
    assert f"FAKE/{rf.FORMULA_NAME}" in set(frame["path"]), "the neutralising quote is removed for display"
    assert unneutralise("'=cmd") == "=cmd" and unneutralise("'quoted") == "'quoted"
    assert frame["prob_ai"].dtype.kind == "f"


# --------------------------------------------------------------------------- numbers


@pytest.mark.slow
def test_confusion_matrix_in_the_report_equals_results_csv(run: rf.FixtureRun) -> None:
    rows = csv_rows(run.run_dir / "results.csv")
    labelled = [r for r in rows if r["status"] == "ok" and r["true_label"] in ("ai-generated", "real")]
    expected = Counter((r["true_label"], r["verdict"]) for r in labelled)
    html = (run.run_dir / "report.html").read_text(encoding="utf-8")
    cells = {name: int(value) for name, value in re.findall(r'data-cell="(\w+)">(\d+)<', html)}
    assert cells == {
        "true_negative": expected[("real", "real")],
        "false_positive": expected[("real", "ai-generated")],
        "false_negative": expected[("ai-generated", "real")],
        "true_positive": expected[("ai-generated", "ai-generated")],
    }
    metrics = compute_metrics(read_results(run.run_dir / "results.csv"))
    assert metrics.count == len(labelled) == sum(cells.values())
    correct = expected[("real", "real")] + expected[("ai-generated", "ai-generated")]
    assert metrics.accuracy == pytest.approx(correct / len(labelled))
    shown_accuracy = re.search(r'data-metric="accuracy">([\d.]+)<', html).group(1)
    assert float(shown_accuracy) == pytest.approx(correct / len(labelled), abs=1e-4)


@pytest.mark.slow
def test_counts_on_the_front_page(run: rf.FixtureRun) -> None:
    html = (run.run_dir / "report.html").read_text(encoding="utf-8")
    counts = {name: int(value) for name, value in re.findall(r'data-count="([\w-]+)">(\d+)<', html)}
    verdicts = Counter(r["verdict"] for r in run.rows)
    assert counts == {"scanned": len(run.rows), "ai-generated": verdicts["ai-generated"],
                      "real": verdicts["real"], "uncertain": verdicts["uncertain"], "errors": verdicts["error"]}


# --------------------------------------------------------------------------- PDF


@pytest.mark.slow
def test_pdf_holds_the_counts_the_names_and_the_page_furniture(run: rf.FixtureRun) -> None:
    pdf = run.run_dir / "report.pdf"
    pages = pdf_pages(pdf)
    text = pdf_text(pdf)
    verdicts = Counter(r["verdict"] for r in run.rows)
    assert 4 <= pages <= 12
    assert re.search(rf"{len(run.rows)}\s+{verdicts['ai-generated']}\s+{verdicts['real']}\s+{verdicts['uncertain']}\s+"
                     rf"{verdicts['error']}\s", text)
    assert "files scanned" in text and "not yet evaluated" in text
    assert re.search(r"4×4\s+grid\s+over\s+the\s+32×32\s+input", text), "the method section states the map's resolution"
    for row in flagged(run.rows):
        assert unneutralise(row["path"]) in text, row["path"]
    assert "REAL/broken <b>x</b>.jpg" in text and "truncated JPEG file" in text, "errors section"
    assert rf.XSS_NAME in text, "a hostile name is printed as text"
    assert "Stable Diffusion" in text and rf.EXTERNAL_URL in text, "evidence lines, as text"
    assert text.count("run 20261125T190000Z") == pages, "every page's header carries the run id"
    assert f"page {pages} of {pages}" in text
    size = subprocess.run(["pdfinfo", str(pdf)], capture_output=True, text=True).stdout
    assert "595.276 x 841.89 pts (A4)" in size


@pytest.mark.slow
def test_no_gallery_card_is_split_across_pages(run: rf.FixtureRun) -> None:
    """Each card's probability line and its sha256 line land on the same page."""
    from pypdf import PdfReader

    # A page's text card by card, without white space: a long archive path may wrap the sha256.
    pages = ["".join(page.extract_text().split()) for page in PdfReader(run.run_dir / "report.pdf").pages]
    for row in flagged(run.rows):
        name = "".join(unneutralise(row["path"]).split())
        holding = [i for i, p in enumerate(pages) if name in p]
        assert len(holding) == 1, name
        assert row["sha256"][:16] in pages[holding[0]]


@pytest.mark.slow
def test_pdf_renderer_fetches_only_the_run_folder(run: rf.FixtureRun, tmp_path: Path, monkeypatch) -> None:
    network = NetworkAttempts(monkeypatch)
    run_dir = tmp_path / "run"
    (run_dir / "heatmaps").mkdir(parents=True)
    shutil.copy(run.run_dir / "heatmaps" / "g0001-original.png", run_dir / "heatmaps" / "own.png")
    outside = tmp_path / "outside.png"
    shutil.copy(run.run_dir / "heatmaps" / "g0001-original.png", outside)
    (run_dir / "heatmaps" / "link.png").symlink_to(outside)
    hostile = f"""<html><head><link rel="stylesheet" href="https://example.com/x.css">
      <style>body {{ background: url("{rf.EXTERNAL_URL}") }}</style></head><body>
      <img src="heatmaps/own.png"><img src="{rf.EXTERNAL_URL}"><img src="file:///etc/hostname">
      <img src="../outside.png"><img src="heatmaps/link.png"><img src="ftp://example.com/y.png">
      <img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">
    </body></html>"""
    fetcher = write_pdf(hostile, run_dir, run_dir / "hostile.pdf")
    assert (run_dir / "hostile.pdf").is_file()
    assert fetcher.fetched == [(run_dir / "heatmaps" / "own.png").resolve().as_uri()]
    refused = "\n".join(fetcher.refused)
    for url in ("https://example.com/x.css", rf.EXTERNAL_URL, "file:///etc/hostname", "outside.png", "link.png", "ftp://"):
        assert url in refused, url
    assert network.attempts == []


@pytest.mark.slow
def test_rendering_makes_no_network_attempt(run: rf.FixtureRun, tmp_path: Path, monkeypatch) -> None:
    """The evidence and a file name hold an external URL; rendering fetches nothing."""
    run_dir = tmp_path / "copy"
    shutil.copytree(run.run_dir, run_dir)
    network = NetworkAttempts(monkeypatch)
    rendered = render_report_files(run_dir, max_gallery=3)
    assert network.attempts == []
    assert rendered.refused_urls == (), "the report's own page asks only for its own files"
    html = rendered.html_path.read_text(encoding="utf-8")
    assert not re.search(r'(src|href)\s*=\s*"(https?|ftp)://', html)
    # The gallery was re-rendered with a cap of 3: stale heatmaps are gone.
    assert sorted(p.name for p in (run_dir / "heatmaps").iterdir()) == [
        name for i in (1, 2, 3) for name in (f"g000{i}-gradcam.jpg", f"g000{i}-original.png")
    ]
    assert html.count('class="card"') == 3 and "the 3 most confident are shown" in html


# --------------------------------------------------------------------------- escaping


@pytest.mark.slow
def test_archive_strings_are_escaped_in_the_html(run: rf.FixtureRun) -> None:
    html = (run.run_dir / "report.html").read_text(encoding="utf-8")
    assert "<img src=x" not in html and "<b>" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in html
    assert "&lt;b&gt;Stable Diffusion&lt;/b&gt;" in html
    data = re.search(r'<script id="results-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data and "\\u003cimg src=x" in data, "the table's JSON cannot close its script element"


# --------------------------------------------------------------------------- in a browser


@pytest.mark.slow
@pytest.mark.browser
def test_page_loads_offline_without_errors(page: ReportPage, run: rf.FixtureRun) -> None:
    log = page.log
    assert log.console_errors == [] and log.exceptions == [] and log.csp_violations == []
    assert log.dialogs == [], "no script from the archive ran"
    assert page.evaluate('document.querySelectorAll("img[src=x]").length') == 0
    run_uri = run.run_dir.resolve().as_uri()
    for url in log.requests:
        assert url.startswith("data:") or url.startswith(run_uri), url
    assert log.failed_requests == []
    broken_images = page.evaluate(
        "Array.from(document.images).filter(function (i) { return !i.complete || i.naturalWidth === 0; }).length")
    assert broken_images == 0


def visible_paths(page: ReportPage) -> list[str]:
    return page.evaluate(
        'Array.from(document.querySelectorAll("#results-table tbody tr")).map(function (tr) { return tr.cells[0].textContent; })')


@pytest.mark.slow
@pytest.mark.browser
def test_table_filters_and_sorts(page: ReportPage, run: rf.FixtureRun) -> None:
    paths = [unneutralise(r["path"]) for r in run.rows]
    assert visible_paths(page) == paths, "all rows, in discovery order"

    page.evaluate('var f = document.getElementById("filter"); f.value = "IMG00"; f.dispatchEvent(new Event("input"));')
    assert visible_paths(page) == [p for p in paths if "img00" in p.lower()]
    assert page.evaluate('document.getElementById("match-count").textContent').startswith(
        f"{sum('img00' in p.lower() for p in paths)} of {len(paths)}")

    page.evaluate('var f = document.getElementById("filter"); f.value = "onerror"; f.dispatchEvent(new Event("input"));')
    assert visible_paths(page) == [f"FAKE/{rf.XSS_NAME}"], "the hostile name is shown as text"

    page.evaluate('var f = document.getElementById("filter"); f.value = ""; f.dispatchEvent(new Event("input"));'
                  'var s = document.getElementById("verdict-filter"); s.value = "error"; s.dispatchEvent(new Event("change"));')
    assert visible_paths(page) == ["REAL/broken <b>x</b>.jpg"]

    page.evaluate('var s = document.getElementById("verdict-filter"); s.value = ""; s.dispatchEvent(new Event("change"));'
                  'document.querySelector("#results-table th[data-column=\'2\']").click();')
    expected = [unneutralise(r["path"]) for r in flagged(run.rows)]
    assert visible_paths(page)[: len(expected)] == expected, "prob_ai sorts most confident first"
    assert page.evaluate('document.querySelector("#results-table th[data-column=\'2\']").getAttribute("aria-sort")') == "descending"
    assert page.log.console_errors == [] and page.log.exceptions == [] and page.log.dialogs == []


@pytest.mark.slow
def test_a_render_lays_out_again_only_the_gallery_pages_whose_cards_changed(run: rf.FixtureRun, tmp_path: Path) -> None:
    from audit.store import RunStore

    run_dir = tmp_path / run.run_dir.name
    shutil.copytree(run.run_dir, run_dir)
    cache = RunStore(tmp_path / "store.sqlite").report_cache()
    first = render_report_files(run_dir, model=run.model_path, max_gallery=200, report_cache=cache)
    assert first.pdf.gallery_pages >= 2 and first.pdf.body_pages_kept == 0  # nothing kept yet

    rows = csv_rows(run_dir / "results.csv")
    edited = flagged(run.rows)[7]["path"]  # the 8th card: the gallery's second page
    with open(run_dir / "results.csv", "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "evidence": "edited evidence"} if row["path"] == edited else row for row in rows)
    second = render_report_files(run_dir, model=run.model_path, max_gallery=200, report_cache=cache)
    assert second.pdf.body_pages == first.pdf.body_pages
    # Only the part holding the edited card (its page of cards: one page, or two when cards are tall) is laid out again.
    assert 1 <= first.pdf.body_pages - second.pdf.body_pages_kept <= 2
    assert "edited evidence" in pdf_text(run_dir / "report.pdf")


def test_compose_draws_each_part_page_over_its_blank_page_and_keeps_the_page_furniture(tmp_path: Path) -> None:
    """audit.report._pdf.compose, the one user of pypdf's private API: every part page ends up on
    its blank page, under that page's own header, and nothing else moves."""
    import io

    from pypdf import PdfReader
    from weasyprint import HTML

    from audit.report._pdf import compose

    header = "<style>@page { @top-left { content: 'tonight header'; } }</style>"
    main_pdf = HTML(string=f"<html><head>{header}</head><body><p>front page</p>"
                           "<p style='break-before: page'></p><p style='break-before: page'></p></body></html>").write_pdf()
    parts = HTML(string="<p>part one text</p><p style='break-before: page'>part two text</p>").write_pdf()
    writer = compose(main_pdf, 1, list(PdfReader(io.BytesIO(parts)).pages))
    written = io.BytesIO()
    writer.write(written)
    pages = [page.extract_text() for page in PdfReader(io.BytesIO(written.getvalue())).pages]
    assert len(pages) == 3 and "front page" in pages[0] and "part" not in pages[0]
    assert "part one text" in pages[1] and "part two text" not in pages[1] and "part two text" in pages[2]
    assert all("tonight header" in page for page in pages)


# --------------------------------------------------------------------------- degraded runs


@pytest.mark.slow
def test_report_without_labels_or_model_still_renders(run: rf.FixtureRun, tmp_path: Path) -> None:
    run_dir = tmp_path / "unlabelled"
    run_dir.mkdir()
    rows = csv_rows(run.run_dir / "results.csv")
    with open(run_dir / "results.csv", "w", encoding="utf-8-sig", newline="") as handle:
        # An older results.csv: no evidence columns, no labels.
        columns = [c for c in rows[0] if not c.startswith("evidence")]
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "true_label": ""})
    summary = (run.run_dir / "summary.json").read_text(encoding="utf-8").replace(str(run.model_path.parent), str(tmp_path / "gone"))
    (run_dir / "summary.json").write_text(summary, encoding="utf-8")
    html_path, pdf_path = render_report(run_dir, max_gallery=2)
    html = html_path.read_text(encoding="utf-8")
    assert "No true labels are known" in html and 'data-cell="' not in html
    assert "no Grad-CAM: the model is not available" in html
    assert "not yet evaluated" in html
    assert pdf_pages(pdf_path) >= 3


@pytest.mark.slow
def test_a_file_changed_since_the_scan_is_said_so(run: rf.FixtureRun, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    shutil.copytree(run.archive, archive)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("results.csv", "summary.json"):
        text = (run.run_dir / name).read_text(encoding="utf-8-sig" if name.endswith(".csv") else "utf-8")
        encoding = "utf-8-sig" if name.endswith(".csv") else "utf-8"
        (run_dir / name).write_text(text.replace(str(run.archive), str(archive)), encoding=encoding)
    top, second, third = flagged(run.rows)[:3]
    Image.fromarray(sd.background(np.random.default_rng(0))).save(archive / top["path"])
    (archive / second["path"]).unlink()
    # A tampered results.csv whose path climbs out of its root is not followed.
    csv_text = (run_dir / "results.csv").read_text(encoding="utf-8-sig")
    (run_dir / "results.csv").write_text(csv_text.replace(third["path"], "../../" + third["path"]), encoding="utf-8-sig")
    html = render_report(run_dir, max_gallery=3)[0].read_text(encoding="utf-8")
    assert html.count("the file has changed since the scan") == 1
    assert html.count("the file cannot be read now") == 2
    assert html.count("its path leads outside its archive root") == 1
    assert sorted(p.name for p in (run_dir / "heatmaps").iterdir()) == ["g0001-gradcam.jpg", "g0001-original.png"]


@pytest.mark.slow
def test_audit_report_command(run: rf.FixtureRun, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from audit.cli import main

    if "report" not in main.commands:
        pytest.fail("audit/cli.py has no `report` command")
    run_dir = tmp_path / "run"
    shutil.copytree(run.run_dir, run_dir)
    (run_dir / "report.html").unlink()
    result = CliRunner().invoke(main, ["report", str(run_dir), "--max-gallery", "1"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").is_file() and str(run_dir / "report.pdf") in result.output
    assert len(list((run_dir / "heatmaps").iterdir())) == 2


def test_fetcher_refuses_what_is_not_the_run_folder(tmp_path: Path) -> None:
    fetcher = run_files_fetcher(tmp_path)
    (tmp_path / "ok.png").write_bytes(b"x")
    assert fetcher.fetch((tmp_path / "ok.png").as_uri()).read() == b"x"
    for url in (rf.EXTERNAL_URL, "https://example.com/", "file:///etc/passwd", "file://evil.example/x.png",
                (tmp_path / "missing.png").as_uri(), "javascript:alert(1)"):
        with pytest.raises(ValueError):
            fetcher.fetch(url)
    assert len(fetcher.refused) == 6


@pytest.mark.slow
def test_audit_scan_writes_the_report(run: rf.FixtureRun, tmp_path: Path) -> None:
    """End to end: a real scan renders the report; its confusion matrix is results.csv's."""
    from click.testing import CliRunner

    from audit.cli import main

    out = tmp_path / "scan"
    result = CliRunner().invoke(main, ["scan", str(run.archive), "--model", str(run.model_path), "--labels", "folders",
                                       "--out", str(out), "--workers", "0", "--quiet", "--max-gallery", "5"])
    assert result.exit_code == 0, result.output
    rows = csv_rows(out / "results.csv")
    expected = Counter((r["true_label"], r["verdict"]) for r in rows if r["true_label"])
    html = (out / "report.html").read_text(encoding="utf-8")
    cells = {name: int(value) for name, value in re.findall(r'data-cell="(\w+)">(\d+)<', html)}
    assert cells["true_positive"] == expected[("ai-generated", "ai-generated")] > 0
    assert cells["true_negative"] == expected[("real", "real")] > 0
    assert html.count('class="card"') == 5 and (out / "report.pdf").stat().st_size > 0
    assert "no Grad-CAM" not in html and "changed since the scan" not in html

    skipped = tmp_path / "no-report"
    result = CliRunner().invoke(main, ["scan", str(run.archive), "--model", str(run.model_path), "--out", str(skipped),
                                       "--workers", "0", "--quiet", "--no-report"])
    assert result.exit_code == 0, result.output
    assert not (skipped / "report.html").exists() and (skipped / "results.csv").is_file()


def test_an_empty_run_renders_and_a_foreign_csv_is_refused(tmp_path: Path) -> None:
    from audit.report import ReportError

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "results.csv").write_text(",".join(rf.COLUMNS) + "\r\n", encoding="utf-8-sig")
    html_path, pdf_path = render_report(empty)
    html = html_path.read_text(encoding="utf-8")
    assert 'data-count="scanned">0<' in html and "No image was flagged." in html
    assert pdf_path.stat().st_size > 0

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "results.csv").write_text("name,score\r\na.png,0.9\r\n", encoding="utf-8")
    with pytest.raises(ReportError, match="lacks the column"):
        render_report(foreign)
    with pytest.raises(ReportError, match="no results.csv"):
        render_report(tmp_path)


@pytest.mark.slow
def test_a_run_of_mostly_errors_lists_the_first_ones_and_counts_all(tmp_path: Path) -> None:
    from audit.report import MAX_ERRORS_LISTED

    total = MAX_ERRORS_LISTED + 20
    run_dir = tmp_path / "broken-mount"
    run_dir.mkdir()
    lines = [",".join(rf.COLUMNS)]
    for index in range(total):
        row = dict.fromkeys(rf.COLUMNS, "") | {
            "path": f"lost-{index:04d}.jpg", "root": "/mnt/archive", "status": "error",
            "error": "cannot read file: Input/output error", "verdict": "error",
        }
        lines.append(",".join(row[column] for column in rf.COLUMNS))
    (run_dir / "results.csv").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8-sig")
    html = render_report(run_dir)[0].read_text(encoding="utf-8")
    assert f"Errors ({total})" in html and f"The first {MAX_ERRORS_LISTED} are listed here." in html
    errors_table = html.split('class="errors-table"', 1)[1].split("</table>", 1)[0]
    assert errors_table.count("lost-") == MAX_ERRORS_LISTED
