"""Where run stores live by default, and how a command finds the one it means.

A store follows the archives, not the output folder: one file per set of resolved archive roots
under :func:`state_dir`/stores/ (:func:`default_store_path`, which ``audit scan`` uses unless
--store is given). ``runs``, ``prune`` and ``review`` find the store by :func:`find_store`, which
applies the same rule.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Sequence

from audit.errors import UsageError
from audit.store._check import refuse_if_damaged
from audit.store._lock import StoreError
from audit.store._store import STORE_FILE_NAME, RunStore
from audit.summary import read_summary

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
    the same archive (:meth:`RunStore.root_key`); `audit scan A B` and `audit scan B A` the same set.
    """
    roots = sorted({RunStore.root_key(archive) for archive in archives})
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


def find_store(store_path: Path | None, archives: Sequence[str], results_file: Path | None = None,
               only_store_if_one: bool = False, archives_hint: str = " (the same as for `audit scan`)") -> Path:
    """The run store a command means, by the scan's rule: --store; else the archives' default
    store; else the store that the summary.json beside a results file names; else (with
    ``only_store_if_one``) the only default store there is. Otherwise the user must say which."""
    if store_path is not None:
        return store_path
    if archives:
        return default_store_path(archives)
    if results_file is not None:
        with contextlib.suppress(OSError, UsageError):
            recorded = read_summary(results_file.parent / "summary.json").store
            if recorded is not None and recorded.path:
                return Path(recorded.path)
    known = known_stores()
    if only_store_if_one and len(known) == 1:
        return known[0][0]
    listed = "".join(f"\n  {path}  ({', '.join(found) or 'archives unknown'})" for path, found in known)
    raise StoreError(f"name the archive(s) the scans used{archives_hint}, or pass --store PATH"
                     + (f"; the run stores kept by default are:{listed}" if listed else ""))


def open_existing_store(store_path: Path) -> RunStore:
    """A store that a scan made; a command that only reads or prunes never creates one."""
    if not store_path.is_file():
        raise StoreError(f"no run store at {store_path} (pass --store PATH)")
    refuse_if_damaged(store_path)
    return RunStore(store_path)
