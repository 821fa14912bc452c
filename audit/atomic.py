"""Write a file so that a reader, or a kill mid-write, never sees half of it: write to a
temporary name beside it, then rename (atomic on POSIX within one file system)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """``NAME.tmp`` beside ``path``: a fixed name, so a write cut short by a kill is replaced by the
    next one rather than left behind (writers are told the format; none guesses it from the name)."""
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces ``path`` when the block ends, and is removed
    when the block raises."""
    final = Path(path)
    temporary = temporary_sibling(final)
    try:
        yield temporary
        temporary.replace(final)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
