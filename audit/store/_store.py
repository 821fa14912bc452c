"""The run store: one SQLite file (standard library sqlite3, WAL mode) that makes nightly scans
incremental, resumable and recorded.

* ``files``: what the last runs saw at each (root, path): size, mtime, sha256, and the run ids
  that say when the file was first seen, last changed, last seen and last became flagged.
* ``scores``: one result per (sha256, scoring key): every ResultRow column that comes from the
  file's bytes and the model, so a file whose bytes were already judged is re-emitted without
  decoding. The scoring key is the model id plus whatever else changes a result (calibration
  temperature, threshold, evidence on/off, trust anchors, --max-pixels, draft decoding).
* ``runs``: one row per run: start, end, options, counts, exit status, partial flag, out dir.
* ``decisions``: reviewers' decisions by sha256, appended and never updated (audit.store._decisions).
* ``run_changes``: every file each run found new, changed, deleted or newly flagged.
* the report's caches (audit.store._report_cache).

Scored results are committed one transaction per scored batch, so a run killed with SIGKILL
loses at most the batch in flight: the next run finds the committed ones and reuses them.

Concurrency: a run holds the store's lock (audit.store._lock) for its whole length; a second run
leaves at once, and a run that finds the lock left by a killed one takes the store over.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from audit.store._check import refuse_if_damaged
from audit.store._lock import StoreError, StoreLock, StoreLocked, utc_text  # noqa: F401 - StoreLocked: the store's interface
from audit.store._records import MAX_LISTED_CHANGES, Changes, FileUpdate, RunCounts, RunRecord, StoredScore
from audit.store._schema import (  # noqa: F401 - STORE_FILE_NAME: the location reads it
    _SCHEMA,
    MIGRATIONS,
    SCHEMA_VERSION,
    STORE_FILE_NAME,
    immediate_transaction,
    run_statements,
)
from audit.verdicts import VERDICT_AI

if TYPE_CHECKING:
    from audit.store._report_cache import ReportCache

# --------------------------------------------------------------------------- the store


@functools.lru_cache(maxsize=256)
def _resolved_root(root: str) -> str:
    return os.path.realpath(root)


class RunStore:
    """An open run store. Not shared between threads or processes (the lock sees to processes)."""

    @staticmethod
    def root_key(root: str) -> str:
        """The run store knows a root by its resolved absolute path, so `photos`, `./photos/` and
        `/srv/photos` (or a symlink to it) are one archive whatever the working directory of the
        night's job; results.csv keeps the root as it was typed."""
        return _resolved_root(root)

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are explicit (BEGIN ... COMMIT in _transaction).
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        try:
            self._prepare()
        except BaseException:
            self.db.close()
            raise

    # schema ------------------------------------------------------------------------------

    def _prepare(self) -> None:
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not an audit run store ({exc})") from None
        if version == 0 and tables - {"sqlite_sequence"}:
            raise StoreError(f"{self.path} is an SQLite file but not an audit run store (it has tables "
                             f"{', '.join(sorted(tables))}); pass another --store")
        if version > SCHEMA_VERSION:
            raise StoreError(f"the run store {self.path} has schema version {version}, newer than this audit's "
                             f"({SCHEMA_VERSION}); use a newer audit, or another --store")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
        if version == 0:
            self._create()
        elif version < SCHEMA_VERSION:
            self._migrate(version)

    def _create(self) -> None:
        with self._transaction() as db:
            run_statements(db, _SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _migrate(self, version: int) -> None:
        missing = [v for v in range(version, SCHEMA_VERSION) if v not in MIGRATIONS]
        if missing:
            raise StoreError(f"the run store {self.path} has schema version {version}, which this audit "
                             f"(schema {SCHEMA_VERSION}) cannot migrate; move it aside or pass another --store")
        with self._transaction() as db:  # all steps or none
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](db)
                db.execute(f"PRAGMA user_version = {step + 1}")

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return immediate_transaction(self.db)

    def close(self) -> None:
        self.db.close()

    def files_under(self, root: str) -> int:
        """How many files the store knows under ``root`` (a :meth:`root_key`)."""
        return self.db.execute("SELECT count(*) FROM files WHERE root = ?", (root,)).fetchone()[0]

    def integrity_ok(self) -> bool:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    # runs --------------------------------------------------------------------------------

    def close_abandoned_runs(self) -> int:
        """Runs left open by a killed process (no end time) are marked partial; only called
        with the lock held, so no live run can be among them."""
        with self._transaction() as db:
            cursor = db.execute("UPDATE runs SET partial = 1, note = 'killed: no end recorded' "
                                "WHERE finished_at IS NULL AND note = ''")
            return cursor.rowcount

    def baseline_run(self) -> int | None:
        """The last completed run: what "new since the last run" is measured against."""
        row = self.db.execute("SELECT max(id) FROM runs WHERE partial = 0").fetchone()
        return row[0]

    def start_run(self, started_at: str, options: dict[str, Any], out_dir: Path, out_dir_created: bool) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (started_at, options_json, out_dir, out_dir_created, pid) VALUES (?, ?, ?, ?, ?)",
                (started_at, json.dumps(options, sort_keys=True), str(out_dir.resolve()), int(out_dir_created), os.getpid()),
            )
            return int(cursor.lastrowid)

    def finish_run(self, run_id: int, counts: RunCounts | None, exit_code: int | None, partial: bool, note: str = "",
                   only_if_open: bool = False) -> None:
        """Record the run's end. ``only_if_open``: leave a run that already has an end alone
        (a stop seen by an outer handler after the inner one recorded it with its counts)."""
        guard = " AND finished_at IS NULL" if only_if_open else ""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET finished_at = ?, files = coalesce(?, files), files_scored = coalesce(?, files_scored), "
                "files_reused = coalesce(?, files_reused), flagged = coalesce(?, flagged), errors = coalesce(?, errors), "
                f"exit_code = ?, partial = ?, note = ? WHERE id = ?{guard}",
                (utc_text(), *(_counts_tuple(counts)), exit_code, int(partial), note, run_id),
            )

    def out_dir_of(self, run_id: int) -> Path | None:
        row = self.db.execute("SELECT out_dir FROM runs WHERE id = ?", (run_id,)).fetchone()
        return Path(row[0]) if row and row[0] else None

    def runs(self) -> list[RunRecord]:
        rows = self.db.execute("SELECT * FROM runs ORDER BY id").fetchall()
        return [
            RunRecord(
                id=row["id"], started_at=row["started_at"], finished_at=row["finished_at"], out_dir=row["out_dir"],
                out_dir_created=bool(row["out_dir_created"]), files=row["files"], files_scored=row["files_scored"],
                files_reused=row["files_reused"], flagged=row["flagged"], errors=row["errors"],
                exit_code=row["exit_code"], partial=bool(row["partial"]), note=row["note"],
            )
            for row in rows
        ]

    # files and scores --------------------------------------------------------------------

    def reusable_files(self, root: str, paths: Sequence[str], scoring_key: str) -> dict[str, tuple[int | None, float | None, str]]:
        """(size, mtime, sha256) by path, for those of ``paths`` under ``root`` whose recorded
        bytes have a result under ``scoring_key``. One query for many files: the lookups are most
        of an unchanged rerun's time. Keep ``paths`` under SQLite's limit on parameters."""
        marks = ",".join("?" * len(paths))
        rows = self.db.execute(
            f"SELECT path, size, mtime, sha256 FROM files WHERE root = ? AND path IN ({marks}) AND sha256 != '' "
            "AND EXISTS (SELECT 1 FROM scores WHERE scores.sha256 = files.sha256 AND scores.scoring_key = ?)",
            (root, *paths, scoring_key)).fetchall()
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    def scores(self, sha256s: Sequence[str], scoring_key: str, scored_run: int | None = None) -> dict[str, StoredScore]:
        """The stored results for these bytes under ``scoring_key``, by sha256 (as :meth:`reusable_files`,
        batched); with ``scored_run``, only those that run computed."""
        marks = ",".join("?" * len(sha256s))
        run_clause = "" if scored_run is None else " AND scored_run = ?"
        rows = self.db.execute(
            f"SELECT sha256, model_id, row_json FROM scores WHERE scoring_key = ? AND sha256 IN ({marks}){run_clause}",
            (scoring_key, *sha256s, *(() if scored_run is None else (scored_run,)))).fetchall()
        # One JSON text for the chunk: a json.loads call a row was a third of this query's time.
        decoded = json.loads("[" + ",".join(row[2] for row in rows) + "]")
        return {row[0]: StoredScore(row[0], scoring_key, row[1], fields) for row, fields in zip(rows, decoded)}

    def newest_scoring_run(self) -> int:
        """The newest run that stored (or replaced) a result. Every result is stored with the id of
        the run that stores it, run ids only grow and nothing deletes a result: any result stored
        since a run ended moves it (audit.pipeline._reuse.RowsFingerprint goes by it)."""
        return self.db.execute("SELECT coalesce(max(scored_run), 0) FROM scores").fetchone()[0]

    def commit_batch(self, run_id: int, scores: Iterable[StoredScore], files: Iterable[FileUpdate]) -> None:
        """One transaction: the batch's new scores and what was learnt about its files."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO scores (sha256, scoring_key, model_id, row_json, scored_run) VALUES (?, ?, ?, ?, ?)",
                [(s.sha256, s.scoring_key, s.model_id, json.dumps(s.row), run_id) for s in scores],
            )
            for update in files:
                self._record_file(db, run_id, update)

    @staticmethod
    def _record_file(db: sqlite3.Connection, run_id: int, update: FileUpdate) -> None:
        before = db.execute("SELECT sha256, verdict, flagged_since_run, changed_run FROM files WHERE root = ? AND path = ?",
                            (update.root, update.path)).fetchone()
        flagged_now = update.verdict == VERDICT_AI
        if before is None:
            db.execute(
                "INSERT INTO files (root, path, size, mtime, sha256, verdict, first_seen_run, changed_run, "
                "flagged_since_run, last_seen_run) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?)",
                (update.root, update.path, update.size, update.mtime, update.sha256, update.verdict, run_id,
                 run_id if flagged_now else None, run_id),
            )
            return
        old_sha, old_verdict, flagged_since, changed_run = before
        if update.sha256 and old_sha and update.sha256 != old_sha:
            changed_run = run_id
        if not flagged_now:
            flagged_since = None
        elif old_verdict != VERDICT_AI or flagged_since is None:
            flagged_since = run_id
        db.execute(
            "UPDATE files SET size = ?, mtime = ?, sha256 = ?, verdict = ?, changed_run = ?, flagged_since_run = ?, "
            "last_seen_run = ? WHERE root = ? AND path = ?",
            # An unreadable file records no sha256, so its old result is not reused next time.
            (update.size, update.mtime, update.sha256, update.verdict, changed_run, flagged_since, run_id,
             update.root, update.path),
        )

    def record_changes(self, run_id: int, roots: Iterable[str], baseline: int | None) -> Changes:
        """What this run found different from the last completed run (``baseline``): new files,
        changed content, files under its roots it did not see (deleted), and newly flagged ones.
        Every such file is kept in ``run_changes`` (:meth:`changes_of`); the returned record has
        the complete counts and lists the first MAX_LISTED_CHANGES of each kind. Run ids are
        compared, not states, so a run resumed after a kill still reports the files that the
        killed run already recorded as new."""
        base = baseline if baseline is not None else 0
        changes = Changes(baseline_run=baseline, listed_limit=MAX_LISTED_CHANGES)
        wheres: dict[str, tuple[str, tuple[Any, ...]]] = {
            "newly_flagged": ("flagged_since_run > ? AND last_seen_run = ?", (base, run_id)),
            "new": ("first_seen_run > ? AND last_seen_run = ?", (base, run_id)),
            "changed": ("changed_run > ? AND first_seen_run <= ? AND last_seen_run = ?", (base, base, run_id)),
            "deleted": _unseen_where(run_id, roots),
        }
        with self._transaction() as db:
            db.execute("DELETE FROM run_changes WHERE run_id = ?", (run_id,))
            for kind, (where, params) in wheres.items():
                db.execute(f"INSERT INTO run_changes (run_id, kind, root, path, sha256, verdict) "
                           f"SELECT ?, ?, root, path, sha256, verdict FROM files WHERE {where}", (run_id, kind, *params))
        for kind in wheres:
            setattr(changes, kind, self.db.execute("SELECT count(*) FROM run_changes WHERE run_id = ? AND kind = ?",
                                                   (run_id, kind)).fetchone()[0])
            changes.listed[kind] = self.changes_of(run_id, kind, MAX_LISTED_CHANGES)
        return changes

    def changes_of(self, run_id: int, kind: str, limit: int = -1) -> list[dict[str, str]]:
        """The files of one kind of change (new, changed, deleted, newly_flagged) that a run
        recorded, by root and path; ``limit`` -1: all of them."""
        rows = self.db.execute("SELECT root, path, sha256, verdict FROM run_changes WHERE run_id = ? AND kind = ? "
                               "ORDER BY root, path LIMIT ?", (run_id, kind, limit)).fetchall()
        return [dict(row) for row in rows]

    def report_cache(self) -> ReportCache:
        """The report's caches in this store (Grad-CAM maps, gallery pictures, laid-out PDF parts)."""
        from audit.store._report_cache import ReportCache

        return ReportCache(self.db)

    def forget_unseen(self, run_id: int, roots: Iterable[str]) -> None:
        """After a complete run: drop the files under its roots that it did not see (deleted, or
        no longer selected by --include/--exclude), so the next run does not report them again."""
        where, params = _unseen_where(run_id, roots)
        with self._transaction() as db:
            db.execute(f"DELETE FROM files WHERE {where}", params)

    def touch_files(self, run_id: int, keys: list[tuple[str, str, str]]) -> None:
        """Mark reused files (root, path, verdict) as seen by this run, in one transaction. The
        verdict is that of the reused result, which may differ from the file's last one (a night
        with another model in between): flagged_since_run follows it as in _record_file."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE files SET last_seen_run = ?, "
                # On the right of SET, `verdict` is still the old value.
                "flagged_since_run = CASE WHEN ? != ? THEN NULL "
                "WHEN verdict = ? AND flagged_since_run IS NOT NULL THEN flagged_since_run ELSE ? END, "
                "verdict = ? WHERE root = ? AND path = ?",
                [(run_id, verdict, VERDICT_AI, VERDICT_AI, run_id, verdict, root, path) for root, path, verdict in keys])

    # retention ---------------------------------------------------------------------------

    def prune(self, keep: int) -> list[tuple[RunRecord, str]]:
        """Remove all but the ``keep`` newest runs: their folders when the store's run created
        them, and their records. Returns (run, what was done) per removed run."""
        runs = self.runs()
        old = runs[:-keep] if keep > 0 else runs
        kept_dirs = {run.out_dir for run in runs[len(old):]}
        done = []
        for run in old:
            done.append((run, _remove_run_folder(run, kept_dirs)))
            with self._transaction() as db:
                db.execute("DELETE FROM runs WHERE id = ?", (run.id,))
                db.execute("DELETE FROM run_changes WHERE run_id = ?", (run.id,))
        return done


def _unseen_where(run_id: int, roots: Iterable[str]) -> tuple[str, tuple[Any, ...]]:
    ordered = sorted(set(roots))
    if not ordered:
        return "0", ()
    return f"last_seen_run < ? AND root IN ({','.join('?' * len(ordered))})", (run_id, *ordered)


def _remove_run_folder(run: RunRecord, kept_dirs: set[str]) -> str:
    folder = Path(run.out_dir)
    if not run.out_dir_created:
        return f"kept {folder} (it existed before the run; only the record was removed)"
    if run.out_dir in kept_dirs:
        return f"kept {folder} (a newer, kept run wrote there too)"
    if folder.is_symlink() or not folder.is_dir():
        return f"{folder} is gone or not a folder; record removed"
    shutil.rmtree(folder)
    return f"removed {folder}"


def _counts_tuple(counts: RunCounts | None) -> tuple[Any, ...]:
    if counts is None:
        return (None, None, None, None, None)
    return (counts.files, counts.files_scored, counts.files_reused, counts.flagged, counts.errors)


def open_locked(path: Path) -> tuple[RunStore, StoreLock]:
    """Take the lock first (so a second run leaves before touching the database), then open."""
    lock = StoreLock(path)
    lock.acquire()
    try:
        refuse_if_damaged(path)  # before SQLite writes a byte to it
        store = RunStore(path)
        store.close_abandoned_runs()
    except BaseException:
        lock.release()
        raise
    return store, lock
