"""``audit scan`` end to end: the bad-input archive, outputs, summary, labels and exit codes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from helpers.cli import results_rows, scan_args, summary_of
from scan_fixtures import build_bad_archive, jpeg_bytes, make_model, noise_image

import audit
from audit.rows import RESULT_COLUMNS
from audit.summary import FORMAT_VERSION

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def good_archive(root: Path, n: int = 3) -> Path:
    for i in range(n):
        folder = root / ("REAL" if i % 2 else "FAKE")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(jpeg_bytes(noise_image(32, 32, seed=i)))
    return root


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory, model_path: Path):
    base = tmp_path_factory.mktemp("bad")
    expected = build_bad_archive(base / "archive")
    result = scan_args(base / "archive", "--model", model_path, "--out", base / "out", "--workers", "0", report=True)
    return result, expected, base / "out"


def test_bad_archive_gives_one_clear_row_per_file_and_exit_3(bad_run) -> None:
    result, expected, out = bad_run
    assert result.exit_code == 3, result.output
    rows = results_rows(out)
    paths = [row["path"].removeprefix("'") for row in rows]
    assert paths == sorted(expected)  # exactly one row each, in sorted order, nothing hidden
    for row, path in zip(rows, paths, strict=True):
        status, fragment = expected[path]
        assert row["status"] == status, (path, row["error"])
        assert fragment in row["error"], (path, row["error"])
        if status == "ok":
            assert row["verdict"] in ("ai-generated", "real") and 0.0 <= float(row["prob_ai"]) <= 1.0
            assert len(row["sha256"]) == 64 and row["error"] == ""
        else:
            assert row["verdict"] == "error" and row["prob_ai"] == ""


def test_bad_archive_rows_keep_what_was_learnt(bad_run) -> None:
    _, _, out = bad_run
    rows = {row["path"]: row for row in results_rows(out)}
    assert rows["'=cmd.jpg"]["format"] == "JPEG"  # neutralised, and scored
    assert rows["new\nline.jpg"]["status"] == "ok" and rows["ünïcødé 画像.jpg"]["status"] == "ok"
    assert rows["animated.gif"]["note"] == "animated: first of 3 frames scored"
    assert (rows["rotated.jpg"]["width"], rows["rotated.jpg"]["height"]) == ("32", "64")
    assert (rows["bomb.png"]["width"], rows["bomb.png"]["height"]) == ("40000", "40000")
    assert rows["png-named.jpg"]["format"] == "PNG"
    assert rows["truncated.jpg"]["sha256"] and rows["truncated.jpg"]["bytes"]
    for row in rows.values():
        assert row["model_id"].startswith("test-model@") and row["threshold"] == "0.500000"
        assert ISO_UTC.match(row["scanned_at"]) and row["true_label"] == ""


def test_bad_archive_summary(bad_run) -> None:
    _, expected, out = bad_run
    summary = summary_of(out)
    errors = sum(1 for status, _ in expected.values() if status == "error")
    assert summary.files == len(expected)
    assert summary.counts["by_status"] == {"ok": len(expected) - errors, "error": errors}
    verdicts = summary.counts["by_verdict"]
    assert verdicts["error"] == errors and verdicts["ai-generated"] + verdicts["real"] == len(expected) - errors
    assert summary.flagged == verdicts["ai-generated"]
    assert summary.exit_code == 3
    assert (summary.format_version, summary.tool.name, summary.tool.version) == (FORMAT_VERSION, "ai-image-audit", audit.__version__)
    assert summary.model.name == "test-model" and len(summary.model.sha256) == 64
    assert summary.model.id == f"test-model@{summary.model.sha256[:12]}"
    assert summary.threshold == 0.5
    assert set(summary.seconds) == {"discover", "store_lookup", "load_and_score", "write", "csv", "xlsx", "store_commit",
                                     "total"}
    assert summary.throughput_files_per_s > 0
    assert ISO_UTC.match(summary.started_at) and ISO_UTC.match(summary.finished_at)
    assert summary.options["workers"] == 0 and summary.options["max_pixels"] == 100_000_000
    assert summary.compute["device"] == "cpu"
    assert summary.labels is None


def test_outputs_are_complete_and_no_temporary_files_remain(bad_run) -> None:
    from openpyxl import load_workbook

    _, expected, out = bad_run
    assert sorted(p.name for p in out.iterdir()) == [
        "heatmaps", "report.html", "report.pdf", "results.csv", "results.xlsx", "summary.json"]
    sheet = load_workbook(out / "results.xlsx")["results"]
    assert sheet.max_row == len(expected) + 1 and sheet.freeze_panes == "A2"
    assert [c.value for c in sheet[1]] == list(RESULT_COLUMNS)


def test_same_archive_same_order(bad_run, model_path: Path, tmp_path: Path) -> None:
    _, _, out = bad_run
    archive = out.parent / "archive"
    again = scan_args(archive, "--model", model_path, "--out", tmp_path, "--workers", "0", "--quiet")
    assert again.exit_code == 3
    first = [(r["path"], r["sha256"], r["prob_ai"]) for r in results_rows(out)]
    second = [(r["path"], r["sha256"], r["prob_ai"]) for r in results_rows(tmp_path)]
    assert first == second


# --------------------------------------------------------------------------- exit codes


def test_clean_run_exits_0(tmp_path: Path, model_path: Path) -> None:
    result = scan_args(good_archive(tmp_path / "a"), "--model", model_path, "--out", tmp_path / "o", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert summary_of(tmp_path / "o").exit_code == 0


@pytest.mark.slow
def test_fail_on_flagged_exits_4_and_wins_over_errors(tmp_path: Path, model_dir: Path) -> None:
    flag_all = make_model(model_dir, name="flag-all", threshold=0.0)
    # prob_ai >= 1.0 would need a saturated softmax, which this random network never gives
    flag_none = make_model(model_dir, name="flag-none", threshold=1.0)
    archive = good_archive(tmp_path / "a")
    common = ["--out", tmp_path / "o", "--workers", "0", "--quiet"]
    assert scan_args(archive, "--model", flag_all, *common).exit_code == 0  # flagged, but not asked to fail
    assert scan_args(archive, "--model", flag_all, "--fail-on-flagged", *common).exit_code == 4
    assert scan_args(archive, "--model", flag_none, "--fail-on-flagged", *common).exit_code == 0
    (archive / "broken.jpg").write_bytes(b"")
    assert scan_args(archive, "--model", flag_none, "--fail-on-flagged", *common).exit_code == 3
    assert scan_args(archive, "--model", flag_all, "--fail-on-flagged", *common).exit_code == 4


def test_missing_model_is_a_usage_error_with_one_clear_line(tmp_path: Path) -> None:
    result = scan_args(good_archive(tmp_path / "a"), "--model", tmp_path / "nope.json", "--out", tmp_path / "o")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert message.startswith(f"audit: error: model weights not found: {tmp_path / 'nope.safetensors'} (shipped models, by name: ")
    assert "\n" not in message and "general-resnet18" in message
    assert not (tmp_path / "o").exists()


def test_missing_default_model_says_how_to_proceed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("audit.model._card.DEFAULT_MODEL_PATH", tmp_path / "weights" / "cifake-resnet18.json")
    result = scan_args(good_archive(tmp_path / "a"), "--out", tmp_path / "o")
    assert result.exit_code == 2
    assert "model weights not found" in result.stderr and "pass --model PATH" in result.stderr


def test_pickle_model_is_refused(tmp_path: Path) -> None:
    torch.save({"weights": torch.zeros(1)}, tmp_path / "model.pt")
    result = scan_args(good_archive(tmp_path / "a"), "--model", tmp_path / "model.pt", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "pickle" in result.stderr and "refused" in result.stderr


@pytest.mark.parametrize(
    "args",
    [["--batch-size", "0"], ["--device", "tpu"], ["--workers", "-1"], ["--labels", "missing.csv"]],
)
def test_bad_options_are_usage_errors(tmp_path: Path, model_path: Path, args: list[str]) -> None:
    result = scan_args(good_archive(tmp_path / "a"), "--model", model_path, "--out", tmp_path / "o", *args)
    assert result.exit_code == 2, result.output


def test_missing_archive_is_a_usage_error(tmp_path: Path, model_path: Path) -> None:
    assert scan_args(tmp_path / "not-there", "--model", model_path).exit_code == 2


# --------------------------------------------------------------------------- options


def test_labels_from_folders_fill_true_label_and_the_summary(tmp_path: Path, model_path: Path) -> None:
    result = scan_args(good_archive(tmp_path / "a", n=4), "--model", model_path, "--out", tmp_path / "o",
                  "--workers", "0", "--labels", "folders")
    assert result.exit_code == 0
    rows = results_rows(tmp_path / "o")
    assert [(r["path"], r["true_label"]) for r in rows] == [
        ("FAKE/0.jpg", "ai-generated"), ("FAKE/2.jpg", "ai-generated"), ("REAL/1.jpg", "real"), ("REAL/3.jpg", "real"),
    ]
    labels = summary_of(tmp_path / "o").labels
    assert labels["files"] == 4 and labels["scored"] == 4
    correct = sum(r["true_label"] == r["verdict"] for r in rows)
    assert labels["correct"] == correct and labels["accuracy"] == correct / 4


def test_labels_from_csv(tmp_path: Path, model_path: Path) -> None:
    archive = good_archive(tmp_path / "a", n=2)
    (tmp_path / "labels.csv").write_text("path,label\nFAKE/0.jpg,real\nREAL/1.jpg,1\n", encoding="utf-8")
    result = scan_args(archive, "--model", model_path, "--out", tmp_path / "o", "--workers", "0",
                  "--labels", tmp_path / "labels.csv")
    assert result.exit_code == 0
    rows = results_rows(tmp_path / "o")
    assert [r["true_label"] for r in rows] == ["real", "ai-generated"]


def test_include_exclude_and_hidden_through_the_cli(tmp_path: Path, model_path: Path) -> None:
    archive = good_archive(tmp_path / "a", n=4)
    (archive / ".hidden").mkdir()
    (archive / ".hidden" / "h.jpg").write_bytes(jpeg_bytes(noise_image(8, 8)))
    out = tmp_path / "o"

    def paths(*args: str) -> list[str]:
        assert scan_args(archive, "--model", model_path, "--out", out, "--workers", "0", "--quiet", *args).exit_code == 0
        return [r["path"] for r in results_rows(out)]

    assert paths() == ["FAKE/0.jpg", "FAKE/2.jpg", "REAL/1.jpg", "REAL/3.jpg"]
    assert paths("--include", "REAL/*") == ["REAL/1.jpg", "REAL/3.jpg"]
    assert paths("--exclude", "REAL", "--exclude", "2.jpg") == ["FAKE/0.jpg"]
    assert paths("--include-hidden", "--include", "*h.jpg") == [".hidden/h.jpg"]


def test_progress_lines_when_not_a_terminal_and_silence_with_quiet(tmp_path: Path, model_path: Path) -> None:
    archive = good_archive(tmp_path / "a")
    loud = scan_args(archive, "--model", model_path, "--out", tmp_path / "o", "--workers", "0")
    assert "audit scan: 3/3 files" in loud.stderr and "3 files:" in loud.stderr
    quiet = scan_args(archive, "--model", model_path, "--out", tmp_path / "o", "--workers", "0", "--quiet")
    assert quiet.stderr == "" and quiet.stdout == ""


def test_default_out_dir_is_reports_run_id(tmp_path: Path, model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = good_archive(tmp_path / "a")
    monkeypatch.chdir(tmp_path)
    assert scan_args(archive, "--model", model_path, "--workers", "0", "--quiet").exit_code == 0
    (run_dir,) = [path for path in (tmp_path / "reports").iterdir() if path.is_dir()]
    # The run store follows the archive (audit.store._store.default_store_path), not the run folders.
    assert sorted(path.name for path in (tmp_path / "reports").iterdir()) == [run_dir.name]
    store = Path(summary_of(run_dir).store.path)
    assert store.is_file() and store.is_relative_to(os.environ["AUDIT_STATE_DIR"])
    assert re.fullmatch(r"\d{8}T\d{6}Z", run_dir.name) and (run_dir / "summary.json").is_file()


def test_empty_archive_is_a_clean_run_with_a_warning(tmp_path: Path, model_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = scan_args(tmp_path / "empty", "--model", model_path, "--out", tmp_path / "o", "--workers", "0")
    assert result.exit_code == 0 and "no image files found" in result.stderr
    assert results_rows(tmp_path / "o") == []
