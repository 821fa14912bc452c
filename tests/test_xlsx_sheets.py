"""results.xlsx never drops a row: past a sheet's row limit the rows go on to results-2,
results-3...; a first `flagged` sheet repeats the rows a reviewer acts on; `audit review import`
reads every sheet. The limit is made small here through the writer's parameter."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from helpers.cli import csv_rows
from openpyxl import load_workbook

from audit.pipeline import ResultWriter
from audit.rows import RESULT_COLUMNS, ResultRow

VERDICTS = ["real", "ai-generated", "real", "uncertain", "error", "real", "ai-generated"]


def rows(count: int) -> list[ResultRow]:
    made = []
    for index in range(count):
        verdict = VERDICTS[index % len(VERDICTS)]
        made.append(ResultRow(
            path=f"f{index:03d}.jpg", root="archive", sha256=hashlib.sha256(str(index).encode()).hexdigest(),
            bytes=100 + index, status="error" if verdict == "error" else "ok", verdict=verdict,
            prob_ai=None if verdict == "error" else index / 100, threshold=0.5, model_id="m"))
    return made


def write(out: Path, made: list[ResultRow], max_sheet_rows: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    writer = ResultWriter(out, max_sheet_rows=max_sheet_rows)
    for row in made:
        writer.write(row)
    writer.close()
    return out / "results.xlsx"


def sheet_rows(sheet) -> list[tuple]:
    return list(sheet.iter_rows(values_only=True))


@pytest.mark.parametrize("count", [0, 1, 3, 4, 9, 10, 23])
def test_every_row_is_on_exactly_one_results_sheet_in_order(tmp_path: Path, count: int) -> None:
    """A sheet of 4 rows holds the header and 3 results; 10 rows fill results, results-2 and
    results-3 and start results-4. A row dropped or written twice fails the comparison."""
    xlsx = write(tmp_path, rows(count), max_sheet_rows=4)
    workbook = load_workbook(xlsx, read_only=False)
    names = [name for name in workbook.sheetnames if name.startswith("results")]
    expected_results = max(1, -(-count // 3))
    assert workbook.sheetnames[0] == "flagged"
    assert names == ["results", *(f"results-{n}" for n in range(2, expected_results + 1))]
    assert workbook.active.title == "flagged", "the first sheet an analyst sees is the short one"
    paths = []
    for name in names:
        sheet = workbook[name]
        got = sheet_rows(sheet)
        assert got[0] == RESULT_COLUMNS, f"{name} has the header"
        assert 1 <= len(got) <= 4
        paths += [row[0] for row in got[1:]]
        assert sheet.freeze_panes == "A2", f"{name}: header row frozen"
        assert sheet.auto_filter.ref and sheet.auto_filter.ref.startswith("A1:"), f"{name}: autofilter"
        review_column = RESULT_COLUMNS.index("review")
        validations = sheet.data_validations.dataValidation
        assert validations and validations[0].type == "list", f"{name}: the review drop-down"
        assert str(validations[0].sqref).startswith(f"{chr(65 + review_column)}2"), f"{name}: on the review column"
    csv_paths = [row["path"] for row in csv_rows(tmp_path / "results.csv")]
    assert paths == csv_paths == [row.path for row in rows(count)]


def test_the_flagged_sheet_holds_the_ai_generated_and_uncertain_rows(tmp_path: Path) -> None:
    made = rows(23)
    xlsx = write(tmp_path, made, max_sheet_rows=4)
    workbook = load_workbook(xlsx)
    flagged_paths = [row[0] for name in workbook.sheetnames if name.startswith("flagged")
                     for row in sheet_rows(workbook[name])[1:]]
    expected = [row.path for row in made if row.verdict in ("ai-generated", "uncertain")]
    assert flagged_paths == expected and len(expected) == 10
    # The flagged rows continue past the limit too: 10 rows on sheets of 3.
    assert [name for name in workbook.sheetnames if name.startswith("flagged")] == \
        ["flagged", "flagged-2", "flagged-3", "flagged-4"]
    for name in ("flagged", "flagged-4"):
        assert sheet_rows(workbook[name])[0] == RESULT_COLUMNS
        assert workbook[name].freeze_panes == "A2"


def test_the_default_limit_is_excels(tmp_path: Path) -> None:
    xlsx = write(tmp_path, rows(5), max_sheet_rows=1_048_576)
    assert load_workbook(xlsx).sheetnames == ["flagged", "results"]
    from audit.pipeline._outputs import EXCEL_MAX_ROWS

    assert EXCEL_MAX_ROWS == 1_048_576 == ResultWriter.__init__.__defaults__[-1]


def test_review_import_reads_every_results_sheet_and_the_flagged_one(tmp_path: Path) -> None:
    """Decisions typed on results-2, on the flagged sheet, or on both count once each; two
    different decisions for one file (flagged sheet against results sheet) are a conflict."""
    import sqlite3

    from click.testing import CliRunner
    from scan_fixtures import jpeg_bytes, make_model, noise_image

    from audit.cli import main
    from audit.pipeline import write_xlsx_from_csv

    archive, store, out = tmp_path / "archive", tmp_path / "store.sqlite", tmp_path / "night"
    archive.mkdir()
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"]
    for index, name in enumerate(names):
        (archive / name).write_bytes(jpeg_bytes(noise_image(32, 32, seed=index)))
    flag_all = make_model(tmp_path / "model", name="flag-all", threshold=0.0)
    scanned = CliRunner().invoke(main, ["scan", str(archive), "--model", str(flag_all), "--out", str(out), "--store",
                                        str(store), "--workers", "0", "--quiet", "--no-report"], catch_exceptions=False)
    assert scanned.exit_code == 0, scanned.output
    xlsx = out / "results.xlsx"
    write_xlsx_from_csv(out / "results.csv", xlsx, max_sheet_rows=3)  # 2 rows a sheet: results..results-3

    workbook = load_workbook(xlsx)
    assert workbook.sheetnames[0] == "flagged"
    assert [name for name in workbook.sheetnames if name.startswith("results")] == ["results", "results-2", "results-3"]
    typed = {("results-2", "c.jpg"): "confirmed-ai",  # a results sheet only
             ("flagged", "b.jpg"): "false-positive",  # the flagged sheet only
             ("results-3", "e.jpg"): "unsure", ("flagged", "e.jpg"): "unsure",  # both, the same
             ("results", "a.jpg"): "confirmed-ai", ("flagged", "a.jpg"): "false-positive"}  # both, different
    for name in workbook.sheetnames:
        sheet = workbook[name]
        header = [cell.value for cell in sheet[1]]
        for row in range(2, sheet.max_row + 1):
            decision = typed.get((name.split("-")[0] if name.startswith("flagged") else name,
                                  sheet.cell(row, 1).value))
            if decision:
                sheet.cell(row, header.index("review") + 1).value = decision
    workbook.save(xlsx)

    imported = CliRunner().invoke(main, ["review", "import", str(xlsx), "--store", str(store), "--by", "ana"],
                                  catch_exceptions=False)
    assert imported.exit_code == 0, imported.output
    assert "6 rows: 3 new decisions, 0 changed, 0 unchanged, 2 ignored, 2 without a decision" in imported.output
    assert "results-2" not in imported.output.split("ignored (", 1)[1]
    assert "flagged row 2, row 2\n" in imported.output  # a.jpg: where each of the two is
    rows_by_name = {row["path"]: row["sha256"] for row in csv_rows(out / "results.csv")}
    with sqlite3.connect(store) as db:
        recorded = dict(db.execute("SELECT sha256, decision FROM decisions").fetchall())
    assert recorded == {rows_by_name["c.jpg"]: "confirmed-ai", rows_by_name["b.jpg"]: "false-positive",
                        rows_by_name["e.jpg"]: "unsure"}
