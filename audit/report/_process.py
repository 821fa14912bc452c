"""The report's own process, started with the scan, so that its imports are made on the other core.

A report needs WeasyPrint, pypdf, matplotlib, seaborn and pandas (and scikit-learn with labels,
pytorch-grad-cam when new images may need a Grad-CAM): seconds of imports that one scan process
would make only after its rows, one core idle meanwhile. An unchanged night's whole scan takes
about as long as those imports. So a scan that will write a report starts
``python -m audit.report._process PARENT_PID`` before it walks the archive. The child imports
what the report needs (what the copy of an unchanged report needs first), taking hints from the
scan as it learns them (labels, something to score, last night's folder); on a night with
nothing to score it also reads last night's report for the copy (report_reuse.prepare_copy).
Then it waits for the job: the run folder, the model, the run store. It does what the scan did
itself before (report_reuse.write_report: copy or render, its messages relayed onto the scan's
stderr) while the scan holds the store's lock and waits.

This is a head start, never a condition: if the child cannot be started or ends without doing
the job, the scan says so and renders the report itself. The child dies with the scan
(PR_SET_PDEATHSIG, Linux) and is killed when the scan stops first. A scan whose process has the
report's imports already (an `audit` used as a library, the tests) renders in-process: there is
nothing left to gain.

The messages between them are JSON lines on the child's stdin: ``{"hint": {"labelled": bool,
"scoring": bool, "earlier_dir": str | null}}`` and ``{"job": {...}}`` (a ReportJob, once).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Callable

from audit.model import LoadedModel, ModelCard
from audit.report._reuse import (
    COPY_STAGE_IMPORTS,
    import_report_module,
    prepare_copy,
    report_stage_imports,
    write_report,
)


@dataclass(frozen=True)
class ReportJob:
    """What write_report needs, as the child rebuilds it."""

    out_dir: str  # absolute, as every path here: the child's working directory is the scan's only
    # once the job has come (it starts in the package's folder)
    cwd: str
    card: str  # the model card's JSON (the scan's card, which need not be a file's)
    weights: str
    max_gallery: int
    quiet: bool
    store: str | None  # the run store's path; None: no store
    baseline: int | None


def worth_a_process() -> bool:
    """A process pays only for imports this one has not made (and the child's waiting, select()
    on a pipe, is POSIX's)."""
    return os.name == "posix" and "weasyprint" not in sys.modules


class ReportProcess:
    """The scan's side: start the child, hint, hand over the job, relay its stderr."""

    def __init__(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        self._relay = threading.Thread(target=_relay_lines, args=(child.stderr, sys.stderr), daemon=True)
        self._relay.start()

    @classmethod
    def start(cls) -> ReportProcess | None:
        """The child, running from the package's own folder (never a same-named module in the
        scan's working directory); None, said on stderr, when it cannot be started."""
        try:
            child = subprocess.Popen([sys.executable, "-m", "audit.report._process", str(os.getpid())],
                                     cwd=Path(__file__).resolve().parents[2], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        except OSError as exc:
            print(f"audit scan: note: the report process could not be started ({exc}); the report is "
                  "rendered in this one", file=sys.stderr, flush=True)
            return None
        return cls(child)

    def hint(self, labelled: bool, scoring: bool, earlier_dir: Path | None) -> None:
        """What the scan knows once it has walked: labels, files to score, last night's folder."""
        self._send({"hint": {"labelled": labelled, "scoring": scoring,
                             "earlier_dir": str(earlier_dir.resolve()) if earlier_dir is not None else None}})

    def run(self, job: ReportJob) -> bool:
        """Hand over the job and wait for the child; False when it did not do it (the caller
        renders the report itself)."""
        sent = self._send({"job": asdict(job)})
        self._close_stdin()
        returncode = self.child.wait()
        self._relay.join(timeout=10)  # its stderr ends with it
        if sent and returncode == 0:
            return True
        print(f"audit scan: note: the report process ended with status {returncode}; rendering the report "
              "in this one", file=sys.stderr, flush=True)
        return False

    def close(self) -> None:
        """End the child if the job was never handed over (a stop, a failed run)."""
        if self.child.poll() is None:
            self.child.kill()
        self._close_stdin()
        self.child.wait()
        self._relay.join(timeout=5)

    def _send(self, message: dict[str, Any]) -> bool:
        try:
            self.child.stdin.write((json.dumps(message) + "\n").encode())  # type: ignore[union-attr]
            self.child.stdin.flush()  # type: ignore[union-attr]
            return True
        except (OSError, ValueError):  # the child is gone: run() says so
            return False

    def _close_stdin(self) -> None:
        try:
            self.child.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass


def _relay_lines(source: IO[bytes] | None, target: IO[str]) -> None:
    """The child's stderr, line by line, onto the scan's (sys.stderr when the child started),
    read to its end even when the scan's cannot be written (so the child never blocks on it)."""
    if source is None:
        return
    for line in iter(source.readline, b""):
        try:
            target.write(line.decode("utf-8", "replace"))
            target.flush()
        except (OSError, ValueError):  # a closed or broken stderr: the report goes on
            pass
    source.close()


# --------------------------------------------------------------------------- the child


class _Messages:
    """JSON lines from the scan, read without blocking between imports (os.read on the fd, so
    select() sees every line: a buffered reader could hold one select() does not know of)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer, self.closed = fd, b"", False

    def _lines(self) -> list[dict[str, Any]]:
        *complete, self.buffer = self.buffer.split(b"\n")
        return [json.loads(line) for line in complete if line.strip()]

    def ready(self) -> list[dict[str, Any]]:
        """What has arrived, without waiting."""
        while not self.closed and select.select([self.fd], [], [], 0)[0]:
            self._read()
        return self._lines()

    def wait(self) -> list[dict[str, Any]]:
        """At least one message, or [] once the scan closed the pipe."""
        while not self.closed:
            self._read()
            lines = self._lines()
            if lines:
                return lines
        return self._lines()

    def _read(self) -> None:
        chunk = os.read(self.fd, 65536)
        self.closed = not chunk
        self.buffer += chunk


@dataclass
class _ChildState:
    """What the child has learnt from the scan and done while it waits for the job."""

    hint: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    imported: set[str] = field(default_factory=set)
    prepared: bool = False

    def take(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self.hint = message.get("hint", self.hint)
            self.job = message.get("job", self.job)

    def work_once(self) -> bool:
        """One import (the job may come between two), then the copy's preparation; False when
        there is nothing to do until a message comes. A step that fails is said and left: the
        job does it again, or says why it cannot."""
        hint = self.hint or {"labelled": False, "scoring": False, "earlier_dir": None}
        # A night with nothing to score most likely copies last night's report: its job comes
        # soon, and the renderer's imports would only delay it.
        wanted = report_stage_imports(hint["labelled"]) if hint["scoring"] else COPY_STAGE_IMPORTS
        pending = next((name for name in wanted if name not in self.imported), None)
        if pending is not None:
            self.imported.add(pending)
            _ahead(import_report_module, pending)
            return True
        if self.hint is not None and not self.prepared:
            self.prepared = True
            _ahead(prepare_copy, None if hint["scoring"] or hint["earlier_dir"] is None else Path(hint["earlier_dir"]))
            return True
        return False


def _ahead(step: Callable[[Any], None], argument: Any) -> None:
    try:
        step(argument)
    except Exception as exc:  # noqa: BLE001 - only a head start
        print(f"audit scan: note: the report process could not prepare ({type(exc).__name__}: {exc})",
              file=sys.stderr, flush=True)


def child_main(parent_pid: int) -> int:
    from audit.stopping import die_with_parent

    die_with_parent()
    if os.getppid() != parent_pid:  # the scan died before the kernel was asked to end this one
        return 1
    # Ctrl-C reaches the whole process group: the scan decides, and ends this one if it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    messages = _Messages(sys.stdin.fileno())
    state = _ChildState()
    while True:
        state.take(messages.ready())
        if state.job is not None:
            break
        if messages.closed:
            return 0  # the scan ended without a report to make (it stopped, or failed)
        if not state.work_once():
            state.take(messages.wait())
    _do(ReportJob(**state.job))
    # Straight out: the scan waits for this exit, an orderly one is slow with the report's modules loaded,
    # and there is nothing left to flush or close.
    sys.stderr.flush()
    os._exit(0)


def _do(job: ReportJob) -> None:
    from audit.store import RunStore

    # The archives' roots in results.csv are as the scan was given them: relative to its folder.
    os.chdir(job.cwd)
    model = LoadedModel(None, ModelCard.from_json(job.card), Path(job.weights))
    store = RunStore(Path(job.store)) if job.store else None
    try:
        write_report(Path(job.out_dir), model, job.max_gallery, job.quiet, store, job.baseline, made_by="report process")
    finally:
        if store is not None:
            store.close()


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1])))
