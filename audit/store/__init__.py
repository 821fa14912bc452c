"""The run store: one SQLite file per set of archives. Its schema and migrations, all of its SQL,
the lock that keeps one run at a time, where it lives, and the report's caches.
"""

from __future__ import annotations

from audit.store._check import StoreDamaged, refuse_if_damaged, set_aside, store_findings
from audit.store._location import LEGACY_STORE_FILE_NAME, default_store_path, find_store, open_existing_store
from audit.store._records import StoredScore
from audit.store._store import (
    SCHEMA_VERSION,
    Changes,
    FileUpdate,
    RunCounts,
    RunStore,
    StoreError,
    StoreLock,
    StoreLocked,
    open_locked,
    utc_text,
)

# Imported when first asked for: these pull in torch, pandas or OpenCV.
_LAZY = {
    "CachedMap": "audit.store._report_cache",
    "CachedPictures": "audit.store._report_cache",
    "ReportCache": "audit.store._report_cache",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["CachedMap", "CachedPictures", "Changes", "FileUpdate", "LEGACY_STORE_FILE_NAME", "ReportCache", "RunCounts", "RunStore", "SCHEMA_VERSION", "StoreDamaged", "StoreError", "StoreLock", "StoreLocked", "StoredScore", "default_store_path", "find_store", "open_existing_store", "open_locked", "refuse_if_damaged", "set_aside", "store_findings", "utc_text"]
