"""Checks a run makes before it writes or scores anything: a writable output folder, and archive
roots that are there (an unmounted disk must not read as an archive whose files were all deleted)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

from audit.config import ScanOptions
from audit.errors import RootMissing, UsageError
from audit.intake import FileRecord, printable_name
from audit.store import RunStore


def check_writable(out_dir: Path) -> None:
    """Refuse (exit 2) an output folder this process cannot create a file in, by creating one:
    permission bits do not say it for root, a read-only mount or a full quota."""
    existing = out_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"cannot write the output folder {out_dir}: {existing} is not a folder; pass another --out")
    try:
        handle, name = tempfile.mkstemp(prefix=".audit-write-check-", dir=existing)
        os.close(handle)
        os.unlink(name)
    except OSError as exc:
        raise UsageError(f"cannot write to the output folder {out_dir} ({exc.strerror or exc}); "
                         f"pass a writable --out") from None


def check_roots_exist(archives: Sequence[str], store_path: Path) -> None:
    """A root that does not exist, with no run store yet that could know it: a usage error (exit 2)
    before the store is made. With a store, :func:`check_roots` asks it."""
    missing = [archive for archive in archives if not os.path.lexists(archive)]
    if missing and not store_path.is_file():
        raise UsageError(f"no such archive: {missing[0]}")


def check_roots(options: ScanOptions, records: Sequence[FileRecord], store: RunStore) -> None:
    """Stop the run (RootMissing) when an archive root is gone, or a folder root yielded no file
    at all, while the run store knows files under it: an unmounted disk, not an archive emptied.
    A root that was never scanned and does not exist is a usage error."""
    populated = {record.root for record in records if not (record.error and record.rel_path == ".")}
    problems = []
    for archive in options.archives:
        if printable_name(archive) in populated or os.path.isfile(archive):
            continue
        known = store.files_under(RunStore.root_key(archive))
        if not os.path.lexists(archive):
            if not known:
                raise UsageError(f"no such archive: {archive}")
            problems.append(f"{archive} does not exist (the run store knows {known} file(s) under it)")
        elif known and os.path.isdir(archive) and not (options.include or options.exclude or options.allow_empty_root):
            problems.append(f"{archive} holds no image file now (the run store knows {known} file(s) under it)")
    if problems:
        raise RootMissing(f"root missing: {'; '.join(problems)}; nothing was recorded. Is its disk mounted? If its "
                          f"files were removed on purpose, scan again with --allow-empty-root (the folder must exist)")
