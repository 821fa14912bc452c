"""The run store on its own: schema versions, the lock, change tracking, retention."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from audit.store import SCHEMA_VERSION, FileUpdate, RunCounts, RunStore, StoreError, StoreLock, StoreLocked, open_locked
from audit.store import _store as store_module


def new_store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "s.sqlite")


def test_a_new_store_is_wal_with_the_current_schema_version(tmp_path: Path) -> None:
    db = new_store(tmp_path)
    try:
        assert db.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.integrity_ok()
    finally:
        db.close()


def test_a_newer_schema_version_is_refused(tmp_path: Path) -> None:
    new_store(tmp_path).close()
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this audit's"):
        new_store(tmp_path)


def test_an_older_version_without_a_migration_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    new_store(tmp_path).close()
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION}, which this audit .* cannot migrate"):
        new_store(tmp_path)


def test_an_older_version_is_migrated_in_one_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The migration path, exercised with a migration registered for a next schema version."""
    first = new_store(tmp_path)
    first.start_run("2026-01-01T00:00:00Z", {}, tmp_path / "r", True)
    first.close()

    def add_column(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE runs ADD COLUMN host TEXT NOT NULL DEFAULT ''")

    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_module.MIGRATIONS, SCHEMA_VERSION, add_column)
    migrated = new_store(tmp_path)
    try:
        assert migrated.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert [tuple(row) for row in migrated.db.execute("SELECT host FROM runs")] == [("",)]  # the old record kept
    finally:
        migrated.close()


def test_a_foreign_sqlite_file_and_a_non_database_are_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        db.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(StoreError, match="not an audit run store"):
        new_store(tmp_path)
    (tmp_path / "t.sqlite").write_bytes(b"this is not a database, just text " * 100)
    with pytest.raises(StoreError, match="not an audit run store"):
        RunStore(tmp_path / "t.sqlite")


def test_the_lock_refuses_a_second_holder_and_names_the_first(tmp_path: Path) -> None:
    first = StoreLock(tmp_path / "s.sqlite")
    first.acquire()
    try:
        with pytest.raises(StoreLocked, match=r"in use by another run \(pid \d+ on .* since "):
            StoreLock(tmp_path / "s.sqlite").acquire()  # a second holder, even in the same process
    finally:
        first.release()
    again = StoreLock(tmp_path / "s.sqlite")
    again.acquire()
    again.release()


@pytest.mark.subprocess
def test_a_lock_left_by_a_dead_process_is_stale(tmp_path: Path) -> None:
    """A process that took the lock and died (without releasing) does not block the next run."""
    code = ("import sys, os; sys.path.insert(0, sys.argv[2]); from audit.store._store import StoreLock; "
            "StoreLock(__import__('pathlib').Path(sys.argv[1])).acquire(); os._exit(9)")
    died = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.sqlite"), str(Path(__file__).parents[1])])
    assert died.returncode == 9
    left = (tmp_path / "s.sqlite.lock").read_text().strip()
    assert left.startswith("pid")  # its note is still there
    store, lock = open_locked(tmp_path / "s.sqlite")
    store.close()
    # The next run takes the store over and says whose lock it was.
    assert lock.takeover is not None and lock.takeover.holder == left and not lock.takeover.holder_alive
    assert "ended without releasing it" in lock.takeover.message(lock.path)
    lock.release()
    assert (tmp_path / "s.sqlite.lock").read_text() == ""  # released in order: nothing to take over
    again = StoreLock(tmp_path / "s.sqlite")
    again.acquire()
    assert again.takeover is None
    again.release()


def test_changes_since_the_last_completed_run_are_recorded(tmp_path: Path) -> None:
    db = new_store(tmp_path)
    try:
        def run(files: list[FileUpdate]) -> int:
            baseline = db.baseline_run()
            run_id = db.start_run("t", {}, tmp_path / "r", True)
            db.commit_batch(run_id, [], files)
            changes = db.record_changes(run_id, ["root"], baseline)
            db.forget_unseen(run_id, ["root"])
            db.finish_run(run_id, RunCounts(len(files), len(files), 0, 0, 0), 0, partial=False)
            return changes

        a, b, c = (FileUpdate("root", name, 1, 1.0, name * 8, "real") for name in "abc")
        first = run([a, b, c])
        assert (first.new, first.changed, first.deleted, first.baseline_run) == (3, 0, 0, None)
        b2 = FileUpdate("root", "b", 2, 2.0, "other", "ai-generated")
        second = run([a, b2])  # b changed and now flagged, c deleted
        assert (second.new, second.changed, second.deleted, second.newly_flagged) == (0, 1, 1, 1)
        assert [item["path"] for item in second.listed["newly_flagged"]] == ["b"]
        third = run([a, b2])  # still flagged: not newly
        assert (third.new, third.changed, third.deleted, third.newly_flagged) == (0, 0, 0, 0)
    finally:
        db.close()


def test_prune_removes_only_folders_its_runs_created(tmp_path: Path) -> None:
    db = new_store(tmp_path)
    try:
        made, existing, newest = tmp_path / "made", tmp_path / "existing", tmp_path / "newest"
        for folder, created in ((made, True), (existing, False), (newest, True)):
            folder.mkdir()
            run_id = db.start_run("t", {}, folder, created)
            db.finish_run(run_id, None, 0, partial=False)
        removed = db.prune(keep=1)
        assert [run.out_dir for run, _ in removed] == [str(made.resolve()), str(existing.resolve())]
        assert not made.exists() and existing.exists() and newest.exists()
        assert [run.out_dir for run in db.runs()] == [str(newest.resolve())]
    finally:
        db.close()
