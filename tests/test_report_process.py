"""The report's own process (audit.report._process): started by `audit scan` so that the report's
imports are made while the scan walks and scores; it renders (or copies) the report, says what
it says on the scan's stderr, and when it cannot do the job the scan renders the report itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from pypdf import PdfReader
from scan_fixtures import jpeg_bytes, make_model, noise_image

import audit.report._process as report_process
from audit.cli import main


def write_archive(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        (folder / f"{index}.jpg").write_bytes(jpeg_bytes(noise_image(32, 32, seed=index)))


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_report_process_renders_then_copies_with_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a nightly job runs it: `audit scan photos` from the archive's folder, paths relative,
    in a folder that also holds a package named like ours (the child must not import it)."""
    make_model(tmp_path / "models", threshold=0.01)  # flags every image: the gallery has pictures
    write_archive(tmp_path / "photos", 5)
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "__init__.py").write_text("raise SystemExit('the wrong audit package')\n")
    command = [str(Path(sys.executable).with_name("audit")), "scan", "photos", "--model", "models/test-model.json",
               "--store", "store.sqlite", "--workers", "0"]
    nights = []
    for night in ("one", "two"):
        done = subprocess.run([*command, "--out", night], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "report process" not in done.stderr and "Traceback" not in done.stderr, done.stderr  # the child did it
        nights.append(done.stderr)
    first = json.loads((tmp_path / "one" / "summary.json").read_text(encoding="utf-8"))
    second = json.loads((tmp_path / "two" / "summary.json").read_text(encoding="utf-8"))
    # The first night's report was rendered by the child, from the archive named relative to the
    # scan's folder: its five cards have their pictures.
    assert first["report"]["made_by"] == second["report"]["made_by"] == "report process"
    assert first["report"]["copied_from_run"] is None
    assert len(list((tmp_path / "one" / "heatmaps").glob("*"))) >= 5
    html = (tmp_path / "one" / "report.html").read_text(encoding="utf-8")
    assert html.count('<div class="card"') == 5 and "no picture" not in html
    # The second copied it, and said so on the scan's stderr.
    assert second["report"]["copied_from_run"] == first["store"]["run_id"]
    assert "its pages were copied behind a new front page" in nights[1]
    assert len(PdfReader(tmp_path / "two" / "report.pdf").pages) == len(PdfReader(tmp_path / "one" / "report.pdf").pages)

    # What the child does while it waits on a night with nothing to score (here the job came
    # first): last night's forms read, so the copy finds them read.
    from audit.report import _pdf as report_pdf
    from audit.report import prepare_copy

    prepare_copy(tmp_path / "two")
    monkeypatch.setattr(report_pdf, "_read_forms", lambda *args: pytest.fail("the forms were read again"))
    forms = report_pdf.earlier_forms(tmp_path / "two" / "report.pdf", second["report"]["front_pages"])
    assert forms is not None and len(forms) == second["report"]["body_pages"]


@pytest.mark.subprocess
def test_a_report_process_that_fails_leaves_the_report_to_the_scan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model(tmp_path / "models")
    write_archive(tmp_path / "photos", 3)

    def broken_child(cls):  # a child that ends before it is handed the job
        return cls(subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

    monkeypatch.setattr(report_process.ReportProcess, "start", classmethod(broken_child))
    monkeypatch.setattr("audit.pipeline._run.worth_a_process", lambda: True)
    result = CliRunner().invoke(main, ["scan", str(tmp_path / "photos"), "--model", str(model), "--out",
                                       str(tmp_path / "out"), "--workers", "0"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "the report process ended with status 3; rendering the report in this one" in result.output
    assert (tmp_path / "out" / "report.pdf").is_file() and (tmp_path / "out" / "report.html").is_file()
    report = json.loads((tmp_path / "out" / "summary.json").read_text(encoding="utf-8"))["report"]
    assert report["front_pages"] >= 1 and report["made_by"] == "scan"


def test_the_child_imports_the_copy_first_and_the_renderer_only_when_there_is_scoring(
        monkeypatch: pytest.MonkeyPatch) -> None:
    done: list[str] = []
    monkeypatch.setattr(report_process, "import_report_module", done.append)
    monkeypatch.setattr(report_process, "prepare_copy", lambda earlier: done.append(f"prepare {earlier}"))
    state = report_process._ChildState()
    while state.work_once():  # no hint yet: the copy's imports, then it waits
        pass
    assert done == ["audit.report._reuse", "weasyprint", "pypdf"]
    state.take([{"hint": {"labelled": False, "scoring": False, "earlier_dir": "/runs/one"}}])
    while state.work_once():  # nothing to score: last night's report read for a copy
        pass
    assert done[3:] == ["prepare /runs/one"]
    state.take([{"hint": {"labelled": True, "scoring": True, "earlier_dir": "/runs/one"}}])
    while state.work_once():
        pass
    assert done[4:] == ["audit.report._charts", "audit.report._render", "seaborn", "sklearn.metrics", "audit.report._explain", "pytorch_grad_cam"]
    state.take([{"job": {"out_dir": "/runs/two"}}])
    assert state.job == {"out_dir": "/runs/two"}
