"""Orderly stop on SIGTERM and SIGINT.

A nightly job is stopped with SIGTERM (`systemctl stop`, `kill`) or SIGINT (Ctrl-C). The handler
raises SystemExit(128 + signal) so the scan unwinds normally: partial outputs are removed and the
run store records the run as partial.

Raising from a signal handler is not enough on its own. Python runs the handler at the next
bytecode of the main thread, and when that happens inside a callback whose exceptions are ignored
(the at-fork hooks that run while a DataLoader starts its workers, a __del__, a weakref callback)
the SystemExit is printed and dropped, and the run would go on to finish as if nothing had
happened. So the handler also records the signal, the scan loop polls it with
`raise_if_stop_requested()`, and `stop_on_signals()` turns any exception that escapes after a
signal (a worker that died of it, say) into the same exit status.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from types import FrameType
from typing import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested_signal: int | None = None
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def raise_if_stop_requested() -> None:
    if _requested_signal is not None:
        raise SystemExit(128 + _requested_signal)


def _handle(signum: int, _frame: FrameType | None) -> None:
    global _requested_signal
    _requested_signal = signum
    raise SystemExit(128 + signum)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT stop the run with exit status 128 + the signal."""
    global _requested_signal
    _requested_signal = None
    previous = {signum: signal.signal(signum, _handle) for signum in STOP_SIGNALS}
    try:
        yield
    except BaseException:
        if _requested_signal is not None:
            raise SystemExit(128 + _requested_signal) from None
        raise
    else:
        # The signal came while its exception was being dropped, after the last poll.
        raise_if_stop_requested()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process (a decode worker) when the
    process that started it dies (Linux).

    A scan killed outright (SIGKILL: the OOM killer, a node drain, a timeout) runs no cleanup, and
    its workers were seen to live on as orphans for minutes, blocked on a pipe that no one read.
    They hold nothing worth keeping: the main process owns the store and the outputs. (The kernel
    watches the *thread* that forked the process: for a decode worker, the one that iterates the
    loader; the scan iterates in its main thread.) Elsewhere than on Linux this does nothing: a
    decode worker's loop still checks its parent.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the loop's parent check still ends the worker
        pass
