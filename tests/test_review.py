"""Reviewers' decisions: recorded by sha256 in the run store, imported from the spreadsheet or the
report's export, carried by every later run into results.csv/XLSX, the report and the exit code."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers.cli import invoke, results_by_path, scan_archive, summary_of
from scan_fixtures import make_model, write_images

from audit.review import MAX_NOTE_CHARS, decision_history, import_decisions
from audit.store import RunStore

NAMES = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]


@pytest.fixture(scope="module")
def flag_all(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that flags every image (threshold 0): every file is a flagged item to review."""
    return make_model(tmp_path_factory.mktemp("flag-all"), name="flag-all", threshold=0.0)


def review(*args: str):
    return invoke("review", *args)


def front_page(out: Path):
    """The report's content rendered from the run folder (no model, no PDF): counts and gallery."""
    from audit.report import build_content, read_run, render_page

    content = build_content(read_run(out), None, None, "not needed here", out / "unused-heatmaps", 200)
    return content, render_page(content, "html")


def fill_in_xlsx(xlsx: Path, decisions: dict[str, tuple[str, str]]) -> None:
    """What a reviewer does in the spreadsheet: pick a decision and write a note, by file name."""
    from openpyxl import load_workbook

    workbook = load_workbook(xlsx)
    sheet = workbook.active
    header = [cell.value for cell in sheet[1]]
    path_col, review_col, note_col = (header.index(name) + 1 for name in ("path", "review", "review_note"))
    for row in range(2, sheet.max_row + 1):
        name = sheet.cell(row, path_col).value
        if name in decisions:
            sheet.cell(row, review_col).value, sheet.cell(row, note_col).value = decisions[name]
        sheet.cell(row, header.index("prob_ai") + 1).value = 0.5  # edits to other cells change nothing
    workbook.save(xlsx)


def decisions_in(store: Path) -> list[tuple]:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT sha256, decision, decided_by, note FROM decisions ORDER BY id").fetchall()


@pytest.fixture()
def night1(tmp_path: Path, flag_all: Path) -> tuple[Path, Path, Path]:
    archive, store, out = tmp_path / "archive", tmp_path / "store.sqlite", tmp_path / "night1"
    write_images(archive, NAMES)
    assert scan_archive(archive, flag_all, out, store).exit_code == 0
    return archive, store, out


# --------------------------------------------------------------------------- the round trip


@pytest.mark.slow
def test_decisions_made_in_the_spreadsheet_are_carried_by_the_next_run(night1, flag_all: Path) -> None:
    archive, store, out = night1
    assert summary_of(out).review["flagged_awaiting_review"] == 4
    fill_in_xlsx(out / "results.xlsx", {"a.jpg": ("false-positive", "a holiday photo, I took it"),
                                        "b.jpg": ("confirmed-ai", "six fingers <img src=x onerror=alert(1)>")})
    imported = review("import", str(out / "results.xlsx"), "--store", str(store), "--by", "ana")
    assert imported.exit_code == 0, imported.output
    assert "2 new decisions, 0 changed, 0 unchanged, 0 ignored, 2 without a decision" in imported.output

    night2 = out.parent / "night2"
    assert scan_archive(archive, flag_all, night2, store, report=True).exit_code == 0
    rows = results_by_path(night2)
    assert (rows["a.jpg"]["review"], rows["a.jpg"]["reviewed_by"], rows["a.jpg"]["review_note"]) == \
        ("false-positive", "ana", "a holiday photo, I took it")
    assert rows["b.jpg"]["review"] == "confirmed-ai" and rows["b.jpg"]["reviewed_at"].endswith("Z")
    assert rows["c.jpg"]["review"] == rows["c.jpg"]["reviewed_by"] == ""
    assert rows["a.jpg"]["prob_ai"] == results_by_path(out)["a.jpg"]["prob_ai"], "the edited prob_ai cell changed nothing"
    with sqlite3.connect(store) as db:  # the decision records the stored result the reviewer saw
        assert db.execute("SELECT model_id, prob_ai FROM decisions WHERE sha256 = ?", (rows["a.jpg"]["sha256"],)).fetchone() \
            == (rows["a.jpg"]["model_id"], pytest.approx(float(rows["a.jpg"]["prob_ai"]), abs=1e-6))
    assert summary_of(night2).review | {"decisions_up_to": 0} == {
        "flagged_awaiting_review": 2, "flagged_confirmed": 1, "flagged_cleared": 1, "cleared_under_another_model": 0,
        "files_with_decision": 2, "decisions_up_to": 0, "uncertain_awaiting_review": 0, "uncertain_decided": 0}

    content, page = front_page(night2)
    assert (content.counts.awaiting_review, content.counts.confirmed, content.counts.cleared) == (2, 1, 1)
    assert 'data-review-count="awaiting">2<' in page and 'data-review-count="cleared">1<' in page
    assert [item.path for item in content.gallery] == sorted(["c.jpg", "d.jpg"], key=lambda p: -float(rows[p]["prob_ai"]))
    assert [item.path for item in content.decided] == ["b.jpg", "a.jpg"]  # confirmed, then cleared: compact lines
    decided = page[page.index('id="decided"'):]
    assert "ana, " in decided and "six fingers &lt;img src=x onerror=alert(1)&gt;" in decided
    assert "<img src=x" not in page, "a note is text, never markup"
    # The XLSX of the next night shows the decisions in its review columns (the drop-down is there).
    from openpyxl import load_workbook

    sheet = load_workbook(night2 / "results.xlsx").active
    header = [cell.value for cell in sheet[1]]
    reviews = {row[0]: row[header.index("review")] for row in sheet.iter_rows(min_row=2, values_only=True)}
    assert reviews == {"a.jpg": "false-positive", "b.jpg": "confirmed-ai", "c.jpg": None, "d.jpg": None}
    html = (night2 / "report.html").read_text(encoding="utf-8")
    assert html.count('class="card"') == 2
    if shutil.which("pdftotext"):  # the PDF says the same (test_report.py requires poppler under CI)
        text = subprocess.run(["pdftotext", "-layout", str(night2 / "report.pdf"), "-"], check=True, capture_output=True,
                              text=True).stdout
        assert "flagged, awaiting review" in text and "Already decided (2)" in text and "six fingers" in text


def test_fail_on_flagged_ignores_what_reviewers_cleared(night1, flag_all: Path) -> None:
    archive, store, out = night1
    for name in NAMES[:3]:
        assert review("set", str(archive / name), "false-positive", "--store", str(store)).exit_code == 0
    assert scan_archive(archive, flag_all, out.parent / "n2", store, "--fail-on-flagged").exit_code == 4  # d.jpg awaits
    assert review("set", str(archive / "d.jpg"), "confirmed-ai", "--store", str(store)).exit_code == 0
    assert scan_archive(archive, flag_all, out.parent / "n3", store, "--fail-on-flagged").exit_code == 4  # confirmed AI counts
    assert review("set", str(archive / "d.jpg"), "false-positive", "--store", str(store)).exit_code == 0
    assert scan_archive(archive, flag_all, out.parent / "n4", store, "--fail-on-flagged").exit_code == 0
    assert summary_of(out.parent / "n4").flagged == 4, "the verdicts stay the model's"


def test_a_renamed_file_keeps_its_decision_and_an_edited_one_loses_it(night1, flag_all: Path) -> None:
    archive, store, out = night1
    for name in ("a.jpg", "b.jpg"):
        assert review("set", str(archive / name), "false-positive", "--note", "checked", "--store", str(store)).exit_code == 0
    (archive / "a.jpg").rename(archive / "moved-a.jpg")
    write_images(archive, ["b.jpg"], seed=50)  # new bytes under the old name
    os.utime(archive / "b.jpg", (1, 1))
    assert scan_archive(archive, flag_all, out.parent / "n2", store).exit_code == 0
    rows = results_by_path(out.parent / "n2")
    assert (rows["moved-a.jpg"]["review"], rows["moved-a.jpg"]["review_note"]) == ("false-positive", "checked")
    assert rows["b.jpg"]["review"] == ""
    assert summary_of(out.parent / "n2").review["flagged_awaiting_review"] == 3


def test_a_new_model_shows_again_what_it_still_flags_marked_as_cleared_under_the_old_one(night1, flag_all, tmp_path) -> None:
    archive, store, out = night1
    old_model_id = results_by_path(out)["a.jpg"]["model_id"]
    assert review("set", str(archive / "a.jpg"), "false-positive", "--store", str(store)).exit_code == 0
    assert review("set", str(archive / "b.jpg"), "confirmed-ai", "--store", str(store)).exit_code == 0
    newer = make_model(tmp_path / "newer", name="newer-model", threshold=0.0)
    night2 = out.parent / "n2"
    assert scan_archive(archive, newer, night2, store, "--fail-on-flagged").exit_code == 4
    assert summary_of(night2).review["cleared_under_another_model"] == 1
    assert summary_of(night2).review["flagged_awaiting_review"] == 3  # a.jpg is back, b.jpg stays confirmed
    content, page = front_page(night2)
    card = next(item for item in content.gallery if item.path == "a.jpg")
    assert card.review.cleared_under == old_model_id
    assert f"cleared under model {old_model_id}" in page
    # Its spreadsheet still says false-positive: imported untouched, that re-clears nothing.
    untouched = review("import", str(night2 / "results.xlsx"), "--store", str(store))
    assert "0 new decisions, 0 changed, 2 unchanged" in untouched.output, untouched.output
    # Cleared again under the new model (the report's button, exported): settled.
    a_row = results_by_path(night2)["a.jpg"]
    export = write_csv(tmp_path / "decisions.csv", ["sha256", "path", "model_id", "review", "review_note", "decided_by"],
                       [[a_row["sha256"], "a.jpg", a_row["model_id"], "false-positive", "", "bo"]])
    again = review("import", str(export), "--store", str(store))
    assert "0 new decisions, 1 changed" in again.output, again.output
    assert scan_archive(archive, newer, out.parent / "n3", store).exit_code == 0
    assert summary_of(out.parent / "n3").review["flagged_cleared"] == 1
    assert results_by_path(out.parent / "n3")["a.jpg"]["review_model_id"] == a_row["model_id"] != old_model_id


def test_decisions_are_appended_and_the_history_shows_them_all(night1) -> None:
    archive, store, out = night1
    sha256 = results_by_path(out)["c.jpg"]["sha256"]
    assert review("set", sha256, "unsure", "--note", "ask Bo", "--by", "ana", "--store", str(store)).exit_code == 0
    assert review("set", str(archive / "c.jpg"), "confirmed-ai", "--by", "bo", "--store", str(store)).exit_code == 0
    listing = review("list", "--store", str(store))
    assert listing.exit_code == 0
    (line,) = [line for line in listing.output.splitlines()[1:]]
    assert "confirmed-ai" in line and " bo " in line and "c.jpg" in line
    history = review("list", "--history", sha256[:12], "--store", str(store))
    lines = history.output.splitlines()
    assert history.exit_code == 0 and len(lines) == 3
    assert "unsure" in lines[1] and "ask Bo" in lines[1] and "confirmed-ai" in lines[2]
    assert [d.decided_by for d in _history(store, sha256)] == ["ana", "bo"]
    never = review("set", "0" * 64, "unsure", "--store", str(store))
    assert never.exit_code == 2 and "no scan recorded sha256" in never.output


def _history(store: Path, sha256: str):
    db = RunStore(store)
    try:
        return decision_history(db, sha256)
    finally:
        db.close()


# --------------------------------------------------------------------------- bad input


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_a_file_from_another_tool_or_another_store_is_refused_whole(night1, flag_all: Path, tmp_path: Path) -> None:
    from openpyxl import Workbook

    archive, store, out = night1
    foreign = tmp_path / "budget.xlsx"
    workbook = Workbook()
    workbook.active.append(["item", "cost"])
    workbook.active.append(["paper", 3])
    workbook.save(foreign)
    refused = review("import", str(foreign), "--store", str(store))
    assert refused.exit_code == 2 and "lacks the column(s) sha256, review" in refused.output

    other_archive, other_store = tmp_path / "other", tmp_path / "other.sqlite"
    write_images(other_archive, ["x.jpg"], seed=90)
    assert scan_archive(other_archive, flag_all, tmp_path / "other-run", other_store).exit_code == 0
    fill_in_xlsx(tmp_path / "other-run" / "results.xlsx", {"x.jpg": ("false-positive", "")})
    refused = review("import", str(tmp_path / "other-run" / "results.xlsx"), "--store", str(store))
    assert refused.exit_code == 2 and "another run store or another tool" in refused.output
    assert "Nothing was recorded" in refused.output and decisions_in(store) == []
    older = write_csv(tmp_path / "old-results.csv", ["path", "sha256", "verdict"], [["a.jpg", "0" * 64, "real"]])
    refused = review("import", str(older), "--store", str(store))
    assert refused.exit_code == 2 and "written by an audit older than reviewer decisions" in refused.output
    not_a_workbook = tmp_path / "results.xlsx"
    not_a_workbook.write_text("hello")
    refused = review("import", str(not_a_workbook), "--store", str(store))
    assert refused.exit_code == 2 and "cannot be read as an XLSX workbook" in refused.output


def test_bad_rows_are_ignored_with_their_reason_and_the_good_ones_taken(night1, tmp_path: Path) -> None:
    archive, store, out = night1
    rows = results_by_path(out)
    sha = {name: rows[name]["sha256"] for name in NAMES}
    header = ["sha256", "path", "review", "review_note"]
    file = write_csv(tmp_path / "decisions.csv", header, [
        [sha["a.jpg"], "a.jpg", "False Positive", "=HYPERLINK(\"http://evil\",\"x\")"],  # formula-looking note
        ["f" * 64, "never-scanned.jpg", "confirmed-ai", ""],  # a file never scanned
        [sha["b.jpg"], "b.jpg", "probably", ""],  # an unknown decision value
        [sha["c.jpg"], "c.jpg", "unsure", "x" * (10 * 1024 * 1024)],  # a 10 MB note
        [sha["d.jpg"], "d.jpg", "confirmed-ai", "-1 looks fake"],
        ["not-a-hash", "e.jpg", "unsure", ""],
    ])
    imported = review("import", str(file), "--store", str(store), "--by", "ana")
    assert imported.exit_code == 0, imported.output[:2000]
    out_text = imported.output
    assert "6 rows: 2 new decisions, 0 changed, 0 unchanged, 4 ignored" in out_text
    assert "ignored (unknown sha256: no scan recorded these bytes in this run store): row 3" in out_text
    assert "ignored (unknown decision value (use confirmed-ai, false-positive, unsure)): row 4: 'probably'" in out_text
    assert f"ignored (note too long): row 5: a note of {10 * 1024 * 1024} characters (at most {MAX_NOTE_CHARS})" in out_text
    assert "ignored (no valid sha256 in the row): row 7" in out_text
    assert "2 note(s) start like a spreadsheet formula" in out_text and "recorded 2 decision(s)" in out_text
    assert len(out_text) < 5000, "the 10 MB note is not echoed"
    assert decisions_in(store) == [(sha["a.jpg"], "false-positive", "ana", '=HYPERLINK("http://evil","x")'),
                                   (sha["d.jpg"], "confirmed-ai", "ana", "-1 looks fake")]

    # The next run writes the note as text: neutralised in the CSV, never a formula in the XLSX.
    flag_all = Path(summary_of(out).model.path).with_suffix(".json")
    assert scan_archive(archive, flag_all, out.parent / "n2", store).exit_code == 0
    raw = (out.parent / "n2" / "results.csv").read_text(encoding="utf-8-sig")
    assert "'=HYPERLINK(" in raw and ",'-1 looks fake," in raw
    from openpyxl import load_workbook

    sheet = load_workbook(out.parent / "n2" / "results.xlsx").active
    notes = [cell.value for cell in sheet[get_column(sheet, "review_note")][1:]]
    assert "'=HYPERLINK(\"http://evil\",\"x\")" in notes and sheet.cell(2, 1).data_type == "s"


def get_column(sheet, name: str) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter([cell.value for cell in sheet[1]].index(name) + 1)


def test_importing_the_same_file_twice_records_nothing_the_second_time(night1) -> None:
    archive, store, out = night1
    # A note typed as a formula is saved by the spreadsheet as a formula: it is read as its text.
    fill_in_xlsx(out / "results.xlsx", {"a.jpg": ("false-positive", ""), "b.jpg": ("unsure", "=SUM(A1:A3)")})
    first = review("import", str(out / "results.xlsx"), "--store", str(store))
    assert first.exit_code == 0 and "2 new decisions" in first.output
    assert "1 note(s) start like a spreadsheet formula" in first.output
    assert sorted(row[3] for row in decisions_in(store)) == ["", "=SUM(A1:A3)"]
    again = review("import", str(out / "results.xlsx"), "--store", str(store))
    assert again.exit_code == 0
    assert "0 new decisions, 0 changed, 2 unchanged, 0 ignored" in again.output
    assert "this file was imported before" in again.output and "nothing recorded" in again.output
    assert len(decisions_in(store)) == 2


def test_an_old_spreadsheet_does_not_undo_a_newer_decision(night1, flag_all: Path) -> None:
    archive, store, out = night1
    assert review("set", str(archive / "a.jpg"), "unsure", "--by", "ana", "--store", str(store)).exit_code == 0
    assert scan_archive(archive, flag_all, out.parent / "n2", store).exit_code == 0  # its XLSX shows "unsure by ana"
    time.sleep(1.1)  # decisions are timed to the second
    assert review("set", str(archive / "a.jpg"), "confirmed-ai", "--by", "bo", "--store", str(store)).exit_code == 0
    stale = review("import", str(out.parent / "n2" / "results.xlsx"), "--store", str(store))
    assert stale.exit_code == 0
    assert "ignored (stale: the file shows an older decision that a newer one replaced): row 2 (now confirmed-ai by bo" \
        in stale.output
    assert [d[1] for d in decisions_in(store)] == ["unsure", "confirmed-ai"]


def test_copies_of_one_image_given_different_decisions_are_not_guessed(night1, tmp_path: Path) -> None:
    archive, store, out = night1
    sha = results_by_path(out)["a.jpg"]["sha256"]
    file = write_csv(tmp_path / "d.csv", ["sha256", "path", "review"],
                     [[sha, "a.jpg", "false-positive"], [sha, "copy-of-a.jpg", "confirmed-ai"]])
    result = review("import", str(file), "--store", str(store))
    assert "ignored (conflicting decisions for the same content (copies of one image, or a file's row on the flagged sheet and on a results sheet)): row 2, row 3" in result.output
    assert decisions_in(store) == []
    agreeing = write_csv(tmp_path / "e.csv", ["sha256", "path", "review"],
                         [[sha, "a.jpg", "unsure"], [sha, "copy-of-a.jpg", "unsure"]])
    result = review("import", str(agreeing), "--store", str(store))
    assert "1 new decisions" in result.output and "1 repeating the decision of a copy of the same image" in result.output
    assert len(decisions_in(store)) == 1


def test_an_import_is_one_transaction(night1, tmp_path: Path) -> None:
    """A failure while writing (here a trigger standing for a full disk) leaves no decision behind."""
    archive, store, out = night1
    rows = results_by_path(out)
    file = write_csv(tmp_path / "d.csv", ["sha256", "review", "review_note"],
                     [[rows["a.jpg"]["sha256"], "false-positive", ""], [rows["b.jpg"]["sha256"], "unsure", "boom"]])
    with sqlite3.connect(store) as db:
        db.execute("CREATE TRIGGER fail BEFORE INSERT ON decisions WHEN NEW.note = 'boom' "
                   "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    db = RunStore(store)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="disk full"):
            import_decisions(db, file)
    finally:
        db.close()
    assert decisions_in(store) == []


def test_a_version_1_store_gains_the_decisions_table_and_keeps_its_results(night1, flag_all: Path) -> None:
    archive, store, out = night1
    with sqlite3.connect(store) as db:
        db.execute("DROP TABLE decisions")
        db.execute("PRAGMA user_version = 1")
    assert scan_archive(archive, flag_all, out.parent / "n2", store).exit_code == 0
    assert summary_of(out.parent / "n2").files_reused == 4
    assert review("set", str(archive / "a.jpg"), "unsure", "--store", str(store)).exit_code == 0


# --------------------------------------------------------------------------- the HTML report


@pytest.mark.slow
@pytest.mark.browser
def test_decisions_clicked_in_the_html_report_are_exported_and_imported(tmp_path: Path, flag_all: Path) -> None:
    from helpers.browser import find_chromium, open_browser

    executable = find_chromium()
    if executable is None:
        if os.environ.get("AUDIT_REQUIRE_REPORT_TOOLS") == "1":
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed")
    archive, store, out = tmp_path / "archive", tmp_path / "store.sqlite", tmp_path / "night1"
    write_images(archive, NAMES[:3])
    assert scan_archive(archive, flag_all, out, store, report=True).exit_code == 0
    rows = results_by_path(out)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with open_browser(executable) as page:
        page.open(out / "report.html")
        assert page.evaluate('document.getElementById("export-decisions").disabled') is True

        def click(path: str, decision: str, note: str | None = None) -> None:
            card = f'document.querySelector(".card[data-path=\'{path}\']")'
            if note is not None:
                page.evaluate(f'{card}.querySelector(".decision-note").value = {json.dumps(note)};')
            page.evaluate(f'{card}.querySelector("button[data-decision=\'{decision}\']").click();')

        page.evaluate('document.getElementById("reviewer").value = "ana";')
        click("a.jpg", "false-positive", "=my own photo")
        click("b.jpg", "confirmed-ai")
        click("b.jpg", "unsure", "ask Bo")  # a second click on the same image replaces the first
        assert page.evaluate('document.getElementById("decision-count").textContent') == "2 decisions made on this page"
        pressed = page.evaluate('Array.from(document.querySelectorAll(".card[data-path=\'b.jpg\'] button[aria-pressed=true]"))'
                                '.map(function (b) { return b.getAttribute("data-decision"); })')
        assert pressed == ["unsure"]
        exported = page.download('document.getElementById("export-decisions").click();', downloads)
        assert exported == downloads / "decisions-night1.csv" and exported.is_file(), list(downloads.iterdir())
        assert page.log.console_errors == [] and page.log.exceptions == [] and page.log.csp_violations == []
        run_uri = out.resolve().as_uri()
        assert all(url.startswith(("data:", run_uri, "blob:")) for url in page.log.requests), page.log.requests

    imported = review("import", str(exported), "--store", str(store))
    assert imported.exit_code == 0, imported.output
    assert "2 new decisions" in imported.output and "1 note(s) start like a spreadsheet formula" in imported.output
    assert decisions_in(store) == [(rows["a.jpg"]["sha256"], "false-positive", "ana", "=my own photo"),
                                   (rows["b.jpg"]["sha256"], "unsure", "ana", "ask Bo")]
    assert scan_archive(archive, flag_all, tmp_path / "night2", store, report=True).exit_code == 0
    content, _ = front_page(tmp_path / "night2")
    assert sorted(item.path for item in content.gallery) == ["b.jpg", "c.jpg"]  # unsure still awaits a decision
    assert [(item.path, item.review.decision, item.review.by) for item in content.decided] == [("a.jpg", "false-positive", "ana")]
    assert results_by_path(tmp_path / "night2")["a.jpg"]["review_model_id"] == rows["a.jpg"]["model_id"]


def test_the_review_commands_find_the_run_store_by_the_scans_rule(night1) -> None:
    """Without --store: a results file's summary.json names its store; --archive gives the store
    `audit scan ARCHIVE` uses by default."""
    archive, store, out = night1
    imported = review("import", str(out / "results.xlsx"), "--by", "ana")
    assert imported.exit_code == 0, imported.output
    by_archive = review("list", "--archive", str(archive))  # a default store this archive never had
    assert by_archive.exit_code == 2 and "no run store" in by_archive.output
