"""SIGTERM/SIGINT stop a scan with exit status 128 + signal, even when the handler's exception is lost."""

from __future__ import annotations

import gc
import os
import signal
import time

import pytest

from audit import stopping
from audit.stopping import raise_if_stop_requested, stop_on_signals


class _SignalsInFinalizer:
    """Python prints and drops an exception raised in __del__, as it does in the at-fork hooks
    that run while a DataLoader starts its workers: the case that let a stopped scan finish."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # the handler runs here, inside the finalizer


def test_sigterm_raises_exit_143() -> None:
    with pytest.raises(SystemExit) as stopped:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert stopped.value.code == 143


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped SystemExit
def test_a_signal_whose_exception_was_dropped_still_stops_the_run() -> None:
    rows_after_signal = 0
    with pytest.raises(SystemExit) as stopped:
        with stop_on_signals():
            _SignalsInFinalizer()
            gc.collect()
            assert stopping._requested_signal == signal.SIGTERM  # the run goes on until it polls
            for _ in range(3):
                raise_if_stop_requested()
                rows_after_signal += 1
    assert stopped.value.code == 143
    assert rows_after_signal == 0


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped SystemExit
def test_an_error_after_the_signal_reports_the_signal() -> None:
    with pytest.raises(SystemExit) as stopped:
        with stop_on_signals():
            _SignalsInFinalizer()
            gc.collect()
            raise RuntimeError("DataLoader worker (pid 123) exited unexpectedly")
    assert stopped.value.code == 143


def test_handlers_are_restored_and_a_clean_block_passes() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals():
        pass
    assert signal.getsignal(signal.SIGTERM) is before
    assert stopping._requested_signal is None
