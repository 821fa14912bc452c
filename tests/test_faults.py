"""Faults a nightly job meets sooner or later: a full disk at each write, a damaged run store, a
read-only output folder, an archive root whose disk is not mounted. Each ends the run with a
clear one-line message and its own exit code, loses nothing already recorded, and the next run
goes on from there."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import sqlite3
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from scan_fixtures import jpeg_bytes, make_model, noise_image

from audit.cli import main
from audit.errors import EXIT_DISK_FULL, EXIT_ROOT_MISSING, EXIT_STORE_DAMAGED, EXIT_USAGE


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model"), name="faults-model", threshold=0.5)


def write_images(folder: Path, count: int, seed: int = 0, prefix: str = "img") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (folder / f"{prefix}{index:02d}.jpg").write_bytes(jpeg_bytes(noise_image(32, 32, seed=seed + index)))


def scan(archives: list[Path], model: Path, out: Path, store: Path, *extra: str):
    args = ["scan", *map(str, archives), "--model", str(model), "--out", str(out), "--store", str(store),
            "--workers", "0", "--batch-size", "2", "--quiet", *(() if "--report" in extra else ("--no-report",)),
            *(e for e in extra if e != "--report")]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with its sha256."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def stored_scores(store: Path) -> int:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM scores").fetchone()[0]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("audit: error:")]


def enospc(name: str = "") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), name)


# --------------------------------------------------------------------------- a full disk


def fail_csv_row(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
    """The disk fills while results.csv is written: its 9th row cannot be written."""
    from audit.pipeline._outputs import ResultWriter

    original, calls = ResultWriter.write, []

    def write(self, row) -> None:
        calls.append(row)
        if len(calls) == 9:
            raise enospc()
        original(self, row)

    monkeypatch.setattr(ResultWriter, "write", write)


def fail_xlsx(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
    """The disk fills half-way through results.xlsx (part of it is on disk under its temporary name)."""
    import audit.pipeline._outputs as outputs

    def write_xlsx(csv_path: Path, xlsx_path: Path, max_sheet_rows: int = 0) -> dict:
        xlsx_path.write_bytes(b"PK\x03\x04 half a workbook")
        raise enospc(str(xlsx_path))

    monkeypatch.setattr(outputs, "write_xlsx_from_csv", write_xlsx)


def fail_summary(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
    """summary.json (the completion marker) cannot be written: half of it reaches the disk."""
    original = Path.write_text

    def write_text(self: Path, text: str, *args, **kwargs) -> int:
        if self.name == "summary.json.tmp":
            original(self, text[: len(text) // 2], *args, **kwargs)
            raise enospc(str(self))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def fail_store_commit(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
    """The store's disk fills in the third batch's transaction: SQLite says "database or disk is
    full" (SQLITE_FULL) half-way through it, and rolls it back."""
    from audit.store import RunStore

    original, calls = RunStore._record_file, []

    def record_file(db, run_id, update) -> None:
        calls.append(update)
        if len(calls) == 5:
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error
        original(db, run_id, update)

    monkeypatch.setattr(RunStore, "_record_file", staticmethod(record_file))


FAULTS = {"results.csv": fail_csv_row, "results.xlsx": fail_xlsx, "summary.json": fail_summary,
          "the run store": fail_store_commit}


@pytest.mark.parametrize("where", list(FAULTS))
def test_a_full_disk_stops_the_run_replaces_nothing_and_the_next_run_resumes(
        tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    archive, store, out = tmp_path / "archive", tmp_path / "store.sqlite", tmp_path / "out"
    write_images(archive, 4)
    assert scan([archive], model, out, store).exit_code == 0
    last_night = fingerprint(out)
    write_images(archive, 8, seed=100, prefix="new")  # tonight: 8 new files to score, in 4 batches
    scores_before = stored_scores(store)

    with monkeypatch.context() as patch:
        FAULTS[where](patch, out)
        result = scan([archive], model, out, store)  # the same --out: last night's files are there
    assert result.exit_code == EXIT_DISK_FULL, result.output
    (line,) = error_lines(result.output)
    assert line.startswith(f"audit: error: no space left on device while writing {where} in ")
    assert "nothing was replaced" in line and "the next run resumes" in line
    assert "Traceback" not in result.output
    assert fingerprint(out) == last_night, "last night's outputs untouched, no partial file left"
    assert not list(tmp_path.rglob("*.tmp"))
    committed = stored_scores(store) - scores_before
    assert committed >= 2, "the batches committed before the fault stay in the store"
    with sqlite3.connect(store) as db:
        partial, note = db.execute("SELECT partial, note FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    assert partial == 1 and "DiskFull" in note

    resumed = scan([archive], model, out, store, "--fail-on-flagged")
    assert resumed.exit_code in (0, 4), resumed.output
    import json

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["files"] == 12
    assert summary["files_scored"] == 8 - committed, "the committed batches were reused, not scored again"


def test_a_full_disk_while_writing_the_report_leaves_complete_results_and_no_half_report(
        tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.report._render as render

    archive, store, out = tmp_path / "archive", tmp_path / "store.sqlite", tmp_path / "out"
    write_images(archive, 4)
    original = render.write_text

    def write_text(path, text: str) -> None:
        if Path(path).name == "report.html":
            Path(str(path) + ".tmp").write_text(text[:100], encoding="utf-8")
            raise enospc(str(path) + ".tmp")
        original(path, text)

    monkeypatch.setattr(render, "write_text", write_text)
    result = scan([archive], model, out, store, "--report")
    assert result.exit_code == EXIT_DISK_FULL, result.output
    (line,) = error_lines(result.output)
    assert line.startswith("audit: error: no space left on device while writing the report in ")
    assert "results.csv, results.xlsx and summary.json are complete" in line and f"audit report {out}" in line
    names = {path.name for path in out.iterdir()}
    assert {"results.csv", "results.xlsx", "summary.json"} <= names
    assert not names & {"report.html", "report.pdf", "heatmaps", "report.html.tmp"}


# --------------------------------------------------------------------------- a damaged store


def damaged_store(tmp_path: Path, model: Path, how: str) -> tuple[Path, Path]:
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, 12)
    assert scan([archive], model, tmp_path / "night1", store).exit_code == 0
    assert not Path(str(store) + "-wal").exists(), "a clean close leaves no WAL"
    size = store.stat().st_size
    if how == "truncated":
        with open(store, "r+b") as handle:
            handle.truncate(size // 2)
    else:  # 4 KB of other bytes over the page that holds the files table's root
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro&immutable=1", uri=True)) as db:
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            root_page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'files'").fetchone()[0]
        assert not Path(str(store) + "-wal").exists()
        with open(store, "r+b") as handle:
            handle.seek((root_page - 1) * page_size)
            handle.write(bytes(range(256)) * (page_size // 256))
    return archive, store


@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_a_damaged_store_is_refused_and_not_written_to(tmp_path: Path, model: Path, how: str) -> None:
    archive, store = damaged_store(tmp_path, model, how)
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    siblings = sorted(path.name for path in tmp_path.iterdir())

    result = scan([archive], model, tmp_path / "night2", store)
    assert result.exit_code == EXIT_STORE_DAMAGED, result.output
    (line,) = error_lines(result.output)
    assert f"the run store {store} is damaged: SQLite finds" in line and "nothing was written to it" in line
    assert "audit store check" in line and "Traceback" not in result.output
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before, "not a byte of the store changed"
    after = sorted(path.name for path in tmp_path.iterdir())
    assert [name for name in after if name not in siblings] in ([], ["night2"]), "no -wal, -shm or journal made"
    assert not (tmp_path / "night2" / "summary.json").exists()

    checked = CliRunner().invoke(main, ["store", "check", "--store", str(store)])
    assert checked.exit_code == EXIT_STORE_DAMAGED, checked.output
    assert f"{store}: damaged; SQLite integrity_check finds:" in checked.output
    assert hashlib.sha256(store.read_bytes()).hexdigest() == before

    aside = CliRunner().invoke(main, ["store", "check", "--store", str(store), "--set-aside"])
    assert aside.exit_code == 0, aside.output
    (kept,) = tmp_path.glob("store.sqlite.damaged-*")
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == before, "the damaged store is kept for inspection"
    assert f"moved to {kept}" in aside.output and not store.exists()
    again = scan([archive], model, tmp_path / "night3", store)
    assert again.exit_code == 0, again.output  # a new store: every file scored again


def test_store_check_on_a_sound_store(tmp_path: Path, model: Path) -> None:
    archive, store = tmp_path / "archive", tmp_path / "store.sqlite"
    write_images(archive, 3)
    assert scan([archive], model, tmp_path / "night1", store).exit_code == 0
    before = hashlib.sha256(store.read_bytes()).hexdigest()
    checked = CliRunner().invoke(main, ["store", "check", "--store", str(store), "--set-aside"])
    assert checked.exit_code == 0 and f"{store}: sound (SQLite integrity_check: ok)" in checked.output
    assert store.exists() and hashlib.sha256(store.read_bytes()).hexdigest() == before
    by_archive = CliRunner().invoke(main, ["store", "check", str(archive)])
    assert by_archive.exit_code == EXIT_USAGE and "no run store at" in by_archive.output  # not the default store


# --------------------------------------------------------------------------- a read-only --out


def test_a_read_only_out_folder_is_a_usage_error_before_any_scoring(tmp_path: Path, model: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import audit.pipeline._run as run

    archive, store, out = tmp_path / "archive", tmp_path / "store.sqlite", tmp_path / "read-only"
    write_images(archive, 3)
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permission bits: the folder refuses as a read-only mount would
        original = tempfile.mkstemp

        def mkstemp(*args, **kwargs):
            if Path(kwargs.get("dir") or "").resolve() == out.resolve():
                raise PermissionError(errno.EROFS, os.strerror(errno.EROFS))
            return original(*args, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    def no_scoring(*args, **kwargs):
        raise AssertionError("an engine was started for a run that cannot write its results")

    monkeypatch.setattr(run, "create_engine", no_scoring)
    try:
        result = scan([archive], model, out, store)
    finally:
        out.chmod(0o755)
    assert result.exit_code == EXIT_USAGE, result.output
    (line,) = error_lines(result.output)
    assert line.startswith(f"audit: error: cannot write to the output folder {out} (") and "pass a writable --out" in line
    assert list(out.iterdir()) == [] and not store.exists()


# --------------------------------------------------------------------------- an archive root gone


@pytest.mark.parametrize("how", ["gone", "empty"])
def test_a_missing_root_stops_the_run_and_forgets_nothing(tmp_path: Path, model: Path, how: str) -> None:
    import json

    first, second, store = tmp_path / "A", tmp_path / "B", tmp_path / "store.sqlite"
    write_images(first, 3)
    write_images(second, 4, seed=50)
    assert scan([first, second], model, tmp_path / "night1", store).exit_code == 0
    with sqlite3.connect(store) as db:
        runs_before = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    store_files = lambda: sqlite3.connect(store).execute("SELECT count(*) FROM files").fetchone()[0]  # noqa: E731
    assert store_files() == 7

    second.rename(tmp_path / "B.unmounted")
    if how == "empty":
        second.mkdir()  # the mount point of a disk not mounted
    result = scan([first, second], model, tmp_path / "night2", store)
    assert result.exit_code == EXIT_ROOT_MISSING, result.output
    (line,) = error_lines(result.output)
    assert line.startswith(f"audit: error: root missing: {second} ")
    assert ("does not exist" if how == "gone" else "holds no image file") in line
    assert "the run store knows 4 file(s) under it" in line and "Is its disk mounted?" in line
    assert not (tmp_path / "night2" / "summary.json").exists()
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == runs_before, "no run recorded"
    assert store_files() == 7, "no file forgotten"

    if how == "empty":  # the files were removed on purpose: said so, they are deleted
        allowed = scan([first, second], model, tmp_path / "night3", store, "--allow-empty-root")
        assert allowed.exit_code == 0, allowed.output
        summary = json.loads((tmp_path / "night3" / "summary.json").read_text(encoding="utf-8"))
        assert summary["files"] == 3 and store_files() == 3, "B's files are taken as deleted"
    else:  # mounted again: the night goes on as if nothing happened
        (tmp_path / "B.unmounted").rename(second)
        assert scan([first, second], model, tmp_path / "night3", store).exit_code == 0


def test_a_root_that_never_existed_is_a_usage_error(tmp_path: Path, model: Path) -> None:
    result = scan([tmp_path / "no-such-folder"], model, tmp_path / "out", tmp_path / "state" / "store.sqlite")
    assert result.exit_code == EXIT_USAGE
    assert error_lines(result.output) == [f"audit: error: no such archive: {tmp_path / 'no-such-folder'}"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "state").exists(), "nothing made"
