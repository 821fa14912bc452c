"""The discover stage: deterministic, filterable, and safe on loops and unreadable folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from scan_fixtures import jpeg_bytes, noise_image, png_bytes, running_as_root

import audit.intake._discover as discover_module
from audit.intake import DiscoverOptions, discover, matches_any, sniff_format

JPEG = jpeg_bytes(noise_image(8, 8))


def make_tree(root: Path, names: list[str], data: bytes = JPEG) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def rel_paths(*roots: Path, **options) -> list[str]:
    return [r.rel_path for r in discover(roots, DiscoverOptions(**options))]


def test_order_is_sorted_and_does_not_depend_on_creation_order(tmp_path: Path) -> None:
    names = ["b/2.jpg", "a.jpg", "b/10.jpg", "B.PNG", "a/z.jpg", "c.Jpeg"]
    make_tree(tmp_path / "one", names)
    make_tree(tmp_path / "two", list(reversed(names)))
    expected = ["B.PNG", "a/z.jpg", "a.jpg", "b/10.jpg", "b/2.jpg", "c.Jpeg"]
    assert rel_paths(tmp_path / "one") == expected
    assert rel_paths(tmp_path / "two") == expected


def test_extensions_are_case_insensitive_and_others_need_image_content(tmp_path: Path) -> None:
    make_tree(tmp_path, ["x.JPG", "x.TiFf", "x.webp", "x.bmp", "x.gif"])
    (tmp_path / "renamed.dat").write_bytes(png_bytes(noise_image(4, 4)))
    (tmp_path / "NOEXT").write_bytes(JPEG)
    (tmp_path / "notes.txt").write_text("BM no bitmap here")
    (tmp_path / "data.bin").write_bytes(b"\x00" * 100)
    assert rel_paths(tmp_path) == ["NOEXT", "renamed.dat", "x.JPG", "x.TiFf", "x.bmp", "x.gif", "x.webp"]


def test_records_carry_root_absolute_path_size_and_mtime(tmp_path: Path) -> None:
    make_tree(tmp_path, ["d/a.jpg"])
    (record,) = discover([tmp_path])
    assert record.root == str(tmp_path)
    assert record.abs_path == str(tmp_path / "d" / "a.jpg")
    assert record.size == len(JPEG) and record.mtime == (tmp_path / "d" / "a.jpg").stat().st_mtime
    assert record.error is None


def test_hidden_files_and_folders_are_skipped_unless_asked(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a.jpg", ".b.jpg", ".cache/c.jpg", "d/.e.jpg"])
    assert rel_paths(tmp_path) == ["a.jpg"]
    assert rel_paths(tmp_path, include_hidden=True) == [".b.jpg", ".cache/c.jpg", "a.jpg", "d/.e.jpg"]


def test_include_and_exclude_globs(tmp_path: Path) -> None:
    make_tree(tmp_path, ["a.jpg", "b.png", "keep/c.jpg", "skip/d.jpg", "x/skip/e.jpg"])
    assert rel_paths(tmp_path, include=("*.jpg",)) == ["a.jpg", "keep/c.jpg", "skip/d.jpg", "x/skip/e.jpg"]
    assert rel_paths(tmp_path, exclude=("skip",)) == ["a.jpg", "b.png", "keep/c.jpg"]
    assert rel_paths(tmp_path, exclude=("skip/*",)) == ["a.jpg", "b.png", "keep/c.jpg", "x/skip/e.jpg"]
    assert rel_paths(tmp_path, include=("keep/*", "*.png")) == ["b.png", "keep/c.jpg"]


def test_glob_matching_rules() -> None:
    assert matches_any("a/b/c.jpg", ["*.jpg"])  # no '/': the name at any depth
    assert matches_any("a/b/c.jpg", ["a/*"])  # with '/': the whole path, '*' crosses '/'
    assert not matches_any("a/b/c.jpg", ["b/*"])
    assert not matches_any("a/b/C.JPG", ["*.jpg"])  # case-sensitive


def test_symlink_loop_is_an_error_row_not_endless(tmp_path: Path) -> None:
    make_tree(tmp_path, ["sub/a.jpg"])
    os.symlink("..", tmp_path / "sub" / "up")
    os.symlink("self.jpg", tmp_path / "self.jpg")
    records = list(discover([tmp_path]))
    by_path = {r.rel_path: r for r in records}
    assert [r.rel_path for r in records] == ["self.jpg", "sub/a.jpg", "sub/up"]
    assert by_path["sub/up"].error.startswith("symlink loop: points back to an enclosing folder")
    assert by_path["self.jpg"].error.startswith("symlink loop")


def test_symlinked_files_and_folders_are_followed(tmp_path: Path) -> None:
    make_tree(tmp_path / "elsewhere", ["x.jpg"])
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "root" / "linked-folder")
    os.symlink(tmp_path / "elsewhere" / "x.jpg", tmp_path / "root" / "linked.jpg")
    os.symlink(tmp_path / "missing.jpg", tmp_path / "root" / "broken.jpg")
    records = {r.rel_path: r for r in discover([tmp_path / "root"])}
    assert records["linked-folder/x.jpg"].error is None and records["linked.jpg"].size == len(JPEG)
    assert records["broken.jpg"].error.startswith("broken symlink")


def test_unreadable_folder_is_an_error_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root can read a chmod 000 folder, so under root the failure is simulated at scandir."""
    make_tree(tmp_path, ["a.jpg", "locked/b.jpg", "z.jpg"])
    locked = tmp_path / "locked"
    if running_as_root():
        real_scandir = os.scandir

        def scandir(path):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(discover_module.os, "scandir", scandir)
    else:
        locked.chmod(0)
    try:
        records = list(discover([tmp_path]))
    finally:
        locked.chmod(0o755)
    assert [(r.rel_path, r.error) for r in records] == [
        ("a.jpg", None),
        ("locked", "cannot read folder: Permission denied"),
        ("z.jpg", None),
    ]


def test_several_roots_keep_their_order_and_a_repeated_root_is_walked_once(tmp_path: Path) -> None:
    make_tree(tmp_path / "b", ["1.jpg"])
    make_tree(tmp_path / "a", ["2.jpg"])
    records = list(discover([tmp_path / "b", tmp_path / "a", tmp_path / "b"]))
    assert [(Path(r.root).name, r.rel_path) for r in records] == [("b", "1.jpg"), ("a", "2.jpg")]


def test_a_single_file_can_be_a_root(tmp_path: Path) -> None:
    make_tree(tmp_path, ["one.jpg"])
    (record,) = discover([tmp_path / "one.jpg"])
    assert (record.root, record.rel_path) == (str(tmp_path), "one.jpg")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0", "JPEG"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"GIF89a", "GIF"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"BM" + bytes(12) + (40).to_bytes(4, "little"), "BMP"),
        (b"BMW service notes, 2024.......", None),
        (b"hello", None),
        (b"", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


def test_overlapping_roots_list_each_file_once(tmp_path: Path) -> None:
    make_tree(tmp_path / "photos", ["a.jpg", "2024/b.jpg", "2024/c.jpg"])
    inner, outer = tmp_path / "photos" / "2024", tmp_path / "photos"
    records = list(discover([inner, outer, inner / "b.jpg"]))
    assert [(Path(r.root).name, r.rel_path) for r in records] == [("2024", "b.jpg"), ("2024", "c.jpg"), ("photos", "a.jpg")]
    # Hard links are separate files and keep their rows.
    os.link(outer / "a.jpg", outer / "a-link.jpg")
    assert sorted(r.rel_path for r in discover([outer, inner])) == ["2024/b.jpg", "2024/c.jpg", "a-link.jpg", "a.jpg"]
