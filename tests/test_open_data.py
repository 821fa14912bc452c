"""`python -m training data rebuild`: files taken from a git repository at a commit, checked, copied the same way.

A small local repository made here stands in for GitHub: the clone mode gets it through --remote
(a file:// URL template, no network), the snapshot mode as a bare clone laid out as `fetch` lays
out /work/.mirror (OWNER+NAME/repo).
"""

from __future__ import annotations

import csv
import hashlib
import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.__main__ import main as training_cli
from training.open_data import MAX_QUALITY, MAX_SIDE, MIN_QUALITY, MIN_SIDE, draws, training_copy

COLUMNS = ["split", "label", "generator", "family", "year", "use", "file", "source_repo", "commit", "source_path",
           "orig_format", "orig_width", "orig_height", "orig_bytes", "sha256", "copy_sha256", "copy_width",
           "copy_height", "jpeg_quality", "licence", "note"]


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin:/usr/local/bin"}).stdout.strip()


def _image(kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    if kind == "png_rgba":  # large, with alpha: downscaled, composited on white
        pixels = rng.integers(0, 255, size=(70, 90, 4), dtype=np.uint8)
        Image.fromarray(pixels, "RGBA").resize((900, 700), Image.Resampling.NEAREST).save(buffer, format="PNG")
    elif kind == "jpeg_exif":  # a camera-like JPEG with EXIF orientation 6 (rotate 90)
        pixels = np.asarray(Image.fromarray(rng.integers(0, 255, size=(60, 80, 3), dtype=np.uint8)).resize((800, 600)))
        exif = Image.Exif()
        exif[0x0112] = 6
        exif[0x010F] = "TestCam"
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=92, exif=exif.tobytes())
    else:  # small: never upscaled
        pixels = rng.integers(0, 255, size=(150, 180, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A repository owner/name with three images; the manifest points at its first commit (made once a module)."""
    tmp_path = tmp_path_factory.mktemp("source")
    work = tmp_path / "remote" / "owner" / "name"
    work.mkdir(parents=True)
    _git("init", "-q", "-b", "main", cwd=work)
    files = {"samples/a.png": _image("png_rgba", 1), "photos/b.jpg": _image("jpeg_exif", 2), "c.png": _image("small", 3)}
    for path, data in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(data)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "images", cwd=work)
    commit = _git("rev-parse", "HEAD", cwd=work)
    # a later commit changes a file: rebuild must take the manifest's commit, not the newest
    (work / "samples/a.png").write_bytes(_image("png_rgba", 99))
    _git("commit", "-q", "-am", "change", cwd=work)
    rows = []
    for index, (path, data) in enumerate(sorted(files.items())):
        sha = hashlib.sha256(data).hexdigest()
        copy, width, height, quality = training_copy(data, sha)
        label = "FAKE" if path.endswith(".png") else "REAL"
        rows.append({"split": "train", "label": label, "generator": "test", "family": "test", "year": "", "use": "train",
                     "file": f"train/{label}/og_test_{sha[:12]}.jpg", "source_repo": "owner/name", "commit": commit,
                     "source_path": path, "orig_format": "", "orig_width": "", "orig_height": "", "orig_bytes": len(data),
                     "sha256": sha, "copy_sha256": hashlib.sha256(copy).hexdigest(), "copy_width": width,
                     "copy_height": height, "jpeg_quality": quality, "licence": "MIT", "note": ""})
    manifest = tmp_path / "MANIFEST.tsv"
    _write_manifest(manifest, rows)
    return {"work": work, "remote": tmp_path / "remote", "manifest": manifest, "rows": rows, "files": files, "commit": commit}


def _write_manifest(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def test_rebuild_by_clone_takes_each_file_at_its_commit(source: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = training_cli(["data", "rebuild", str(source["manifest"]), str(out), "--remote", f"file://{source['remote']}/{{repo}}"])
    assert code == 0
    for row in source["rows"]:
        original = out / "originals" / "owner/name" / row["source_path"]
        assert original.read_bytes() == source["files"][row["source_path"]]  # the commit's bytes, not the newer ones
        copy = (out / "copy" / row["file"]).read_bytes()
        assert hashlib.sha256(copy).hexdigest() == row["copy_sha256"]


def test_training_copy_is_deterministic_and_gives_every_image_the_same_delivery(source: dict) -> None:
    for path, data in source["files"].items():
        first, width, height, quality = training_copy(data)
        second = training_copy(data)[0]
        assert first == second
        side, drawn_quality = draws(hashlib.sha256(data).hexdigest())
        assert quality == drawn_quality and MIN_QUALITY <= quality <= MAX_QUALITY and MIN_SIDE <= side <= MAX_SIDE
        with Image.open(io.BytesIO(first)) as copy:
            assert copy.format == "JPEG" and copy.mode == "RGB" and copy.size == (width, height)
            assert not copy.getexif() and "exif" not in copy.info and "icc_profile" not in copy.info
            with Image.open(io.BytesIO(data)) as original:
                longer = max(original.size)
            assert max(copy.size) == min(side, longer)  # never upscaled
            if path == "photos/b.jpg":  # EXIF orientation 6 applied: 800x600 stored, portrait shown
                assert copy.size[1] > copy.size[0]
            if path == "samples/a.png":
                assert MIN_SIDE <= max(copy.size) <= MAX_SIDE
            if path == "c.png":
                assert copy.size == (180, 150)
    # the draws differ from file to file
    assert len({draws(hashlib.sha256(bytes([i])).hexdigest()) for i in range(20)}) > 10


def test_a_wrong_sha256_is_refused_and_nothing_is_written(source: dict, tmp_path: Path) -> None:
    rows = [dict(row) for row in source["rows"]]
    rows[0]["sha256"] = "0" * 64
    manifest = tmp_path / "bad.tsv"
    _write_manifest(manifest, rows)
    out = tmp_path / "out"
    code = training_cli(["data", "rebuild", str(manifest), str(out), "--remote", f"file://{source['remote']}/{{repo}}"])
    assert code != 0
    assert not (out / "originals" / "owner/name" / rows[0]["source_path"]).exists()
    assert not (out / "copy" / rows[0]["file"]).exists()
    assert (out / "copy" / rows[1]["file"]).exists()  # the others still come


def test_a_missing_file_exits_non_zero(source: dict, tmp_path: Path) -> None:
    rows = [dict(row) for row in source["rows"]]
    rows[0]["source_path"] = "no/such.png"
    manifest = tmp_path / "missing.tsv"
    _write_manifest(manifest, rows)
    code = training_cli(["data", "rebuild", str(manifest), str(tmp_path / "out"), "--remote", f"file://{source['remote']}/{{repo}}"])
    assert code != 0


def test_rebuild_from_a_folder_of_snapshots_laid_out_as_fetch_does(source: dict, tmp_path: Path, capsys) -> None:
    snapshots = tmp_path / "mirror"
    (snapshots / "owner+name").mkdir(parents=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(source["work"]), str(snapshots / "owner+name" / "repo")], check=True)
    out = tmp_path / "out"
    code = training_cli(["data", "rebuild", str(source["manifest"]), str(out), "--snapshots", str(snapshots), "--copy-only"])
    assert code == 0
    assert not (out / "originals").exists()
    for row in source["rows"]:
        copy = (out / "copy" / row["file"]).read_bytes()
        assert hashlib.sha256(copy).hexdigest() == row["copy_sha256"]
    assert "3 verified" in capsys.readouterr().out
    # --originals-only writes the originals alone
    code = training_cli(["data", "rebuild", str(source["manifest"]), str(tmp_path / "out2"), "--snapshots", str(snapshots), "--originals-only"])
    assert code == 0 and (tmp_path / "out2" / "originals").exists() and not (tmp_path / "out2" / "copy").exists()
    # a repository without a snapshot: reported, non-zero
    code = training_cli(["data", "rebuild", str(source["manifest"]), str(tmp_path / "out3"), "--snapshots", str(tmp_path / "empty")])
    assert code != 0
