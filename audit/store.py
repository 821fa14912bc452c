"""The run store: one SQLite file (standard library sqlite3, WAL mode) that makes nightly scans
incremental, resumable and recorded.

* ``files``: what the last runs saw at each (root, path): size, mtime, sha256, and the run ids
  that say when the file was first seen, last changed, last seen and last became flagged.
* ``scores``: one result per (sha256, scoring key): every ResultRow column that comes from the
  file's bytes and the model, so a file whose bytes were already judged is re-emitted without
  decoding. The scoring key is the model id plus whatever else changes a result (calibration
  temperature, threshold, evidence on/off, trust anchors, --max-pixels, draft decoding).
* ``runs``: one row per run: start, end, options, counts, exit status, partial flag, out dir.
* ``decisions``: reviewers' decisions by sha256, appended and never updated (audit.review).

Scored results are committed one transaction per scored batch, so a run killed with SIGKILL
loses at most the batch in flight: the next run finds the committed ones and reuses them.

Concurrency: a run holds an exclusive POSIX record lock (``fcntl.lockf``) on ``STORE.lock`` for its
whole length. The kernel drops it when the process dies (SIGKILL included), and, unlike a
``flock``, a record lock belongs to the process and is not held by children it forks: a DataLoader
worker orphaned by a killed scan cannot keep the next night out (it once did, through the flock
descriptor it inherited). The pid, host and start time written into the lock file name the
holder in the message; a run that finds them left behind by a process that died without
releasing the lock takes the store over and says so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import struct
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TextIO

from audit.errors import EXIT_LOCKED, UsageError

STORE_FILE_NAME = "audit-store.sqlite"
SCHEMA_VERSION = 2
# Changes listed by name in summary.json and the report; the counts are always complete.
MAX_LISTED_CHANGES = 200

# Reviewers' decisions (audit.review holds the logic). Rows are only ever appended: the newest row
# (highest id) for a sha256 is its current decision, the others are its history.
_DECISIONS_SCHEMA = """
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL,
    decision TEXT NOT NULL,       -- confirmed-ai | false-positive | unsure
    decided_by TEXT NOT NULL,
    decided_at TEXT NOT NULL,     -- ISO 8601 UTC, when the reviewer decided
    recorded_at TEXT NOT NULL,    -- when it reached the store
    note TEXT NOT NULL DEFAULT '',
    model_id TEXT NOT NULL DEFAULT '',  -- the model whose result the reviewer saw
    prob_ai REAL,
    source TEXT NOT NULL DEFAULT ''     -- "set" or "import sha256:<file's sha256> <file name>"
);
CREATE INDEX decisions_by_sha256 ON decisions (sha256, id)
"""


def _run_statements(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


# Migrations from version N to N + 1, applied in order inside one transaction; a store whose
# version has no path here is refused.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: lambda db: _run_statements(db, _DECISIONS_SCHEMA),  # 1 -> 2: reviewers' decisions
}

_SCHEMA = """
CREATE TABLE files (
    root TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER,
    mtime REAL,
    sha256 TEXT NOT NULL DEFAULT '',
    verdict TEXT NOT NULL DEFAULT '',
    first_seen_run INTEGER NOT NULL,
    changed_run INTEGER,          -- the run that saw its content (sha256) change
    flagged_since_run INTEGER,    -- the run whose verdict first became ai-generated (NULL: not flagged)
    last_seen_run INTEGER NOT NULL,
    PRIMARY KEY (root, path)
);
CREATE TABLE scores (
    sha256 TEXT NOT NULL,
    scoring_key TEXT NOT NULL,
    model_id TEXT NOT NULL,
    row_json TEXT NOT NULL,       -- the ResultRow fields that depend on the bytes and the model
    scored_run INTEGER NOT NULL,
    PRIMARY KEY (sha256, scoring_key)
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    options_json TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    out_dir_created INTEGER NOT NULL,  -- 1: this run made the folder, so prune may remove it
    pid INTEGER NOT NULL,
    files INTEGER,
    files_scored INTEGER,
    files_reused INTEGER,
    flagged INTEGER,
    errors INTEGER,
    exit_code INTEGER,
    partial INTEGER NOT NULL DEFAULT 1,  -- 0 only once the run has completed
    note TEXT NOT NULL DEFAULT ''
);
""" + ";" + _DECISIONS_SCHEMA


class StoreError(UsageError):
    """The store cannot be used (wrong schema version, not a run store); the user must act."""


class StoreLocked(StoreError):
    """Another process holds the store's lock."""

    exit_code = EXIT_LOCKED


@functools.lru_cache(maxsize=256)
def store_root(root: str) -> str:
    """The run store knows a root by its resolved absolute path, so `photos`, `./photos/` and
    `/srv/photos` (or a symlink to it) are one archive whatever the working directory of the
    night's job; results.csv keeps the root as it was typed."""
    return os.path.realpath(root)


STATE_DIR_ENV = "AUDIT_STATE_DIR"
# The default before the store followed the archive: beside the run folders.
LEGACY_STORE_FILE_NAME = STORE_FILE_NAME


def state_dir() -> Path:
    """Where default run stores live: $AUDIT_STATE_DIR, else $XDG_STATE_HOME/ai-image-audit, else
    ~/.local/state/ai-image-audit (the XDG place for state that outlives a run)."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state") / "ai-image-audit"


def default_store_path(archives: Sequence[str]) -> Path:
    """The run store that belongs to these archives: one file per set of resolved roots, under
    :func:`state_dir`/stores/, named after the first root and a hash of them all.

    It follows the archive, not the output folder: tonight's --out may be anywhere and the store
    is still last night's, and two unrelated archives never share a store (nor its lock) because
    their output folders happen to share a parent. `photos`, `./photos/` and a symlink to it are
    the same archive (:func:`store_root`); `audit scan A B` and `audit scan B A` the same set.
    """
    roots = sorted({store_root(archive) for archive in archives})
    digest = hashlib.sha256("\0".join(roots).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    first = os.path.basename(roots[0].rstrip("/")) if roots else ""
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in first)[:40].strip("._") or "root"
    more = f"-and-{len(roots) - 1}-more" if len(roots) > 1 else ""
    return state_dir() / "stores" / f"{name}{more}-{digest}.sqlite"


def known_stores() -> list[tuple[Path, list[str]]]:
    """The default stores under :func:`state_dir`, each with the archives its last run scanned."""
    found = []
    for path in sorted((state_dir() / "stores").glob("*.sqlite")):
        archives: list[str] = []
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
                row = db.execute("SELECT options_json FROM runs ORDER BY id DESC LIMIT 1").fetchone()
            archives = list(json.loads(row[0]).get("archives") or []) if row else []
        except (sqlite3.Error, ValueError, TypeError):
            pass
        found.append((path, archives))
    return found


def utc_text(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- lock


# Lock files held by this process: a POSIX record lock never conflicts with its own process (a
# second run in the same interpreter would "get" it), and closing any descriptor of the file drops
# it (so the file is never opened twice here), so a second acquire in the same process is refused
# here instead: lock file -> the holder text written into it.
_HELD_BY_THIS_PROCESS: dict[str, str] = {}


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs on this host (a zombie, dead but not yet reaped, counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (not Linux): kill(0) said it exists


def lock_holder_pid(fileno: int) -> int | None:
    """The pid the kernel names as holding a conflicting lock on the file (F_GETLK), or None
    (no conflict, not visible from this pid namespace, or not supported)."""
    # struct flock on Linux (LP64): short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
    layout = "hhqqi4x"
    try:
        answer = fcntl.fcntl(fileno, fcntl.F_GETLK, struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
        l_type, _, _, _, l_pid = struct.unpack(layout, answer)
    except (OSError, struct.error, AttributeError):
        return None
    return l_pid if l_type != fcntl.F_UNLCK and l_pid > 0 else None


@dataclass(frozen=True)
class LockTakeover:
    """The lock file named a holder that ended without releasing it (a killed run)."""

    holder: str  # "pid N on HOST since TIME", as that run wrote it
    holder_alive: bool  # the pid runs now (reused by another program, or an older audit)

    def message(self, lock_path: Path) -> str:
        still = (" (a process with that pid runs now, but it does not hold the lock)" if self.holder_alive else "")
        return (f"the run store's lock {lock_path} was left by {self.holder}, which ended without releasing it "
                f"(killed?){still}; this run took the store over")


class StoreLock:
    """An exclusive, non-blocking record lock on ``STORE.lock``, held until :meth:`release`.

    ``takeover`` is set after :meth:`acquire` when the previous holder died holding it."""

    def __init__(self, store_path: Path) -> None:
        self.path = store_path.with_name(store_path.name + ".lock")
        self._handle: TextIO | None = None
        self.takeover: LockTakeover | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD_BY_THIS_PROCESS:
            raise StoreLocked(f"the run store {self.path.with_suffix('')} is in use by another run "
                              f"({_HELD_BY_THIS_PROCESS[key]}, this process); try again when it has finished")
        # Opened close-on-exec (Python's default) and never inherited as a lock by a fork.
        handle = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.lockf(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):  # e.g. ENOLCK: a file system without locks
                handle.close()
                raise StoreError(f"cannot lock the run store's lock file {self.path} ({exc.strerror}); "
                                 f"keep the store on a local disk, or pass another --store") from None
            handle.seek(0)
            holder = handle.read().strip() or "unknown process"
            kernel_pid = lock_holder_pid(handle.fileno())
            handle.close()
            if kernel_pid is not None and f"pid {kernel_pid} " not in holder + " ":
                holder = f"pid {kernel_pid} holds the lock; the lock file names {holder}"
            raise StoreLocked(f"the run store {self.path.with_suffix('')} is in use by another run ({holder}); "
                              f"try again when it has finished") from None
        handle.seek(0)
        left_behind = handle.read().strip()
        if left_behind:  # a holder that released the lock clears the file: this one did not
            self.takeover = LockTakeover(left_behind, _named_pid_alive(left_behind))
        handle.seek(0)
        handle.truncate()
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {utc_text()}"
        handle.write(holder + "\n")
        handle.flush()
        self._handle = handle
        _HELD_BY_THIS_PROCESS[key] = holder

    def release(self) -> None:
        if self._handle is not None:
            try:
                self._handle.seek(0)
                self._handle.truncate()  # released in order: nothing for the next run to take over
            except OSError:
                pass
            self._handle.close()  # closing the descriptor drops the record lock
            self._handle = None
            _HELD_BY_THIS_PROCESS.pop(os.path.realpath(self.path), None)


def _named_pid_alive(holder: str) -> bool:
    """Whether the pid a lock file names runs now, when it names one of this host."""
    parts = holder.split()
    try:
        pid = int(parts[1]) if parts[0] == "pid" else 0
        host = parts[3] if parts[2] == "on" else ""
    except (IndexError, ValueError):
        return False
    return host == socket.gethostname() and pid_alive(pid)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class FileUpdate:
    """What one run learnt about one discovered file."""

    root: str
    path: str
    size: int | None
    mtime: float | None
    sha256: str
    verdict: str


@dataclass(frozen=True)
class StoredScore:
    sha256: str
    scoring_key: str
    model_id: str
    row: dict[str, Any]


@dataclass
class RunRecord:
    id: int
    started_at: str
    finished_at: str | None
    out_dir: str
    out_dir_created: bool
    files: int | None
    files_scored: int | None
    files_reused: int | None
    flagged: int | None
    errors: int | None
    exit_code: int | None
    partial: bool
    note: str


@dataclass
class RunCounts:
    files: int
    files_scored: int
    files_reused: int
    flagged: int
    errors: int


@dataclass
class Changes:
    """What is different since the last completed run on this store (the baseline)."""

    baseline_run: int | None
    new: int = 0
    changed: int = 0
    deleted: int = 0
    newly_flagged: int = 0
    listed: dict[str, list[dict[str, str]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline_run": self.baseline_run,
            "counts": {"new": self.new, "changed": self.changed, "deleted": self.deleted, "newly_flagged": self.newly_flagged},
            "listed": self.listed,
            "listed_limit": MAX_LISTED_CHANGES,
        }


# --------------------------------------------------------------------------- the store


class RunStore:
    """An open run store. Not shared between threads or processes (the lock sees to processes)."""

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
            _run_statements(db, _SCHEMA)
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

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (a signal's SystemExit too)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

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
        return {row[0]: StoredScore(row[0], scoring_key, row[1], json.loads(row[2])) for row in rows}

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
        flagged_now = update.verdict == "ai-generated"
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
        elif old_verdict != "ai-generated" or flagged_since is None:
            flagged_since = run_id
        db.execute(
            "UPDATE files SET size = ?, mtime = ?, sha256 = ?, verdict = ?, changed_run = ?, flagged_since_run = ?, "
            "last_seen_run = ? WHERE root = ? AND path = ?",
            # An unreadable file records no sha256, so its old result is not reused next time.
            (update.size, update.mtime, update.sha256, update.verdict, changed_run, flagged_since, run_id,
             update.root, update.path),
        )

    def changes_since(self, run_id: int, roots: Iterable[str], baseline: int | None) -> Changes:
        """What this run found different from the last completed run (``baseline``): new files,
        changed content, files under its roots it did not see (deleted), and newly flagged ones.
        Run ids are compared, not states, so a run resumed after a kill still reports the files
        that the killed run already recorded as new."""
        base = baseline if baseline is not None else 0
        changes = Changes(baseline_run=baseline)
        wheres: dict[str, tuple[str, tuple[Any, ...]]] = {
            "newly_flagged": ("flagged_since_run > ? AND last_seen_run = ?", (base, run_id)),
            "new": ("first_seen_run > ? AND last_seen_run = ?", (base, run_id)),
            "changed": ("changed_run > ? AND first_seen_run <= ? AND last_seen_run = ?", (base, base, run_id)),
            "deleted": _unseen_where(run_id, roots),
        }
        for kind, (where, params) in wheres.items():
            setattr(changes, kind, self.db.execute(f"SELECT count(*) FROM files WHERE {where}", params).fetchone()[0])
            listed = self.db.execute(f"SELECT root, path, sha256, verdict FROM files WHERE {where} ORDER BY root, path LIMIT ?",
                                     (*params, MAX_LISTED_CHANGES)).fetchall()
            changes.listed[kind] = [dict(row) for row in listed]
        return changes

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
                "flagged_since_run = CASE WHEN ? != 'ai-generated' THEN NULL "
                "WHEN verdict = 'ai-generated' AND flagged_since_run IS NOT NULL THEN flagged_since_run ELSE ? END, "
                "verdict = ? WHERE root = ? AND path = ?",
                [(run_id, verdict, run_id, verdict, root, path) for root, path, verdict in keys])

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
        store = RunStore(path)
        store.close_abandoned_runs()
    except BaseException:
        lock.release()
        raise
    return store, lock


def describe_run(run: RunRecord) -> list[str]:
    """One `audit runs` table row."""

    def cell(value: Any) -> str:
        return "-" if value is None else str(value)

    return [str(run.id), run.started_at, cell(run.finished_at), cell(run.files), cell(run.files_scored),
            cell(run.files_reused), cell(run.flagged), cell(run.errors), cell(run.exit_code),
            "yes" if run.partial else "no", run.out_dir + (f" ({run.note})" if run.note else "")]


RUN_TABLE_HEADER = ["id", "started", "finished", "files", "scored", "reused", "flagged", "errors", "exit", "partial", "out dir"]

