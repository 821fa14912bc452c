"""Nightly operation through `audit scan`: incremental reruns, changes since the last run, --full,
a new model, resume after SIGKILL, and the lock against a concurrent run on the same store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers.cli import count_in_store, results_rows, scan_archive, summary_of
from scan_fixtures import make_model, write_images

from audit.cli import main
from audit.errors import EXIT_LOCKED
from audit.store import RunStore
from audit.summary import RunSummary

REPO = Path(__file__).resolve().parents[1]


def rows_of(out: Path) -> list[tuple[str, str, str]]:
    return [(row["path"], row["sha256"], row["prob_ai"]) for row in results_rows(out)]


def since_last_run_section(out: Path, target: str = "html") -> str:
    """The report page's "Since the last run" section, rendered from the run folder (no PDF)."""
    from audit.report import build_content, read_run, render_page

    content = build_content(read_run(out), None, None, "not needed here", out / "unused-heatmaps", 0)
    page = render_page(content, target)
    start = page.index('<div id="changes">')
    return page[start: page.index("</div>", start)]


@pytest.mark.slow
def test_rerun_reuses_unchanged_files_and_reports_changes(tmp_path: Path, model_path: Path) -> None:
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, [f"{i}.jpg" for i in range(6)])
    first = scan_archive(archive, model_path, tmp_path / "r1", store)
    assert first.exit_code == 0, first.output
    assert (summary_of(tmp_path / "r1").files_scored, summary_of(tmp_path / "r1").files_reused) == (6, 0)
    before = {path: (sha, prob) for path, sha, prob in rows_of(tmp_path / "r1")}

    write_images(archive, ["1.jpg"], seed=100)  # new content: changed
    os.utime(archive / "1.jpg", (1, 1))  # whatever the clock did, its mtime differs
    (archive / "2.jpg").unlink()  # deleted
    write_images(archive, ["9.jpg"], seed=200)  # new
    second = scan_archive(archive, model_path, tmp_path / "r2", store)
    assert second.exit_code == 0, second.output
    summary = summary_of(tmp_path / "r2")
    assert (summary.files_scored, summary.files_reused) == (2, 4)
    changes = summary.changes
    assert changes.baseline_run == summary.store.run_id - 1
    assert changes.counts == {"new": 1, "changed": 1, "deleted": 1, "newly_flagged": changes.counts["newly_flagged"]}
    assert [item["path"] for item in changes.listed["new"]] == ["9.jpg"]
    assert [item["path"] for item in changes.listed["changed"]] == ["1.jpg"]
    assert [item["path"] for item in changes.listed["deleted"]] == ["2.jpg"]

    rows = rows_of(tmp_path / "r2")
    assert [path for path, _, _ in rows] == ["0.jpg", "1.jpg", "3.jpg", "4.jpg", "5.jpg", "9.jpg"]  # every file once, in order
    for path, sha, prob in rows:
        if path in ("0.jpg", "3.jpg", "4.jpg", "5.jpg"):
            assert (sha, prob) == before[path]  # reused from the store, not decoded
    assert dict((p, s) for p, s, _ in rows)["1.jpg"] != before["1.jpg"][0]
    page = since_last_run_section(tmp_path / "r2")
    assert 'data-change="new">1<' in page and 'data-change="deleted">1<' in page and 'data-change="changed">1<' in page
    assert page.index("<code>9.jpg</code>") < page.index("<code>1.jpg</code>") < page.index("<code>2.jpg</code>")

    third = scan_archive(archive, model_path, tmp_path / "r3", store)
    assert third.exit_code == 0
    assert summary_of(tmp_path / "r3").changes.counts == {"new": 0, "changed": 0, "deleted": 0, "newly_flagged": 0}
    assert rows_of(tmp_path / "r3") == rows


def test_duplicates_read_alike_and_an_unchanged_rerun_writes_the_same_csv(
        tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import itertools
    from datetime import datetime, timedelta, timezone

    import audit.pipeline._run

    ticks = itertools.count()  # every row is scored a second after the one before
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    monkeypatch.setattr(audit.pipeline._run, "utc_now", lambda: start + timedelta(seconds=next(ticks)))
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, ["a.jpg", "b.jpg"])
    (archive / "c-copy-of-a.jpg").write_bytes((archive / "a.jpg").read_bytes())
    assert scan_archive(archive, model_path, tmp_path / "r1", store).exit_code == 0
    rows = {row.pop("path"): row for row in results_rows(tmp_path / "r1")}
    assert rows["c-copy-of-a.jpg"] == rows["a.jpg"] != rows["b.jpg"]  # the same bytes: one result, one scan time

    assert scan_archive(archive, model_path, tmp_path / "r2", store).exit_code == 0
    assert (tmp_path / "r2" / "results.csv").read_bytes() == (tmp_path / "r1" / "results.csv").read_bytes()


def xlsx_rows(out: Path) -> list[tuple]:
    from openpyxl import load_workbook

    return list(load_workbook(out / "results.xlsx")["results"].iter_rows(values_only=True))


@pytest.mark.slow
def test_an_unchanged_rerun_copies_the_spreadsheet_and_an_edited_or_outdated_one_is_made_again(
        tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from openpyxl import load_workbook

    import audit.pipeline._outputs

    made = []
    make_xlsx = audit.pipeline._outputs.write_xlsx_from_csv
    monkeypatch.setattr(audit.pipeline._outputs, "write_xlsx_from_csv", lambda *paths: (made.append(paths), make_xlsx(*paths)))
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, [f"{i}.jpg" for i in range(4)])
    assert scan_archive(archive, model_path, tmp_path / "r1", store).exit_code == 0
    assert scan_archive(archive, model_path, tmp_path / "r2", store).exit_code == 0
    assert len(made) == 1  # writing a spreadsheet is most of an unchanged rerun's time
    first, second = (tmp_path / "r1" / "results.xlsx").read_bytes(), (tmp_path / "r2" / "results.xlsx").read_bytes()
    assert second == first  # the same rows: last night's spreadsheet is copied, not written again
    assert summary_of(tmp_path / "r2").output_sha256["results.xlsx"] == hashlib.sha256(second).hexdigest()

    # An analyst edits last night's spreadsheet: tonight's is made from tonight's rows instead.
    workbook = load_workbook(tmp_path / "r2" / "results.xlsx")
    workbook["results"]["A2"] = "edited by an analyst"
    workbook.save(tmp_path / "r2" / "results.xlsx")
    assert scan_archive(archive, model_path, tmp_path / "r3", store).exit_code == 0
    assert [row[0] for row in xlsx_rows(tmp_path / "r3")] == ["path", "0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert len(made) == 2

    # A changed file: the spreadsheet holds its new row, with the CSV's values.
    write_images(archive, ["1.jpg"], seed=100)
    os.utime(archive / "1.jpg", (1, 1))
    assert scan_archive(archive, model_path, tmp_path / "r4", store).exit_code == 0
    csv_rows = results_rows(tmp_path / "r4")
    sheet_rows = xlsx_rows(tmp_path / "r4")[1:]
    assert [row[2] for row in sheet_rows] == [row["sha256"] for row in csv_rows]
    assert [row[9] for row in sheet_rows] == [float(row["prob_ai"]) for row in csv_rows]
    assert sheet_rows[1][2] != xlsx_rows(tmp_path / "r3")[2][2]


@pytest.mark.slow
def test_full_and_a_different_model_score_everything_again(tmp_path: Path, model_path: Path) -> None:
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, [f"{i}.jpg" for i in range(3)])
    assert scan_archive(archive, model_path, tmp_path / "r1", store).exit_code == 0
    assert scan_archive(archive, model_path, tmp_path / "r2", store, "--full").exit_code == 0
    assert (summary_of(tmp_path / "r2").files_scored, summary_of(tmp_path / "r2").files_reused) == (3, 0)
    assert summary_of(tmp_path / "r2").store.mode == "full"
    other = make_model(tmp_path / "models", name="other-model")  # another model id
    assert scan_archive(archive, other, tmp_path / "r3", store).exit_code == 0
    assert summary_of(tmp_path / "r3").files_scored == 3
    assert {row["model_id"].split("@")[0] for row in results_rows(tmp_path / "r3")} == {"other-model"}
    assert scan_archive(archive, model_path, tmp_path / "r4", store, "--no-xlsx").exit_code == 0
    assert summary_of(tmp_path / "r4").files_reused == 3  # the first model's results are still there
    assert sorted(path.name for path in (tmp_path / "r4").iterdir()) == ["results.csv", "summary.json"]


def test_runs_and_prune_commands(tmp_path: Path, model_path: Path) -> None:
    archive, store = tmp_path / "archive", tmp_path / "reports" / "audit-store.sqlite"
    write_images(archive, ["a.jpg"])
    kept_anyway = tmp_path / "reports" / "mine"
    kept_anyway.mkdir(parents=True)
    (kept_anyway / "notes.txt").write_text("the user's own folder")
    for out in ("r1", "mine", "r3", "r4"):
        assert scan_archive(archive, model_path, tmp_path / "reports" / out, store).exit_code == 0
    listing = CliRunner().invoke(main, ["runs", "--store", str(store)])
    assert listing.exit_code == 0, listing.output
    lines = listing.output.splitlines()
    assert lines[0].split()[:4] == ["id", "started", "finished", "files"] and len(lines) == 5
    pruned = CliRunner().invoke(main, ["prune", "--store", str(store), "--keep", "2"])
    assert pruned.exit_code == 0, pruned.output
    assert not (tmp_path / "reports" / "r1").exists()  # made by its run: removed
    assert (kept_anyway / "notes.txt").exists()  # existed before its run: left alone
    assert (tmp_path / "reports" / "r3" / "results.csv").exists() and (tmp_path / "reports" / "r4").exists()
    assert "kept" in pruned.output and "pruned 2 run(s)" in pruned.output
    store_db = RunStore(store)
    try:
        assert [run.out_dir for run in store_db.runs()] == [str((tmp_path / "reports" / name).resolve()) for name in ("r3", "r4")]
    finally:
        store_db.close()


@pytest.mark.slow
@pytest.mark.subprocess
def test_sigkill_then_resume_matches_an_uninterrupted_run_and_a_second_run_is_locked_out(tmp_path: Path, model_path: Path) -> None:
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, [f"{i:03d}.jpg" for i in range(160)])
    command = [sys.executable, "-m", "audit.cli", "scan", str(archive), "--model", str(model_path), "--out",
               str(tmp_path / "killed"), "--store", str(store), "--workers", "0", "--batch-size", "8", "--quiet", "--no-report"]
    process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while count_in_store(store, "scores") < 8:  # at least one batch committed
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # A second run on the same store while the first holds it: refused at once, nothing written.
        locked = scan_archive(archive, model_path, tmp_path / "second", store)
        assert locked.exit_code == EXIT_LOCKED
        assert "in use by another run" in locked.output and f"pid {process.pid}" in locked.output
        assert not (tmp_path / "second").exists()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    committed = count_in_store(store, "scores")
    assert committed % 8 == 0 and 8 <= committed < 160, committed  # whole batches only

    resumed = scan_archive(archive, model_path, tmp_path / "resumed", store)  # the kernel dropped the dead run's lock
    assert resumed.exit_code == 0, resumed.output
    summary = summary_of(tmp_path / "resumed")
    # Only what was not committed is scored again: the batch in flight and those after it.
    assert (summary.files_reused, summary.files_scored) == (committed, 160 - committed)
    assert summary.changes.counts["new"] == 160  # the killed run never completed: still new

    reference = scan_archive(archive, model_path, tmp_path / "reference", tmp_path / "other-store.sqlite")
    assert reference.exit_code == 0
    resumed_rows, reference_rows = rows_of(tmp_path / "resumed"), rows_of(tmp_path / "reference")
    assert len({path for path, _, _ in resumed_rows}) == len(resumed_rows) == 160
    assert resumed_rows == reference_rows

    db = RunStore(store)
    try:
        assert db.integrity_ok()
        killed, last = db.runs()
        assert killed.partial and killed.finished_at is None and "killed" in killed.note
        assert not last.partial and last.exit_code == 0 and last.files_reused == committed
    finally:
        db.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_marks_the_run_partial_in_the_store(tmp_path: Path, model_path: Path, signum: int) -> None:
    """In-process: the SystemExit(128 + signal) that the CLI's SIGTERM/SIGINT handlers raise unwinds
    through run_scan (tests/test_scan_interrupted.py sends a real SIGTERM to a scan process)."""
    from audit.config import ScanOptions
    from audit.model import load_model
    from audit.pipeline import _run as scan_module
    from audit.pipeline import run_scan

    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, [f"{i}.jpg" for i in range(20)])
    real_make_row = scan_module.make_row
    calls = {"n": 0}

    def make_row_then_stop(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:  # in the second batch: the first one is committed
            raise SystemExit(128 + signum)
        return real_make_row(*args, **kwargs)

    scan_module.make_row = make_row_then_stop
    try:
        with pytest.raises(SystemExit):
            run_scan(ScanOptions(archives=(str(archive),), out_dir=tmp_path / "out", model_path=str(model_path),
                                 workers=0, batch_size=8, progress="none", report=False, store=store),
                     model=load_model(str(model_path)))
    finally:
        scan_module.make_row = real_make_row
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no partial result files
    db = RunStore(store)
    try:
        (run,) = db.runs()
        assert run.partial and run.exit_code == 128 + signum and run.note == f"stopped by signal {signum}"
        assert (run.files, run.files_scored) == (11, 11)
    finally:
        db.close()
    resumed = scan_archive(archive, model_path, tmp_path / "again", store)
    assert resumed.exit_code == 0
    assert (summary_of(tmp_path / "again").files_reused, summary_of(tmp_path / "again").files_scored) == (8, 12)


def test_a_one_off_or_filtered_scan_does_not_make_the_store_forget_the_archive(tmp_path: Path, model_path: Path) -> None:
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, [f"{i}.jpg" for i in range(4)])
    assert scan_archive(archive, model_path, tmp_path / "night1", store).exit_code == 0

    one_off = scan_archive(archive / "2.jpg", model_path, tmp_path / "check", store)
    assert one_off.exit_code == 0, one_off.output
    filtered = scan_archive(archive, model_path, tmp_path / "subset", store, "--include", "0.jpg")
    assert filtered.exit_code == 0, filtered.output
    assert summary_of(tmp_path / "check").changes.counts["deleted"] == 0
    assert summary_of(tmp_path / "subset").changes.counts["deleted"] == 0

    night2 = scan_archive(archive, model_path, tmp_path / "night2", store)
    assert night2.exit_code == 0, night2.output
    summary = summary_of(tmp_path / "night2")
    assert (summary.files_scored, summary.files_reused) == (0, 4)
    assert summary.changes.counts["new"] == 0 and summary.changes.counts["deleted"] == 0


@pytest.mark.subprocess
def test_an_unchanged_rerun_never_loads_torch_or_the_network(tmp_path: Path, model_path: Path) -> None:
    """What makes a nightly rerun cheap: every row comes from the store, so the process never
    imports torch (seconds of start-up) nor builds the network."""
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, [f"{i}.jpg" for i in range(3)])
    assert scan_archive(archive, model_path, tmp_path / "night1", store).exit_code == 0
    probe = (
        "import sys\n"
        "from audit.cli import main\n"
        "try:\n"
        f"    main({['scan', str(archive), '--model', str(model_path), '--out', str(tmp_path / 'night2'), '--store', str(store), '--quiet', '--no-report']!r})\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code, 'torch' in sys.modules)\n"
    )
    finished = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.stdout.split() == ["exit", "0", "False"], finished.stderr
    summary = summary_of(tmp_path / "night2")
    assert (summary.files_scored, summary.files_reused, summary.compute) == (0, 3, None)
    assert [row[1:] for row in rows_of(tmp_path / "night2")] == [row[1:] for row in rows_of(tmp_path / "night1")]


def test_reused_results_that_flag_again_are_reported_as_newly_flagged(tmp_path: Path) -> None:
    """Night 3 goes back to night 1's model: its stored results are reused, and the files that
    night 2's model had cleared are newly flagged again."""
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, [f"{i}.jpg" for i in range(3)])
    flag_all = make_model(tmp_path / "flag-all", threshold=0.0)
    flag_none = make_model(tmp_path / "flag-none", threshold=1.0)
    assert scan_archive(archive, flag_all, tmp_path / "night1", store).exit_code == 0
    assert scan_archive(archive, flag_none, tmp_path / "night2", store).exit_code == 0
    assert summary_of(tmp_path / "night2").flagged == 0
    assert scan_archive(archive, flag_all, tmp_path / "night3", store).exit_code == 0
    summary = summary_of(tmp_path / "night3")
    assert (summary.files_reused, summary.flagged) == (3, 3)
    assert summary.changes.counts["newly_flagged"] == 3


def test_the_same_archive_typed_differently_is_the_same_archive_to_the_store(
    tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, [f"{i}.jpg" for i in range(3)])
    (tmp_path / "link").symlink_to(archive)
    assert scan_archive(archive, model_path, tmp_path / "night1", store).exit_code == 0
    monkeypatch.chdir(tmp_path)
    for night, typed in (("night2", "archive/"), ("night3", "link")):
        result = CliRunner().invoke(main, ["scan", typed, "--model", str(model_path), "--out", night, "--store", str(store),
                                           "--workers", "0", "--quiet", "--no-report"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        summary = summary_of(tmp_path / night)
        assert (summary.files_scored, summary.files_reused) == (0, 3)
        assert summary.changes.counts["new"] == 0 and summary.changes.counts["deleted"] == 0
        assert {row["root"] for row in results_rows(tmp_path / night)} == {typed}


def test_a_reused_output_folder_keeps_nothing_from_the_earlier_run(tmp_path: Path, model_path: Path) -> None:
    archive, out = tmp_path / "archive", tmp_path / "out"
    write_images(archive, ["0.jpg"])
    out.mkdir()
    for name in ("report.html", "report.pdf", "results.xlsx"):
        (out / name).write_text("from last week's run")
    (out / "heatmaps").mkdir()
    (out / "heatmaps" / "0-overlay.png").write_bytes(b"old")
    assert scan_archive(archive, model_path, out, tmp_path / "store.sqlite", "--no-xlsx").exit_code == 0
    assert sorted(path.name for path in out.iterdir()) == ["results.csv", "summary.json"]
    assert summary_of(out).outputs == ["results.csv", "summary.json"]


@pytest.mark.slow
def test_the_printed_front_page_lists_the_first_50_changes_of_a_kind_and_says_how_many_there_are(
        tmp_path: Path, model_path: Path) -> None:
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, ["a.jpg"])
    assert scan_archive(archive, model_path, tmp_path / "r1", store).exit_code == 0
    write_images(archive, [f"new-{i:02d}.jpg" for i in range(55)], seed=10)
    assert scan_archive(archive, model_path, tmp_path / "r2", store).exit_code == 0
    printed = since_last_run_section(tmp_path / "r2", "pdf")
    page = since_last_run_section(tmp_path / "r2")
    assert printed.count("<li><code>new-") == 50 and "the first 50 of 55; <code>audit runs --changes 2</code> lists every one" in printed
    assert "new-49.jpg" in printed and "new-50.jpg" not in printed
    assert page.count("<li><code>new-") == 55 and "the first" not in page  # the HTML page lists what summary.json has



def test_an_unchanged_night_copies_its_rows_and_a_change_to_what_they_are_made_of_makes_them_again(
        tmp_path: Path, model_path: Path) -> None:
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, [f"{i}.jpg" for i in range(5)])

    def night(name: str) -> RunSummary:
        assert scan_archive(archive, model_path, tmp_path / name, store).exit_code == 0
        return summary_of(tmp_path / name)

    first, second = night("r1"), night("r2")
    assert first.rows_copied_from_run is None
    assert second.rows_copied_from_run == first.store.run_id  # nothing changed: its rows taken whole
    assert (tmp_path / "r2" / "results.csv").read_bytes() == (tmp_path / "r1" / "results.csv").read_bytes()
    for field in ("files", "flagged", "counts", "labels", "review", "rows_fingerprint"):
        assert getattr(second, field) == getattr(first, field), field
    assert (second.files_scored, second.files_reused) == (0, 5)

    # A reviewer's decision between nights: the rows are made again and carry it.
    decided = results_rows(tmp_path / "r2")[3]
    assert CliRunner().invoke(main, ["review", "set", decided["sha256"], "false-positive", "--store", str(store),
                                     "--by", "ana"]).exit_code == 0
    third = night("r3")
    assert third.rows_copied_from_run is None
    assert results_rows(tmp_path / "r3")[3]["review"] == "false-positive"
    assert night("r4").rows_copied_from_run == third.store.run_id

    # Last night's CSV edited by an analyst: tonight's is made, as the scan writes it.
    (tmp_path / "r4" / "results.csv").write_text("edited", encoding="utf-8")
    fifth = night("r5")
    assert fifth.rows_copied_from_run is None
    assert (tmp_path / "r5" / "results.csv").read_bytes() == (tmp_path / "r3" / "results.csv").read_bytes()

    # A deleted file: nothing to score, but the rows are not last night's.
    (archive / "2.jpg").unlink()
    sixth = night("r6")
    assert sixth.rows_copied_from_run is None and sixth.files == 4
    assert [row["path"] for row in results_rows(tmp_path / "r6")] == ["0.jpg", "1.jpg", "3.jpg", "4.jpg"]

    # Labels asked for: the true_label column changes.
    (tmp_path / "labels.csv").write_text("path,label\n0.jpg,real\n", encoding="utf-8")
    assert scan_archive(archive, model_path, tmp_path / "r7", store, "--labels", str(tmp_path / "labels.csv")).exit_code == 0
    assert summary_of(tmp_path / "r7").rows_copied_from_run is None
    assert results_rows(tmp_path / "r7")[0]["true_label"] == "real"
    labelled = ("--labels", str(tmp_path / "labels.csv"))
    assert scan_archive(archive, model_path, tmp_path / "r8", store, *labelled).exit_code == 0
    assert summary_of(tmp_path / "r8").rows_copied_from_run == summary_of(tmp_path / "r7").store.run_id

    # A result stored since the last run by one that did not complete (a --full night stopped
    # after its first batch): the rows are made again and show it.
    from audit.store import StoredScore

    stored = RunStore(store)
    try:
        sha256 = results_rows(tmp_path / "r8")[1]["sha256"]
        key, model_id, row_json = stored.db.execute("SELECT scoring_key, model_id, row_json FROM scores WHERE sha256 = ?",
                                                     (sha256,)).fetchone()
        stopped_run = stored.start_run("2026-01-01T00:00:00Z", {}, tmp_path / "stopped", True)
        stored.commit_batch(stopped_run, [StoredScore(sha256, key, model_id, {**json.loads(row_json), "prob_ai": 0.123456})], [])
    finally:
        stored.close()
    assert scan_archive(archive, model_path, tmp_path / "r9", store, *labelled).exit_code == 0
    assert summary_of(tmp_path / "r9").rows_copied_from_run is None
    assert results_rows(tmp_path / "r9")[1]["prob_ai"] == "0.123456"
