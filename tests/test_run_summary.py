"""summary.json as a versioned record (audit.summary.RunSummary): written once, read back through
read_summary, its size bounded whatever the archive's; the full change lists live in the run store
and `audit runs --changes RUN` shows them; an older store is migrated to keep them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from scan_fixtures import jpeg_bytes, noise_image

from audit.cli import main
from audit.store import SCHEMA_VERSION, RunStore
from audit.summary import FORMAT_VERSION, RunSummary, SummaryError, read_summary


def write_images(archive: Path, names: list[str], seed: int = 0) -> None:
    archive.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        (archive / name).write_bytes(jpeg_bytes(noise_image(32, 32, seed=seed + index)))


def scan(archive: Path, model: Path, out: Path, store: Path):
    args = ["scan", str(archive), "--model", str(model), "--out", str(out), "--store", str(store),
            "--workers", "0", "--batch-size", "16", "--quiet", "--no-report", "--no-xlsx"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return read_summary(out / "summary.json")


def test_summary_json_lists_a_bounded_number_of_changes_and_the_store_keeps_them_all(
        tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("audit.store._store.MAX_LISTED_CHANGES", 4)
    store = tmp_path / "store.sqlite"
    small, large = tmp_path / "small", tmp_path / "large"
    for archive in (small, large):
        write_images(archive, ["keep.jpg"])
    scan(small, model_path, tmp_path / "s1", store)
    write_images(small, [f"new-{i:03d}.jpg" for i in range(12)], seed=100)
    summary_small = scan(small, model_path, tmp_path / "s2", store)

    other_store = tmp_path / "other.sqlite"
    scan(large, model_path, tmp_path / "l1", other_store)
    write_images(large, [f"new-{i:03d}.jpg" for i in range(36)], seed=100)
    summary_large = scan(large, model_path, tmp_path / "l2", other_store)

    for summary, added in ((summary_small, 12), (summary_large, 36)):
        assert summary.format_version == FORMAT_VERSION
        assert summary.changes is not None and summary.changes.counts["new"] == added  # the count is complete
        assert len(summary.changes.listed["new"]) == summary.changes.listed_limit == 4
    # Three times the new files, the same size (give or take a few digits).
    sizes = [(tmp_path / name / "summary.json").stat().st_size for name in ("s2", "l2")]
    assert abs(sizes[1] - sizes[0]) < 200, sizes

    run_id = summary_large.store.run_id
    listed = CliRunner().invoke(main, ["runs", "--store", str(other_store), "--changes", str(run_id)],
                                catch_exceptions=False)
    assert listed.exit_code == 0, listed.output
    assert "new: 36" in listed.output and "changed: 0" in listed.output
    assert sorted(line.split("/")[-1].split()[0] for line in listed.output.splitlines() if "/new-" in line) == \
        [f"new-{i:03d}.jpg" for i in range(36)]
    unknown = CliRunner().invoke(main, ["runs", "--store", str(other_store), "--changes", "99"])
    assert unknown.exit_code == 2 and "no run 99" in unknown.output


def test_read_summary_takes_an_unversioned_summary_and_refuses_a_newer_format(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"files": 3, "store": {"path": "/s.sqlite", "run_id": 7}, "report": {"old": 1}}))
    old = read_summary(path)
    assert (old.format_version, old.files, old.store.run_id, old.changes) == ("1.0", 3, 7, None)

    written = RunSummary(files=5, output_sha256={"results.csv": "ab"})
    path.write_text(json.dumps(written.to_json()))
    assert read_summary(path) == written

    path.write_text(json.dumps({"format_version": "3.0", "files": 1}))
    with pytest.raises(SummaryError, match="newer than this audit reads"):
        read_summary(path)
    path.write_text("{not json")
    with pytest.raises(SummaryError, match="not valid JSON"):
        read_summary(path)


def test_a_store_of_schema_3_is_migrated_with_its_report_caches_kept(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    RunStore(path).close()
    with sqlite3.connect(path) as db:  # as an audit of schema 3 left it: caches made on first use
        db.execute("DROP TABLE run_changes")
        db.execute("DELETE FROM heatmaps")
        db.execute("INSERT INTO report_parts VALUES ('part', x'00', '[]', 1.0)")
        db.execute("PRAGMA user_version = 3")
    store = RunStore(path)
    try:
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert store.report_cache().get_report_part("part") == (b"\x00", [])
        assert store.changes_of(1, "new") == []
    finally:
        store.close()
