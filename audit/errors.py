"""Exit codes and the one error base the command line catches.

A run goes on past a bad file (its row says why); it stops with a ``UsageError`` when the user
must act: a missing model, an unusable option, a store that another run holds. Each error
carries the exit code the CLI returns for it, so the CLI catches this one type.
"""

from __future__ import annotations

import errno
from pathlib import Path

EXIT_OK = 0
EXIT_USAGE = 2  # bad option, missing or invalid model, unusable --labels or evidence options
EXIT_ERRORS = 3  # some files could not be scored (their rows say why)
EXIT_FLAGGED = 4  # --fail-on-flagged and something was flagged, or --fail-on-uncertain and something uncertain (4 wins over 3)
EXIT_LOCKED = 5  # the run store is in use by another run (nothing was written)
EXIT_ENGINE_LOST = 6  # --engine ray: the cluster failed mid-run; committed batches stay in the store
EXIT_DISK_FULL = 7  # no space left while writing an output or the store; nothing replaced, committed batches stay
EXIT_STORE_DAMAGED = 8  # the run store is damaged (SQLite's check fails); nothing was written to it
EXIT_ROOT_MISSING = 9  # an archive root the store knows files under is gone or empty (an unmounted disk?)


class UsageError(Exception):
    """A run cannot start, or cannot go on, until the user acts. The message says what to do."""

    exit_code = EXIT_USAGE
    advice = ""  # said after the message by the CLI (not part of what a run records)


class EngineLost(UsageError):
    """The distributed scoring engine went away mid-run. Unlike most errors of this base, the
    run had started: what was committed stays in the run store and the next run resumes from it."""

    exit_code = EXIT_ENGINE_LOST
    advice = "; the batches committed so far are in the run store and the next run resumes from them"


class DiskFull(UsageError):
    """No space left on the device while writing ``what``. Outputs are written under temporary
    names, so nothing under a final name was replaced; batches committed to the store stay."""

    exit_code = EXIT_DISK_FULL

    def __init__(self, what: str, where: Path | None = None, advice: str = "") -> None:
        self.what, self.where = what, where
        self.advice = advice or ("; nothing was replaced; the batches committed so far stay in the run store and "
                                 "the next run resumes from them")
        super().__init__(f"no space left on device while writing {what}" + (f" in {where}" if where else ""))


class RootMissing(UsageError):
    """An archive root is gone, or empty, while the run store knows files under it."""

    exit_code = EXIT_ROOT_MISSING


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC (or EDQUOT, a quota) from the OS, or a DiskFull already said (the run store turns
    SQLite's "database or disk is full" into one)."""
    if isinstance(exc, DiskFull):
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def raise_if_disk_full(exc: BaseException, what: str, where: Path | None = None) -> None:
    """Raise :class:`DiskFull` (from ``exc``) when ``exc`` says the disk is full; the caller
    re-raises ``exc`` otherwise."""
    if is_disk_full(exc) and not isinstance(exc, DiskFull):
        raise DiskFull(what, where) from exc
