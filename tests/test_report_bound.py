"""report.html stays small at any archive size: its table holds the rows a reviewer acts on
(errors, uncertain, flagged) and a bounded number of others, and says how many it left out."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from audit.rows import RESULT_COLUMNS

# 40 rows: every 5th flagged, every 7th uncertain, every 11th unreadable, the rest real.
COUNT = 40


def verdict_of(index: int) -> tuple[str, str]:
    if index % 11 == 0:
        return "error", "error"
    if index % 7 == 0:
        return "ok", "uncertain"
    if index % 5 == 0:
        return "ok", "ai-generated"
    return "ok", "real"


def write_run(run_dir: Path) -> list[dict[str, str]]:
    run_dir.mkdir(parents=True)
    rows = []
    for index in range(COUNT):
        status, verdict = verdict_of(index)
        rows.append({column: "" for column in RESULT_COLUMNS} | {
            "path": f"img{index:03d}.jpg", "root": "archive", "sha256": f"{index:064x}", "status": status,
            "verdict": verdict, "prob_ai": "" if status == "error" else f"{index / 100:.6f}", "threshold": "0.5",
            "error": "cannot decode" if status == "error" else ""})
    with open(run_dir / "results.csv", "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.DictWriter(handle, RESULT_COLUMNS, lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
    (run_dir / "summary.json").write_text(json.dumps({"files": COUNT}), encoding="utf-8")
    return rows


def page_table(run_dir: Path) -> tuple[list[list], str]:
    from audit.report import build_content, read_run, render_page

    content = build_content(read_run(run_dir), None, None, "no model in this test", run_dir / "heatmaps", 0)
    page = render_page(content, "html")
    data = re.search(r'<script id="results-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    return json.loads(data), page


def test_the_table_keeps_every_row_to_act_on_and_at_most_the_bound_of_others(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.report._data as data

    rows = write_run(tmp_path / "run")
    monkeypatch.setattr(data, "MAX_OTHER_TABLE_ROWS", 3)
    table, page = page_table(tmp_path / "run")
    shown = [record[0] for record in table]
    acted = [row["path"] for row in rows if row["verdict"] in ("ai-generated", "uncertain", "error")]
    others = [row["path"] for row in rows if row["path"] not in acted]
    assert set(acted) <= set(shown), "every flagged, uncertain and unreadable row is in the table"
    assert [path for path in shown if path in others] == others[:3]
    assert shown == [row["path"] for row in rows if row["path"] in shown], "discovery order"
    left_out = COUNT - len(shown)
    assert left_out == len(others) - 3 > 0
    note = re.search(r'<p class="note" id="rows-left-out">(.*?)</p>', page, re.S).group(1)
    assert f"{left_out} rows of {COUNT} are left out" in note and "results.csv and results.xlsx hold every row" in note
    assert f"({len(shown)} of {COUNT})" in page


def test_acted_on_rows_are_bounded_too_errors_and_uncertain_first(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.report._data as data

    rows = write_run(tmp_path / "run")
    monkeypatch.setattr(data, "MAX_OTHER_TABLE_ROWS", 0)
    monkeypatch.setattr(data, "MAX_ACTED_TABLE_ROWS", 11)
    table, _ = page_table(tmp_path / "run")
    verdicts = [record[1] for record in table]
    errors = sum(row["verdict"] == "error" for row in rows)
    uncertain = sum(row["verdict"] == "uncertain" for row in rows)
    assert len(table) == 11 and verdicts.count("error") == errors and verdicts.count("uncertain") == uncertain
    flagged_shown = [record[2] for record in table if record[1] == "ai-generated"]
    flagged_all = sorted((float(row["prob_ai"]) for row in rows if row["verdict"] == "ai-generated"), reverse=True)
    assert sorted(flagged_shown, reverse=True) == flagged_all[:11 - errors - uncertain], "the most confident first"


def test_a_small_run_shows_every_row_and_no_note(tmp_path: Path) -> None:
    write_run(tmp_path / "run")
    table, page = page_table(tmp_path / "run")
    assert len(table) == COUNT and 'id="rows-left-out"' not in page and f"All results ({COUNT})" in page
