"""Whether a run store file is sound, asked without writing a byte to it, and how a damaged one
is set aside.

A store damaged on disk (a backup restored half-way, a bad disk) must be refused before a run
writes to it: SQLite would write into it, and the damage would spread. The check opens the file
read-only and immutable (no journal, no -shm, no lock taken) and runs ``PRAGMA quick_check``,
which reads every page (docs/performance.md has what it costs); ``audit store check`` runs the
full ``integrity_check``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from audit.errors import EXIT_STORE_DAMAGED
from audit.store._lock import StoreError

SQLITE_MAGIC = b"SQLite format 3\x00"
MAX_FINDINGS = 100  # SQLite stops after this many problems


class StoreDamaged(StoreError):
    """SQLite finds the run store damaged; nothing was written to it."""

    exit_code = EXIT_STORE_DAMAGED

    def __init__(self, path: Path, findings: list[str]) -> None:
        self.path, self.findings = path, findings
        more = f" (and {len(findings) - 1} more problem(s))" if len(findings) > 1 else ""
        self.advice = (f"; `audit store check --store {path}` lists what SQLite finds, and `audit store check --store "
                       f"{path} --set-aside` moves it aside (kept for inspection) so that the next scan starts a new "
                       f"store and scores every file again")
        super().__init__(f"the run store {path} is damaged: SQLite finds {findings[0]!r}{more}; nothing was written to it")


def store_findings(path: Path, full: bool = False) -> list[str]:
    """What SQLite's quick_check (``full``: integrity_check) finds in the file: ["ok"] when it is
    sound. The file is opened read-only and immutable: the check writes nothing anywhere."""
    uri = f"file:{quote(str(path.absolute()))}?mode=ro&immutable=1"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
            check = "integrity_check" if full else "quick_check"
            return [str(row[0]) for row in db.execute(f"PRAGMA {check}({MAX_FINDINGS})").fetchall()] or ["no answer"]
    except sqlite3.DatabaseError as exc:
        return [str(exc)]


def is_sqlite_file(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def refuse_if_damaged(path: Path) -> None:
    """Raise :class:`StoreDamaged` when SQLite finds the store damaged. A missing or empty file
    (a new store) and a file that is not SQLite at all (the store's open says what it is) pass."""
    if not is_sqlite_file(path):
        return
    findings = store_findings(path)
    if findings != ["ok"]:
        raise StoreDamaged(path, findings)


def set_aside(path: Path, moment: datetime | None = None) -> Path:
    """Rename the store (and its -wal and -shm) to ``NAME.damaged-<UTC time>``; the next scan
    then starts a new store at ``path``. Returns the new name of the store file."""
    stamp = (moment or datetime.now(timezone.utc)).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.rename(target.with_name(target.name + suffix))
    return target
