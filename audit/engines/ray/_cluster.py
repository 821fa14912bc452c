"""The Ray engine's link to its cluster: joining it, and noticing when it goes away.

* :func:`connect` joins a cluster (or starts a private ``local`` one) without Ray's usage
  statistics and without letting ``ray.init`` take over the scan's signal handlers; an address
  where nothing answers fails at once (:func:`check_reachable`) instead of after minutes of retries;
* :class:`HeadWatchdog` polls the head while the run streams and interrupts the scan with
  ``audit.errors.EngineLost`` when it stays unreachable;
* :func:`guarded` turns a failure of Ray itself during the stream into ``EngineLost``.

A cluster that cannot be used before the run is :class:`RayUnavailable` (exit 2); one lost
during the run is ``EngineLost`` (the scan stops in order and exits 6).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any, Callable, Iterator

from audit.model import ComputeError

INSTALL_HINT = "pip install 'ai-image-audit[ray]'"
# The head's GCS port unreachable for this long means the cluster is gone. Ray's own driver code
# would wait 60 s and then end the whole process with exit code 1, before the scan could say why.
HEAD_LOST_SECONDS = 10.0
HEAD_POLL_SECONDS = 2.0


class RayUnavailable(ComputeError):
    """Ray is not installed, no cluster can be reached, or a node cannot see the files (exit 2)."""


def connect(ray: Any, address: str) -> bool:
    """Join the cluster at ``address``; return whether this call joined it (False: a caller, a
    notebook or the tests, had already joined one, which is then used as it is)."""
    if ray.is_initialized():
        return False
    # Ray's usage statistics would be sent from the cluster; a forensic tool does not send them.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR,
                              "configure_logging": True}
    check_reachable(address)
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        if "Authentication" in f"{exc!r} {exc.__cause__!r}":
            raise RayUnavailable(
                f"--ray-address {address}: the cluster refused this driver's token. Ray's token "
                "authentication needs RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, "
                "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) here too (docs/scale-out.md)") from None
        raise RayUnavailable(
            f"--ray-address {address}: no Ray cluster could be reached ({first_line(exc)}). Start "
            "one (`ray start --head`, see docs/scale-out.md) or use --ray-address local for a private "
            "one-machine cluster") from None
    finally:
        # ray.init installs its own SIGTERM handler; the scan's orderly stop must stay in charge.
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)
    return True


def knock(address: str, timeout: float) -> None:
    """Open and close a TCP connection to HOST:PORT (an IPv6 host in brackets); OSError if
    nothing answers."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A HOST:PORT where nothing answers fails at once; ray.init would retry it for minutes."""
    if address in ("auto", "local"):
        return
    try:
        knock(address, timeout)
    except OSError as exc:
        raise RayUnavailable(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or exc}); "
                             "start one with `ray start --head` (docs/scale-out.md) or use --ray-address local") from None


class HeadWatchdog:
    """Polls the head's GCS port (a plain TCP connect: the engine listens on nothing) while the
    run streams. When it stays unreachable for HEAD_LOST_SECONDS, ``on_lost`` is told why and the
    main thread is interrupted with EngineLost (through SIGUSR1, whose handler this installs for
    the run), so the scan stops in order and exits 6 instead of being ended by Ray 60 s later
    with exit code 1."""

    def __init__(self, gcs_address: str, on_lost: Callable[[str], None]) -> None:
        self.gcs_address, self._on_lost = gcs_address, on_lost
        self.reason: str | None = None  # why the cluster is deemed gone, once it is
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: Any = None
        self._main = threading.main_thread().ident

    def start(self) -> None:
        if not self.gcs_address or threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread; elsewhere Ray's own timeout applies
        self._previous = signal.signal(signal.SIGUSR1, self._raise_lost)
        self._thread = threading.Thread(target=self._watch, name="audit-ray-head-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEAD_POLL_SECONDS * 2)
            self._thread = None
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGUSR1, self._previous)

    def _raise_lost(self, _signum: int, _frame: Any) -> None:
        from audit.errors import EngineLost

        raise EngineLost(self.reason or "the Ray cluster was lost")

    def _watch(self) -> None:
        unreachable_since: float | None = None
        while not self._stop.wait(HEAD_POLL_SECONDS):
            try:
                knock(self.gcs_address, HEAD_POLL_SECONDS)
                unreachable_since = None
            except OSError as exc:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= HEAD_LOST_SECONDS:
                    self.reason = (f"the Ray cluster was lost during the run: its head {self.gcs_address} "
                                   f"has not answered for {HEAD_LOST_SECONDS:.0f} s ({exc.strerror or exc})")
                    self._on_lost(self.reason)
                    signal.pthread_kill(self._main, signal.SIGUSR1)
                    return


def guarded(stream: Any, ray: Any) -> Iterator[Any]:
    """Iterate the dataset; a failure of Ray itself (a lost head, a dead node, too many lost
    blocks) becomes audit.errors.EngineLost with Ray's reason, so the scan can say so and exit."""
    from audit.errors import EngineLost

    iterator = iter(stream)
    while True:
        try:
            block = next(iterator)
        except StopIteration:
            return
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - Ray raises many kinds; all mean the same to the run
            if isinstance(exc, ray.exceptions.RayError) or isinstance(exc, (ConnectionError, OSError)):
                raise EngineLost(f"the Ray cluster failed during the run: {first_line(exc)}") from exc
            raise
        yield block


def first_line(exc: BaseException) -> str:
    """An exception's first line, bounded: Ray's messages carry whole tracebacks."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
