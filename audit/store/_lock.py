"""The run store's lock: one run at a time per store, and never a store locked by the dead.

A run holds an exclusive POSIX record lock (``fcntl.lockf``) on ``STORE.lock`` for its whole
length. The kernel drops it when the process dies (SIGKILL included), and, unlike a ``flock``, a
record lock belongs to the process and is not held by children it forks: a DataLoader worker
orphaned by a killed scan cannot keep the next night out (it once did, through the flock
descriptor it inherited). The pid, host and start time written into the lock file name the
holder in the message; a run that finds them left behind by a process that died without
releasing the lock takes the store over and says so.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from audit.errors import EXIT_LOCKED, UsageError


class StoreError(UsageError):
    """The store cannot be used (wrong schema version, not a run store); the user must act."""


class StoreLocked(StoreError):
    """Another process holds the store's lock."""

    exit_code = EXIT_LOCKED


def utc_text(moment: datetime | None = None) -> str:
    moment = moment or datetime.now(timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


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
