"""summary.json: what a scan did, machine-readable (its presence means the run completed); the
format is audit.summary.RunSummary."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import audit
from audit.store import Changes, RunCounts
from audit.summary import ChangesRecord, ModelRecord, RunSummary, StoreRecord, ToolRecord
from audit.verdicts import VERDICT_AI, VERDICT_UNCERTAIN

if TYPE_CHECKING:
    from audit.config import ScanOptions
    from audit.model import LoadedModel
    from audit.pipeline._sinks import Tally


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def build_summary(options: ScanOptions, model: LoadedModel, compute: dict[str, Any] | None, workers: int, tally: Tally,
                  seconds: dict[str, float], started: datetime, exit_code: int, labels_unmatched: int | None,
                  record: RunRecordFacts) -> RunSummary:
    """The run's summary, made once, when everything it records is known."""
    return RunSummary(
        tool=ToolRecord("ai-image-audit", audit.__version__),
        started_at=iso_utc(started),
        finished_at=iso_utc(utc_now()),
        # Relative roots and model paths start here (audit report resolves them from it).
        cwd=os.getcwd(),
        exit_code=exit_code,
        files=tally.files,
        counts={"by_status": dict(tally.by_status), "by_verdict": dict(tally.by_verdict)},
        flagged=tally.by_verdict[VERDICT_AI],
        uncertain=tally.by_verdict[VERDICT_UNCERTAIN],  # not flagged: a person should look
        # Over the stages themselves (discover + load and score + write), not model loading.
        throughput_files_per_s=_throughput(tally.files, seconds),
        seconds={name: round(value, 3) for name, value in seconds.items()},
        model=model_record(model),
        threshold=model.card.threshold,
        # None when every row came from the run store: no device was chosen, no model ran.
        compute={**compute, "workers": workers, "batch_size": options.batch_size, "torch_threads": _torch_threads()}
        if compute
        else None,
        labels={"source": options.labels, "unmatched_csv_entries": labels_unmatched, **(tally.labelled_summary() or {})}
        if options.labels
        else None,
        options=options.to_json(),
        # The report files are listed when asked for; a report that then fails says so on stderr
        # and `audit report` renders it again.
        outputs=["results.csv", *(["results.xlsx"] if options.write_xlsx else []), "summary.json",
                 *(["report.html", "report.pdf", "heatmaps/"] if options.report else [])],
        engine=record.engine,
        files_scored=record.counts.files_scored,
        files_reused=record.counts.files_reused,
        store=StoreRecord(str(record.store_path.absolute()), record.run_id, "full" if options.full else "incremental",
                          "--store" if options.store else "default (follows the archives)", record.lock_takeover),
        changes=ChangesRecord(**record.changes.to_json()),
        review=record.review,
        # Lets the next run check that its rows are these very bytes before it copies the XLSX,
        # and, with the rows' fingerprint, copy results.csv without making its rows.
        output_sha256=dict(record.output_sha256),
        rows_fingerprint=record.rows_fingerprint,
        rows_copied_from_run=record.rows_copied_from_run,
    )


@dataclass(frozen=True)
class RunRecordFacts:
    """What the run and its store know at the end, for the summary."""

    engine: dict[str, Any]
    store_path: Path
    run_id: int
    lock_takeover: str | None
    counts: RunCounts
    changes: Changes
    review: dict[str, Any]
    output_sha256: dict[str, str]
    rows_fingerprint: str | None
    rows_copied_from_run: int | None


def model_record(model: LoadedModel) -> ModelRecord:
    card = model.card
    return ModelRecord(model.model_id, card.name, card.weights_sha256, str(model.weights_path), card.variant,
                       card.temperature, card.threshold, card.threshold_method)


def _throughput(files: int, seconds: dict[str, float]) -> float | None:
    stages = seconds["discover"] + seconds["load_and_score"] + seconds["write"]
    return round(files / stages, 2) if stages > 0 else None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
