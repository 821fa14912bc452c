"""The record stage: one schema, spreadsheet-safe CSV, XLSX with frozen header and filters."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.cli import results_rows

from audit.pipeline import ResultWriter
from audit.rows import RESULT_COLUMNS, ResultRow, neutralise

EXPECTED_COLUMNS = (
    "path", "root", "sha256", "bytes", "format", "width", "height", "status", "error",
    "prob_ai", "verdict", "threshold", "true_label", "model_id", "scanned_at", "note",
    "evidence", "evidence_source", "verdict_reason",
    "review", "review_note", "reviewed_by", "reviewed_at", "review_model_id", "novelty",
)


def test_columns_are_the_documented_ones_in_order() -> None:
    assert RESULT_COLUMNS == EXPECTED_COLUMNS
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for column in RESULT_COLUMNS:
        assert f"| `{column}` |" in readme, f"column {column} is not documented in README.md"


@pytest.mark.parametrize("text", ["=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\tx", "\rx"])
def test_formula_cells_are_neutralised(text: str) -> None:
    assert neutralise(text) == "'" + text


@pytest.mark.parametrize("value", ["plain name.jpg", "a=b.jpg", "", 0.25, -1, None])
def test_other_cells_are_left_alone(value) -> None:
    assert neutralise(value) == value


def write_rows(out: Path, rows: list[ResultRow]) -> None:
    writer = ResultWriter(out)
    for row in rows:
        writer.write(row)
    writer.close()


ROWS = [
    ResultRow(path="=cmd.jpg", root="/a", prob_ai=0.75, verdict="ai-generated", threshold=0.5, bytes=10),
    ResultRow(path="new\nline, \"quoted\".jpg", root="/a", status="error", error="-bad", verdict="error"),
    ResultRow(path="ünïcødé 画像.jpg", root="/a", prob_ai=0.125, verdict="real", note="ctrl\x01char"),
]


def test_csv_has_bom_quotes_newlines_and_neutralises(tmp_path: Path) -> None:
    write_rows(tmp_path, ROWS)
    raw = (tmp_path / "results.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfpath,root,sha256,")
    rows = results_rows(tmp_path)
    assert [r["path"] for r in rows] == ["'=cmd.jpg", 'new\nline, "quoted".jpg', "ünïcødé 画像.jpg"]
    assert rows[0]["prob_ai"] == "0.750000" and rows[0]["bytes"] == "10" and rows[0]["width"] == ""
    assert rows[1]["error"] == "'-bad"
    assert not list(tmp_path.glob("*.tmp"))


def test_xlsx_has_frozen_header_autofilter_and_the_same_cells(tmp_path: Path) -> None:
    from openpyxl import load_workbook
    from openpyxl.utils import get_column_letter

    write_rows(tmp_path, ROWS)
    sheet = load_workbook(tmp_path / "results.xlsx")["results"]
    assert sheet.freeze_panes == "A2"
    assert sheet.auto_filter.ref == f"A1:{get_column_letter(len(EXPECTED_COLUMNS))}4"  # header + 3 rows, every column
    values = list(sheet.iter_rows(values_only=True))
    assert values[0] == EXPECTED_COLUMNS
    assert values[1][0] == "'=cmd.jpg" and values[1][9] == 0.75
    assert values[2][0] == 'new\nline, "quoted".jpg'
    assert values[3][0] == "ünïcødé 画像.jpg" and values[3][15] == "ctrl\\x01char"
    # The review column offers the decisions as a drop-down (audit review import reads them back).
    (validation,) = sheet.data_validations.dataValidation
    review = get_column_letter(EXPECTED_COLUMNS.index("review") + 1)
    assert validation.type == "list" and validation.formula1 == '"confirmed-ai,false-positive,unsure"'
    assert str(validation.sqref) == f"{review}2:{review}4"


def test_xlsx_cells_hold_the_csv_text_and_a_nan_probability_does_not_fail_the_run(tmp_path: Path) -> None:
    """A file name that looks like a URL or a number stays that text (no hyperlink, no number),
    and a model that returned NaN still gets its XLSX (the cell is an error cell, not 0 or empty)."""
    from openpyxl import load_workbook

    write_rows(tmp_path, [ResultRow(path="https://example.com/a.jpg", root="/a", prob_ai=float("nan"), note="0123")])
    sheet = load_workbook(tmp_path / "results.xlsx")["results"]
    path_cell, prob_cell = sheet.cell(2, 1), sheet.cell(2, EXPECTED_COLUMNS.index("prob_ai") + 1)
    assert path_cell.value == "https://example.com/a.jpg" and path_cell.hyperlink is None
    assert sheet.cell(2, EXPECTED_COLUMNS.index("note") + 1).value == "0123"
    assert not isinstance(prob_cell.value, (int, float)) and prob_cell.value is not None


def test_abort_leaves_nothing_behind(tmp_path: Path) -> None:
    writer = ResultWriter(tmp_path)
    writer.write(ROWS[0])
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_neutralising_round_trips_every_name() -> None:
    from audit.rows import neutralise, unneutralise

    for name in ["=cmd.jpg", "'=x.jpg", "''a.jpg", "'quoted.jpg", "plain.jpg", "-1.png", "@home.gif", "\tx.png"]:
        written = neutralise(name)
        assert not written.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert unneutralise(written) == name

