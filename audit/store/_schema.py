"""The run store's tables and the migrations that bring an older store up to date."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

from audit.errors import DiskFull, raise_if_disk_full

STORE_FILE_NAME = "audit-store.sqlite"
SCHEMA_VERSION = 4

# Reviewers' decisions (audit.review._decisions holds the logic). Rows are only ever appended: the newest row
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


# The run that stored the newest result (RunStore.newest_scoring_run) without reading the whole table.
_SCORES_BY_RUN = "CREATE INDEX IF NOT EXISTS scores_by_run ON scores (scored_run)"


# The report's caches (audit.store._report_cache): Grad-CAM maps, gallery pictures, laid-out PDF parts.
# IF NOT EXISTS: stores of schema 3 may hold them already (they were made on first use then).
_REPORT_CACHES = """
CREATE TABLE IF NOT EXISTS heatmaps (
    sha256 TEXT NOT NULL,
    model_id TEXT NOT NULL,
    layer TEXT NOT NULL,
    logits BLOB NOT NULL,   -- float32 values of the forward pass that made the map
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    cam BLOB NOT NULL,      -- float32 height x width, values in [0, 1]
    PRIMARY KEY (sha256, model_id, layer)
);
CREATE TABLE IF NOT EXISTS gallery_pictures (
    sha256 TEXT NOT NULL,
    model_id TEXT NOT NULL,
    recipe TEXT NOT NULL,          -- what else shapes the pictures: layer, thumbnail size, input policy
    original_suffix TEXT NOT NULL, -- png (an enlarged small image) or jpg
    original BLOB NOT NULL,        -- the thumbnail file's bytes
    overlay BLOB NOT NULL,         -- the Grad-CAM overlay file's bytes (JPEG)
    PRIMARY KEY (sha256, model_id, recipe)
);
CREATE TABLE IF NOT EXISTS report_parts (
    fingerprint TEXT PRIMARY KEY,  -- audit.report._pdf.part_fingerprint
    pdf BLOB NOT NULL,             -- a part of the report (a section, a page of gallery cards) laid out alone
    bookmarks TEXT NOT NULL,       -- its headings: JSON [[level, label, page], ...]
    kept_at REAL NOT NULL          -- unix time it was last put or used
)
"""

# Every file a run found new, changed, deleted or newly flagged since its baseline (summary.json
# lists only the first few of each kind; `audit runs --changes RUN` lists these).
_RUN_CHANGES = """
CREATE TABLE IF NOT EXISTS run_changes (
    run_id INTEGER NOT NULL,
    kind TEXT NOT NULL,           -- new | changed | deleted | newly_flagged
    root TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    verdict TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS run_changes_by_run ON run_changes (run_id, kind, root, path)
"""


@contextlib.contextmanager
def immediate_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT on a connection in autocommit mode, or ROLLBACK on any exception
    (a signal's SystemExit too). The run store's and its report caches' (audit.store._report_cache)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        # A full disk is said as such; what earlier transactions committed stays.
        if isinstance(exc, sqlite3.OperationalError) and (
                getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(exc)):
            raise DiskFull("the run store", _database_path(db)) from exc
        raise_if_disk_full(exc, "the run store", _database_path(db))
        raise


def _database_path(db: sqlite3.Connection) -> Path | None:
    try:
        return Path(db.execute("PRAGMA database_list").fetchone()[2])
    except (sqlite3.Error, TypeError, IndexError):
        return None


def run_statements(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


# Migrations from version N to N + 1, applied in order inside one transaction; a store whose
# version has no path here is refused.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: lambda db: run_statements(db, _DECISIONS_SCHEMA),  # 1 -> 2: reviewers' decisions
    2: lambda db: run_statements(db, _SCORES_BY_RUN),  # 2 -> 3: the newest stored result at once
    3: lambda db: run_statements(db, _REPORT_CACHES + ";" + _RUN_CHANGES),  # 3 -> 4: caches migrated, changes kept
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
""" + ";".join(("", _DECISIONS_SCHEMA, _SCORES_BY_RUN, _REPORT_CACHES, _RUN_CHANGES))
