"""Nightly costs and where the run store lives: the default store follows the archive (never the
output folder's parent), a first run asks the store for earlier results a batch at a time, and a
report's Grad-CAM maps are cached in the store so a rerun explains only images it has not
explained before."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.cli import results_rows, scan_archive, summary_of
from scan_fixtures import make_model, write_images

from audit.cli import main
from audit.store import RunStore
from audit.summary import RunSummary


def test_the_default_store_follows_the_archive_and_never_joins_unrelated_ones(tmp_path: Path, model_path: Path) -> None:
    photos, scans = tmp_path / "photos", tmp_path / "scans"
    write_images(photos, ["a.jpg", "b.jpg"])
    write_images(scans, ["c.jpg"], seed=50)

    first = scan_archive(photos, model_path, tmp_path / "tmp" / "a", quiet=False)
    assert first.exit_code == 0, first.output
    store = Path(summary_of(tmp_path / "tmp" / "a").store.path)
    assert f"audit scan: run store {store} (the default for these archives)" in first.stderr  # said at the start
    assert store.is_file() and store.is_relative_to(os.environ["AUDIT_STATE_DIR"])
    # An unrelated archive whose output folder has the same parent: another store, no lock shared.
    other = scan_archive(scans, model_path, tmp_path / "tmp" / "b")
    assert other.exit_code == 0 and other.stderr == ""
    assert Path(summary_of(tmp_path / "tmp" / "b").store.path) != store
    assert summary_of(tmp_path / "tmp" / "b").changes.baseline_run is None  # it saw none of photos' runs
    # The same archive with its output somewhere else (and typed otherwise): the same store, reused.
    again = scan_archive(Path(str(photos) + "/"), model_path, tmp_path / "home" / "audit")
    assert again.exit_code == 0
    assert summary_of(tmp_path / "home" / "audit").store.path == str(store)
    assert summary_of(tmp_path / "home" / "audit").files_reused == 2
    assert not list(tmp_path.rglob("*.sqlite"))  # nothing beside the reports, nor in the "home" folder

    # `audit runs` and `audit prune` find it by the same rule.
    listing = CliRunner().invoke(main, ["runs", str(photos)])
    assert listing.exit_code == 0, listing.output
    assert len([line for line in listing.stdout.splitlines() if line[:1].isdigit()]) == 2
    pruned = CliRunner().invoke(main, ["prune", str(photos), "--keep", "1"])
    assert pruned.exit_code == 0 and "pruned 1 run(s)" in pruned.output
    assert [run.out_dir for run in RunStore(store).runs()] == [str((tmp_path / "home" / "audit").resolve())]
    assert (tmp_path / "tmp" / "b" / "results.csv").is_file()  # the other archive's run is not touched
    unnamed = CliRunner().invoke(main, ["runs"])
    assert unnamed.exit_code == 2 and str(store) in unnamed.output and str(photos) in unnamed.output


@pytest.mark.slow
def test_the_report_names_the_run_store(tmp_path: Path, model_path: Path) -> None:
    from audit.report import build_content, read_run, render_page

    write_images(tmp_path / "photos", ["a.jpg"])
    assert scan_archive(tmp_path / "photos", model_path, tmp_path / "out").exit_code == 0
    store = summary_of(tmp_path / "out").store.path
    page = render_page(build_content(read_run(tmp_path / "out"), None, None, "not needed", tmp_path / "h", 0), "html")
    assert f"<code>{store}</code> (run 1; default (follows the archives))" in page


def test_a_first_run_asks_the_store_for_earlier_results_a_batch_at_a_time(
        tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    queries: list[int] = []
    real_scores = RunStore.scores

    def counted(self, sha256s, key, scored_run=None):
        queries.append(len(sha256s))
        return real_scores(self, sha256s, key, scored_run)

    monkeypatch.setattr(RunStore, "scores", counted)
    archive = tmp_path / "archive"
    write_images(archive, [f"{i:02d}.jpg" for i in range(40)])
    (archive / "copy-of-03.jpg").write_bytes((archive / "03.jpg").read_bytes())  # a duplicate, 3 batches later
    assert scan_archive(archive, model_path, tmp_path / "r1").exit_code == 0
    assert queries == [8, 8, 8, 8, 8, 1]  # 41 files: one query per batch of 8, not one per file
    rows = {row["path"]: row for row in results_rows(tmp_path / "r1")}
    assert {k: v for k, v in rows["copy-of-03.jpg"].items() if k != "path"} == \
        {k: v for k, v in rows["03.jpg"].items() if k != "path"}  # duplicates still read alike


@pytest.mark.slow
def test_report_heatmaps_come_from_the_store_for_images_explained_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audit.report import GradCamExplainer

    computed: list[int] = []
    real = GradCamExplainer.explain_batch_logits

    def counted(self, batch):
        computed.append(int(batch.shape[0]))
        return real(self, batch)

    monkeypatch.setattr(GradCamExplainer, "explain_batch_logits", counted)
    import audit.report._explain

    files_read: list[str] = []
    real_load = audit.report._explain.pictures.load_picture
    monkeypatch.setattr(audit.report._explain.pictures, "load_picture",
                        lambda path, *a, **k: (files_read.append(Path(path).name), real_load(path, *a, **k))[1])
    flag_all = make_model(tmp_path / "models", threshold=0.0)  # every image is in the gallery
    archive = tmp_path / "archive"
    write_images(archive, [f"{i}.jpg" for i in range(4)])

    def night(name: str) -> dict:
        result = CliRunner().invoke(main, ["scan", str(archive), "--model", str(flag_all), "--out", str(tmp_path / name),
                                           "--workers", "0", "--quiet", "--no-xlsx"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert (tmp_path / name / "report.pdf").is_file()
        return summary_of(tmp_path / name)

    night("n1")
    assert sum(computed) == 4
    assert sorted(files_read) == [f"{i}.jpg" for i in range(4)]
    night("n2")
    assert sum(computed) == 4  # nothing new to explain
    assert len(files_read) == 4  # and no flagged file read again: the cards' pictures are kept too
    for name in (f"g{rank:04d}-gradcam.jpg" for rank in range(1, 5)):  # the same pictures as a computed map gives
        assert (tmp_path / "n2" / "heatmaps" / name).read_bytes() == (tmp_path / "n1" / "heatmaps" / name).read_bytes()
    write_images(archive, ["2.jpg"], seed=90)
    os.utime(archive / "2.jpg", (1, 1))
    night("n3")
    assert sum(computed) == 5  # only the changed image
    assert files_read[4:] == ["2.jpg"]

    # `audit prune` drops the map and pictures of the bytes 2.jpg no longer has, and keeps the rest.
    pruned = CliRunner().invoke(main, ["prune", str(archive), "--keep", "3"], catch_exceptions=False)
    assert pruned.exit_code == 0, pruned.output
    assert "forgot 2 cached heatmap(s) and picture(s)" in pruned.output
    store = Path(summary_of(tmp_path / "n3").store.path)
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM heatmaps").fetchone()[0] == 4
        assert db.execute("SELECT count(*) FROM gallery_pictures").fetchone()[0] == 4


def pdf_facts_of_each_render(monkeypatch: pytest.MonkeyPatch) -> list:
    """The PdfFacts (audit.report._pdf) of every report rendered from now on, in order."""
    import audit.report._pdf as report_pdf

    facts: list = []
    real = report_pdf.write_report_pdf
    monkeypatch.setattr(report_pdf, "write_report_pdf", lambda *a, **k: (facts.append(real(*a, **k)), facts[-1])[1])
    return facts


def test_an_unchanged_night_renders_its_report_from_what_the_store_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pypdf import PdfReader

    facts = pdf_facts_of_each_render(monkeypatch)
    flag_all = make_model(tmp_path / "models", threshold=0.0)  # every image in the gallery: a report of some pages
    archive = tmp_path / "archive"
    write_images(archive, [f"{i}.jpg" for i in range(6)])

    def night(name: str) -> tuple[RunSummary, list[str], str]:
        result = CliRunner().invoke(main, ["scan", str(archive), "--model", str(flag_all), "--out", str(tmp_path / name),
                                           "--workers", "0", "--no-xlsx"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        pages = [page.extract_text() for page in PdfReader(tmp_path / name / "report.pdf").pages]
        return summary_of(tmp_path / name), pages, (tmp_path / name / "report.html").read_text(encoding="utf-8")

    first, first_pages, first_html = night("n1")
    front = facts[0].front_pages
    assert 1 <= front < len(first_pages) and facts[0].body_pages_kept == 0

    second, second_pages, second_html = night("n2")
    # Every page after the front was laid out before: taken from the store, not laid out again.
    assert facts[1].body_pages == facts[1].body_pages_kept == facts[0].body_pages and facts[1].front_pages == front
    # The front page is tonight's: its run, and the truth about what changed since the last run.
    assert "n2" in second_pages[0] and "every file is new" in first_pages[0] and "every file is new" not in second_pages[0]
    assert "Compared with run 1" in " ".join(second_pages[0].split())
    assert f"page 1 of {len(first_pages)}" in second_pages[0]

    def without_header(pages: list[str], run_id: str) -> list[str]:
        """The pages' text without their header (which names the run) and page number."""
        assert all(f"AI image audit · run {run_id}" in page for page in pages)
        return [re.sub(r"page \d+ of \d+", "", page.replace(f"AI image audit · run {run_id}", "")) for page in pages]

    assert without_header(second_pages[front:], "n2") == without_header(first_pages[front:], "n1")
    assert "<title>AI image audit: run n2</title>" in second_html
    assert sorted(p.name for p in (tmp_path / "n2" / "heatmaps").iterdir()) == \
        sorted(p.name for p in (tmp_path / "n1" / "heatmaps").iterdir())
    assert second.changes is not None and second.changes.baseline_run == first.store.run_id


def test_a_night_takes_the_report_parts_that_did_not_change_from_the_store(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from pypdf import PdfReader

    from audit.report import render_report_files

    flag_all = make_model(tmp_path / "models", threshold=0.0)
    archive = tmp_path / "archive"
    write_images(archive, [f"{i}.jpg" for i in range(5)])

    facts = pdf_facts_of_each_render(monkeypatch)

    def night(name: str):
        result = CliRunner().invoke(main, ["scan", str(archive), "--model", str(flag_all), "--out", str(tmp_path / name),
                                           "--workers", "0", "--quiet", "--no-xlsx", "--max-gallery", "3"],
                                    catch_exceptions=False)
        assert result.exit_code in (0, 3), result.output  # 3: some files could not be read
        return facts[-1]

    def page_texts(run_dir: Path) -> list[str]:
        return [page.extract_text() for page in PdfReader(run_dir / "report.pdf").pages]

    first = night("n1")
    assert first.gallery_pages >= 1 and first.body_pages > first.gallery_pages and first.body_pages_kept == 0
    (archive / "broken.jpg").write_bytes(b"not a picture")  # an error row: the cards stay the same
    second = night("n2")
    # Every part but the errors section (and the charts, whose caption counts files) came from the store.
    assert second.body_pages == first.body_pages and second.gallery_pages == first.gallery_pages
    assert first.gallery_pages <= second.body_pages_kept < first.body_pages
    kept = page_texts(tmp_path / "n2")
    assert "broken.jpg" in "".join(kept)  # tonight's errors section

    # The same run folder rendered from scratch, without the store: the same pages, numbers and all.
    fresh_dir = tmp_path / "fresh" / "n2"  # the run id is the folder name
    shutil.copytree(tmp_path / "n2", fresh_dir)
    fresh = render_report_files(fresh_dir, model=flag_all, max_gallery=3)
    assert fresh.pdf.body_pages_kept == 0
    fresh_pages = page_texts(fresh_dir)
    front = second.front_pages
    assert len(kept) == len(fresh_pages) and kept[front:] == fresh_pages[front:]
    gallery = [text for text in kept if "Flagged images" in text]
    assert len(gallery) == 1 and f"of {len(kept)}" in gallery[0] and "#3 probability" in gallery[0]
    outline = [item.title for item in PdfReader(tmp_path / "n2" / "report.pdf").outline[1] if not isinstance(item, list)]
    assert "Flagged images" in outline
