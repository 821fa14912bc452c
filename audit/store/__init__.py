"""The run store: one SQLite file per set of archives. Its schema and migrations, all of its SQL,
the lock that keeps one run at a time, where it lives, and the report's caches.
"""

from __future__ import annotations

from audit import lazy_exports
from audit.store._check import StoreDamaged, refuse_if_damaged, set_aside, store_findings
from audit.store._decisions import (
    append_decisions,
    current_decision_rows,
    decision_history_rows,
    first_recorded_from,
    latest_result,
    paths_by_sha256,
    review_cell_rows,
    reviewed_sha256s_starting,
    stored_results,
)
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

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["append_decisions", "current_decision_rows", "decision_history_rows", "first_recorded_from", "latest_result", "paths_by_sha256", "review_cell_rows", "reviewed_sha256s_starting", "stored_results", "CachedMap", "CachedPictures", "Changes", "FileUpdate", "LEGACY_STORE_FILE_NAME", "ReportCache", "RunCounts", "RunStore", "SCHEMA_VERSION", "StoreDamaged", "StoreError", "StoreLock", "StoreLocked", "StoredScore", "default_store_path", "find_store", "open_existing_store", "open_locked", "refuse_if_damaged", "set_aside", "store_findings", "utc_text"]
