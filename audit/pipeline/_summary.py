"""summary.json: what a scan did, machine-readable (its presence means the run completed)."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import audit
from audit.store import Changes, RunCounts
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
                  seconds: dict[str, float], started: datetime, exit_code: int,
                  labels_unmatched: int | None) -> dict[str, Any]:
    return {
        "tool": {"name": "ai-image-audit", "version": audit.__version__},
        "started_at": iso_utc(started),
        "finished_at": iso_utc(utc_now()),
        # Relative roots and model paths start here (audit report resolves them from it).
        "cwd": os.getcwd(),
        "exit_code": exit_code,
        "files": tally.files,
        "counts": {"by_status": tally.by_status, "by_verdict": tally.by_verdict},
        "flagged": tally.by_verdict[VERDICT_AI],
        "uncertain": tally.by_verdict[VERDICT_UNCERTAIN],  # not flagged: a person should look
        # Over the stages themselves (discover + load and score + write), not model loading.
        "throughput_files_per_s": _throughput(tally.files, seconds),
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "model": model_summary(model),
        "threshold": model.card.threshold,
        # None when every row came from the run store: no device was chosen, no model ran.
        "compute": {**compute, "workers": workers, "batch_size": options.batch_size, "torch_threads": _torch_threads()}
        if compute
        else None,
        "labels": {"source": options.labels, "unmatched_csv_entries": labels_unmatched, **(tally.labelled_summary() or {})}
        if options.labels
        else None,
        "options": options.to_json(),
        # The report files are listed when asked for; a report that then fails says so on stderr
        # and `audit report` renders it again.
        "outputs": ["results.csv", *(["results.xlsx"] if options.write_xlsx else []), "summary.json",
                    *(["report.html", "report.pdf", "heatmaps/"] if options.report else [])],
    }


def model_summary(model: LoadedModel) -> dict[str, Any]:
    card = model.card
    return {
        "id": model.model_id,
        "name": card.name,
        "sha256": card.weights_sha256,
        "path": str(model.weights_path),
        "variant": card.variant,
        "temperature": card.temperature,
        "threshold": card.threshold,
        "threshold_method": card.threshold_method,
    }


def store_summary(store_path: Path, run_id: int, counts: RunCounts, changes: Changes, full: bool) -> dict[str, Any]:
    """summary.json's run-store fields: how much was reused, and what changed since the last run."""
    return {
        "files_scored": counts.files_scored,
        "files_reused": counts.files_reused,
        "store": {"path": str(store_path.absolute()), "run_id": run_id, "mode": "full" if full else "incremental"},
        "changes": changes.to_json(),
    }


def _throughput(files: int, seconds: dict[str, float]) -> float | None:
    stages = seconds["discover"] + seconds["load_and_score"] + seconds["write"]
    return round(files / stages, 2) if stages > 0 else None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
