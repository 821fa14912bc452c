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


def test_the_default_store_follows_the_archive_and_never_joins_unrelated_ones(tmp_path: Path, model_path: Path) -> None:
    photos, scans = tmp_path / "photos", tmp_path / "scans"
    write_images(photos, ["a.jpg", "b.jpg"])
    write_images(scans, ["c.jpg"], seed=50)

    first = scan_archive(photos, model_path, tmp_path / "tmp" / "a", quiet=False)
    assert first.exit_code == 0, first.output
    store = Path(summary_of(tmp_path / "tmp" / "a")["store"]["path"])
    assert f"audit scan: run store {store} (the default for these archives)" in first.stderr  # said at the start
    assert store.is_file() and store.is_relative_to(os.environ["AUDIT_STATE_DIR"])
    # An unrelated archive whose output folder has the same parent: another store, no lock shared.
    other = scan_archive(scans, model_path, tmp_path / "tmp" / "b")
    assert other.exit_code == 0 and other.stderr == ""
    assert Path(summary_of(tmp_path / "tmp" / "b")["store"]["path"]) != store
    assert summary_of(tmp_path / "tmp" / "b")["changes"]["baseline_run"] is None  # it saw none of photos' runs
    # The same archive with its output somewhere else (and typed otherwise): the same store, reused.
    again = scan_archive(Path(str(photos) + "/"), model_path, tmp_path / "home" / "audit")
    assert again.exit_code == 0
    assert summary_of(tmp_path / "home" / "audit")["store"]["path"] == str(store)
    assert summary_of(tmp_path / "home" / "audit")["files_reused"] == 2
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
    store = summary_of(tmp_path / "out")["store"]["path"]
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
    store = Path(summary_of(tmp_path / "n3")["store"]["path"])
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM heatmaps").fetchone()[0] == 4
        assert db.execute("SELECT count(*) FROM gallery_pictures").fetchone()[0] == 4


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_an_unchanged_night_copies_the_report_behind_a_front_page_made_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pypdf import PdfReader

    import audit.report._render
    from audit.report import BODY_MARKER

    rendered: list[Path] = []
    real_render = audit.report._render.render_report_files
    monkeypatch.setattr(audit.report._render, "render_report_files", lambda run_dir, *a, **k: (rendered.append(Path(run_dir)),
                                                                                        real_render(run_dir, *a, **k))[1])
    flag_all = make_model(tmp_path / "models", threshold=0.0)  # every image in the gallery: a report of some pages
    archive = tmp_path / "archive"
    write_images(archive, [f"{i}.jpg" for i in range(6)])

    def night(name: str) -> tuple[dict, list[str], str]:
        result = CliRunner().invoke(main, ["scan", str(archive), "--model", str(flag_all), "--out", str(tmp_path / name),
                                           "--workers", "0", "--no-xlsx"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        pages = [page.extract_text() for page in PdfReader(tmp_path / name / "report.pdf").pages]
        return summary_of(tmp_path / name), pages, (tmp_path / name / "report.html").read_text(encoding="utf-8")

    first, first_pages, first_html = night("n1")
    assert rendered == [tmp_path / "n1"] and first["report"]["copied_from_run"] is None
    front = first["report"]["front_pages"]
    assert 1 <= front < len(first_pages)

    second, second_pages, second_html = night("n2")
    assert rendered == [tmp_path / "n1"]  # not rendered again: copied
    assert second["report"]["copied_from_run"] == first["store"]["run_id"]
    # The front page is tonight's: its run, and the truth about what changed since the last run.
    assert "n2" in second_pages[0] and "Unchanged since run 1" in second_pages[0]
    assert "rendered for run 1 (n1)" in " ".join(second_pages[0].split())
    assert "every file is new" in first_pages[0] and "every file is new" not in second_pages[0]
    assert "Compared with run 1" in " ".join(second_pages[0].split())
    assert f"page 1 of {len(first_pages)}" in second_pages[0]
    # The pages after it are last night's, as they were, under tonight's page headers.
    def without_header(pages: list[str], run_id: str) -> list[str]:
        """The pages' text without their header (which names the run) and page number."""
        assert all(f"AI image audit · run {run_id}" in page for page in pages)
        return [re.sub(r"page \d+ of \d+", "", page.replace(f"AI image audit · run {run_id}", "")) for page in pages]

    assert without_header(second_pages[front:], "n2") == without_header(first_pages[front:], "n1")
    assert len(second_pages) == len(first_pages)
    assert second_html[second_html.index(BODY_MARKER):] == first_html[first_html.index(BODY_MARKER):]
    assert "<title>AI image audit: run n2</title>" in second_html and 'id="unchanged"' in second_html
    assert sorted(p.name for p in (tmp_path / "n2" / "heatmaps").iterdir()) == \
        sorted(p.name for p in (tmp_path / "n1" / "heatmaps").iterdir())

    # A chain of unchanged nights: the pages still name the run they were rendered for.
    chained, chained_pages, _ = night("n2b")
    assert rendered == [tmp_path / "n1"] and chained["report"]["copied_from_run"] == second["store"]["run_id"]
    assert "rendered for run 1 (n1)" in " ".join(chained_pages[0].split())
    assert without_header(chained_pages[front:], "n2b") == without_header(first_pages[front:], "n1")

    # A reviewer annotated last night's PDF: tonight's report is rendered, not made from it.
    with open(tmp_path / "n2b" / "report.pdf", "ab") as handle:
        handle.write(b"\n% annotated\n")
    third, third_pages, _ = night("n3")
    assert rendered == [tmp_path / "n1", tmp_path / "n3"] and third["report"]["copied_from_run"] is None
    assert "Unchanged since" not in third_pages[0]

    # A night with many new files (a long front page), then an unchanged one (a short front page):
    # still copied, each page numbered for tonight.
    write_images(archive, [f"new-{i:02d}.jpg" for i in range(45)], seed=300)
    busy, busy_pages, _ = night("n4")
    calm, calm_pages, _ = night("n5")
    assert calm["report"]["copied_from_run"] == busy["store"]["run_id"] and len(rendered) == 3
    assert calm["report"]["front_pages"] < busy["report"]["front_pages"]
    assert len(calm_pages) == len(busy_pages) - (busy["report"]["front_pages"] - calm["report"]["front_pages"])
    assert without_header(calm_pages[calm["report"]["front_pages"]:], "n5") == \
        without_header(busy_pages[busy["report"]["front_pages"]:], "n4")
    assert all(f"page {number} of {len(calm_pages)}" in page for number, page in enumerate(calm_pages, start=1))


@pytest.mark.slow
def test_a_night_takes_the_report_parts_that_did_not_change_from_the_store(tmp_path: Path) -> None:
    import shutil

    from pypdf import PdfReader

    from audit.report import render_report_files

    flag_all = make_model(tmp_path / "models", threshold=0.0)
    archive = tmp_path / "archive"
    write_images(archive, [f"{i}.jpg" for i in range(5)])

    def night(name: str) -> dict:
        result = CliRunner().invoke(main, ["scan", str(archive), "--model", str(flag_all), "--out", str(tmp_path / name),
                                           "--workers", "0", "--quiet", "--no-xlsx", "--max-gallery", "3"],
                                    catch_exceptions=False)
        assert result.exit_code in (0, 3), result.output  # 3: some files could not be read
        return summary_of(tmp_path / name)

    def page_texts(run_dir: Path) -> list[str]:
        return [page.extract_text() for page in PdfReader(run_dir / "report.pdf").pages]

    first = night("n1")["report"]
    assert first["gallery_pages"] >= 1 and first["body_pages"] > first["gallery_pages"] and first["body_pages_kept"] == 0
    (archive / "broken.jpg").write_bytes(b"not a picture")  # an error row: the cards stay the same
    second = night("n2")
    # Every part but the errors section (and the charts, whose caption counts files) came from the store.
    assert second["report"]["body_pages"] == first["body_pages"] and second["report"]["gallery_pages"] == first["gallery_pages"]
    assert first["gallery_pages"] <= second["report"]["body_pages_kept"] < first["body_pages"]
    assert second["report"]["copied_from_run"] is None
    kept = page_texts(tmp_path / "n2")
    assert "broken.jpg" in "".join(kept)  # tonight's errors section

    # The same run folder rendered from scratch, without the store: the same pages, numbers and all.
    fresh_dir = tmp_path / "fresh" / "n2"  # the run id is the folder name
    shutil.copytree(tmp_path / "n2", fresh_dir)
    fresh = render_report_files(fresh_dir, model=flag_all, max_gallery=3)
    assert fresh.pdf.body_pages_kept == 0
    fresh_pages = page_texts(fresh_dir)
    front = second["report"]["front_pages"]
    assert len(kept) == len(fresh_pages) and kept[front:] == fresh_pages[front:]
    gallery = [text for text in kept if "Flagged images" in text]
    assert len(gallery) == 1 and f"of {len(kept)}" in gallery[0] and "#3 probability" in gallery[0]
    outline = [item.title for item in PdfReader(tmp_path / "n2" / "report.pdf").outline[1] if not isinstance(item, list)]
    assert "Flagged images" in outline
