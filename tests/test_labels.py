"""Ground truth from REAL/FAKE folders or from a path,label CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.intake import FileRecord
from audit.pipeline import Labeller, LabelsError


def record(root: Path, rel: str) -> FileRecord:
    return FileRecord(root=str(root), rel_path=rel, abs_path=str(root / rel))


def test_folder_labels_nearest_folder_any_case(tmp_path: Path) -> None:
    labeller = Labeller("folders")
    assert labeller.label_for(record(tmp_path, "REAL/a.jpg")) == "real"
    assert labeller.label_for(record(tmp_path, "x/fake/y/b.jpg")) == "ai-generated"
    assert labeller.label_for(record(tmp_path, "Fake/Real/c.jpg")) == "real"
    assert labeller.label_for(record(tmp_path, "other/d.jpg")) == ""
    assert labeller.label_for(record(tmp_path, "real.jpg")) == ""  # a file name is not a folder
    assert labeller.label_for(record(tmp_path / "FAKE", "e.jpg")) == "ai-generated"  # the root's own name


def test_no_labels_means_empty(tmp_path: Path) -> None:
    assert Labeller(None).label_for(record(tmp_path, "REAL/a.jpg")) == ""


def test_csv_labels_by_relative_or_absolute_path(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "path,label\n"
        f"a.jpg,real\nsub/b.jpg,FAKE\n{tmp_path / 'c.jpg'},1\nd.jpg,0\nmissing.jpg,ai-generated\n",
        encoding="utf-8",
    )
    labeller = Labeller(str(labels))
    got = [labeller.label_for(record(tmp_path, name)) for name in ("a.jpg", "sub/b.jpg", "c.jpg", "d.jpg", "e.jpg")]
    assert got == ["real", "ai-generated", "ai-generated", "real", ""]
    assert labeller.unmatched == 1


def test_csv_with_unknown_label_is_a_usage_error(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("a.jpg,real\nb.jpg,maybe\n", encoding="utf-8")
    with pytest.raises(LabelsError, match=r"labels.csv:2: unknown label 'maybe'"):
        Labeller(str(labels))


def test_missing_csv_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="cannot read labels file"):
        Labeller(str(tmp_path / "nope.csv"))
