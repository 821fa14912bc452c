"""``audit scan``: the orchestration of discover -> load -> score -> record for one run.

:func:`run_scan` is what the CLI calls; it returns a :class:`ScanOutcome` holding the summary
(also written to summary.json) and the exit code. It raises only for usage errors (a missing or
invalid model, an unusable --labels file, an unavailable device); anything wrong with a file in
the archive becomes that file's row.

Outputs are written under temporary names and renamed together at the end, summary.json last:
its presence means the run completed.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import audit
from audit.discover import DiscoverOptions, FileRecord, discover
from audit.labels import Labeller
from audit.loading import DEFAULT_MAX_PIXELS, LoadOptions
from audit.model import LoadedModel, load_model
from audit.provenance import EvidenceOptions, check_options, decide, evidence_cell, evidence_sources, load_trust_anchors
from audit.results import (
    STATUS_ERROR,
    STATUS_OK,
    VERDICT_AI,
    VERDICT_ERROR,
    VERDICT_REAL,
    ResultRow,
    ResultWriter,
    commit,
    discard_partial_outputs,
    write_json_tmp,
)
from audit.scoring import DEFAULT_BATCH_SIZE, Scored, Scorer, default_workers, plan_compute, score_records

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_ERRORS = 3
EXIT_FLAGGED = 4

PROGRESS_MODES = ("auto", "bar", "log", "none")
_LOG_EVERY_SECONDS = 10.0


@dataclass
class ScanOptions:
    archives: tuple[str, ...]
    out_dir: Path | None = None  # default: reports/<run-id>/
    model_path: str | None = None  # default: audit.model.DEFAULT_MODEL_PATH
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None  # default: scoring.default_workers
    batch_size: int = DEFAULT_BATCH_SIZE
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    labels: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    fail_on_flagged: bool = False
    progress: str = "auto"  # auto: a bar on a terminal, log lines otherwise; none: quiet
    draft: bool = True  # JPEG draft decoding (the benchmark turns it off to compare)
    write_xlsx: bool = True
    report: bool = True  # render report.html / report.pdf (audit.report) after the results
    max_gallery: int = 200  # flagged images shown in the report (most confident first)
    evidence: bool = True  # read provenance metadata (audit.provenance); off: the model alone decides
    trust_anchors: str | None = None  # PEM file of C2PA trust anchors; None: no trust list

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out_dir"] = str(self.out_dir) if self.out_dir else None
        data["archives"] = list(self.archives)
        data["include"], data["exclude"] = list(self.include), list(self.exclude)
        return data


@dataclass
class ScanOutcome:
    out_dir: Path
    summary: dict[str, Any]
    exit_code: int


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def default_out_dir(started: datetime, base: Path = Path("reports")) -> Path:
    """reports/<run-id>/, the run id being the UTC start time; never an existing folder."""
    run_id = started.strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base / run_id, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{run_id}-{n}"
    return candidate


def exit_code_for(errors: int, flagged: int, fail_on_flagged: bool) -> int:
    """4 (flagged, with --fail-on-flagged) wins over 3 (errors): a caller who asked to fail on
    flagged images is told about them first; summary.json has both counts."""
    if fail_on_flagged and flagged:
        return EXIT_FLAGGED
    if errors:
        return EXIT_ERRORS
    return EXIT_OK


# --------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on an interactive stderr, plain periodic lines otherwise, or nothing."""

    def __init__(self, total: int, mode: str) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.total, self.done = mode, total, 0
        self.started = self.last_log = time.monotonic()
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self.last_log >= _LOG_EVERY_SECONDS:
                self.last_log = now
                self.log_line()

    def log_line(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        print(f"audit scan: {self.done}/{self.total} files, {self.done / elapsed:.1f} files/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "log":
            self.log_line()

    def message(self, text: str) -> None:
        if self.mode != "none":
            print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- rows and counts


def make_row(scored: Scored, true_label: str, model: LoadedModel, scanned_at: str) -> ResultRow:
    result, record = scored.result, scored.result.record
    threshold = model.card.threshold
    row = ResultRow(
        path=record.rel_path,
        root=record.root,
        sha256=result.sha256,
        bytes=result.n_bytes,
        format=result.format,
        width=result.width,
        height=result.height,
        threshold=threshold,
        true_label=true_label,
        model_id=model.model_id,
        scanned_at=scanned_at,
        note=result.note,
    )
    if scored.prob_ai is None:
        row.status, row.error, row.verdict = STATUS_ERROR, result.error or "not scored", VERDICT_ERROR
    else:
        row.status, row.prob_ai = STATUS_OK, scored.prob_ai
        # prob_ai stays the model's; a declaration of AI generation can still flag the image.
        decision = decide(scored.prob_ai >= threshold, result.evidence)
        row.verdict = VERDICT_AI if decision.is_ai else VERDICT_REAL
        row.verdict_reason = decision.reason
    row.evidence, row.evidence_source = evidence_cell(result.evidence), evidence_sources(result.evidence)
    return row


@dataclass
class Tally:
    files: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: {STATUS_OK: 0, STATUS_ERROR: 0})
    by_verdict: dict[str, int] = field(default_factory=lambda: {VERDICT_AI: 0, VERDICT_REAL: 0, VERDICT_ERROR: 0})
    # confusion[true_label][verdict], for rows whose true label is known
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, row: ResultRow) -> None:
        self.files += 1
        self.by_status[row.status] = self.by_status.get(row.status, 0) + 1
        self.by_verdict[row.verdict] = self.by_verdict.get(row.verdict, 0) + 1
        if row.true_label:
            per_label = self.confusion.setdefault(row.true_label, {})
            per_label[row.verdict] = per_label.get(row.verdict, 0) + 1

    def labelled_summary(self) -> dict[str, Any] | None:
        if not self.confusion:
            return None
        scored = sum(n for label, verdicts in self.confusion.items() for v, n in verdicts.items() if v != VERDICT_ERROR)
        correct = sum(verdicts.get(label, 0) for label, verdicts in self.confusion.items())
        return {
            "files": sum(sum(v.values()) for v in self.confusion.values()),
            "scored": scored,
            "correct": correct,
            "accuracy": correct / scored if scored else None,
            "confusion": self.confusion,
        }


# --------------------------------------------------------------------------- the run


def run_scan(options: ScanOptions, model: LoadedModel | None = None) -> ScanOutcome:
    """Scan the archives and write results.csv, results.xlsx and summary.json."""
    started = utc_now()
    clock = time.perf_counter()
    model = model or load_model(options.model_path)
    plan = plan_compute(options.device, options.precision, model.card.compute_dtype)
    labeller = Labeller(options.labels)
    workers = options.workers if options.workers is not None else default_workers(plan.device)
    evidence_options = None
    if options.evidence:
        evidence_options = EvidenceOptions(trust_anchors_pem=load_trust_anchors(options.trust_anchors))
        check_options(evidence_options)  # bad trust anchors are a usage error: no output folder yet
    out_dir = options.out_dir or default_out_dir(started)
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    discover_options = DiscoverOptions(tuple(options.include), tuple(options.exclude), options.include_hidden)
    records = list(discover(options.archives, discover_options))
    seconds_discover = time.perf_counter() - t0

    load_options = LoadOptions(preprocessing=model.card.preprocessing, max_pixels=options.max_pixels, draft=options.draft,
                               evidence=evidence_options)
    scorer = Scorer(model, plan)
    progress = Progress(len(records), options.progress)
    if not records:
        progress.message("audit scan: warning: no image files found under the given archive(s)")
    tally = Tally()
    writer: ResultWriter | None = None
    seconds_writing_rows = 0.0
    t0 = time.perf_counter()
    try:
        writer = ResultWriter(out_dir, write_xlsx=options.write_xlsx)
        scored_stream = score_records(records, scorer, load_options, options.batch_size, workers)
        for row in _rows(scored_stream, labeller, model):
            tw = time.perf_counter()
            writer.write(row)
            seconds_writing_rows += time.perf_counter() - tw
            tally.add(row)
            progress.update()
        seconds_loop = time.perf_counter() - t0
        tw = time.perf_counter()
        renames = writer.finish()
        seconds = {
            "discover": seconds_discover,
            "load_and_score": seconds_loop - seconds_writing_rows,
            "write": seconds_writing_rows + time.perf_counter() - tw,
            "total": time.perf_counter() - clock,
        }
        exit_code = exit_code_for(tally.by_status[STATUS_ERROR], tally.by_verdict[VERDICT_AI], options.fail_on_flagged)
        summary = build_summary(options, model, plan.describe(), workers, tally, seconds, started, exit_code, labeller.unmatched)
        renames.append(write_json_tmp(out_dir / "summary.json", summary))
        commit(renames)  # summary.json last: its presence means the run is complete
    except BaseException:  # also SystemExit from SIGTERM and KeyboardInterrupt
        if writer is not None:
            writer.abort()
        discard_partial_outputs(out_dir)
        raise
    finally:
        progress.close()

    if options.report:
        _render_report(out_dir, model, options)
    progress.message(_closing_line(tally, out_dir))
    return ScanOutcome(out_dir=out_dir, summary=summary, exit_code=exit_code)


def _rows(scored_stream: Iterable[Scored], labeller: Labeller, model: LoadedModel) -> Iterable[ResultRow]:
    for scored in scored_stream:
        record: FileRecord = scored.result.record
        yield make_row(scored, labeller.label_for(record), model, iso_utc(utc_now()))


def build_summary(
    options: ScanOptions,
    model: LoadedModel,
    compute: dict[str, Any],
    workers: int,
    tally: Tally,
    seconds: dict[str, float],
    started: datetime,
    exit_code: int,
    labels_unmatched: int | None,
) -> dict[str, Any]:
    card = model.card
    return {
        "tool": {"name": "ai-image-audit", "version": audit.__version__},
        "started_at": iso_utc(started),
        "finished_at": iso_utc(utc_now()),
        "exit_code": exit_code,
        "files": tally.files,
        "counts": {"by_status": tally.by_status, "by_verdict": tally.by_verdict},
        "flagged": tally.by_verdict[VERDICT_AI],
        # Over the stages themselves (discover + load and score + write), not model loading.
        "throughput_files_per_s": _throughput(tally.files, seconds),
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "model": {
            "id": model.model_id,
            "name": card.name,
            "sha256": card.weights_sha256,
            "path": str(model.weights_path),
            "variant": card.variant,
            "temperature": card.temperature,
            "threshold": card.threshold,
            "threshold_method": card.threshold_method,
        },
        "threshold": card.threshold,
        "compute": {**compute, "workers": workers, "batch_size": options.batch_size, "torch_threads": _torch_threads()},
        "labels": {"source": options.labels, "unmatched_csv_entries": labels_unmatched, **(tally.labelled_summary() or {})}
        if options.labels
        else None,
        "options": options.to_json(),
        "outputs": ["results.csv", "results.xlsx", "summary.json"] if options.write_xlsx else ["results.csv", "summary.json"],
    }


def _render_report(out_dir: Path, model: LoadedModel, options: ScanOptions) -> None:
    """report.html, report.pdf and heatmaps/ from the files just written (audit.report).

    The results are complete and committed before this runs, so a report that fails does not
    cost the run: the error is said on stderr (even with --quiet: it is a failure) and
    `audit report OUT_DIR` renders it again.
    """
    from audit.report import render_report

    try:
        render_report(out_dir, model=model, max_gallery=options.max_gallery)
    except Exception as exc:  # noqa: BLE001 - the results stand; the report can be rendered again
        print(f"audit scan: warning: the report was not rendered ({type(exc).__name__}: {exc}); "
              f"run `audit report {out_dir}` to try again", file=sys.stderr, flush=True)


def _throughput(files: int, seconds: dict[str, float]) -> float | None:
    stages = seconds["discover"] + seconds["load_and_score"] + seconds["write"]
    return round(files / stages, 2) if stages > 0 else None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _closing_line(tally: Tally, out_dir: Path) -> str:
    v = tally.by_verdict
    return (
        f"audit scan: {tally.files} files: {v[VERDICT_AI]} ai-generated, {v[VERDICT_REAL]} real, "
        f"{v[VERDICT_ERROR]} errors -> {out_dir}"
    )
