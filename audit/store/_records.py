"""The records the run store reads and writes (audit.store._store holds the store itself)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Changes listed by name in summary.json and the report, per kind; the counts are always complete
# and the run store keeps every one (`audit runs --changes RUN`).
MAX_LISTED_CHANGES = 100


@dataclass(frozen=True)
class FileUpdate:
    """What one run learnt about one discovered file."""

    root: str
    path: str
    size: int | None
    mtime: float | None
    sha256: str
    verdict: str


@dataclass(frozen=True)
class StoredScore:
    sha256: str
    scoring_key: str
    model_id: str
    row: dict[str, Any]


@dataclass
class RunRecord:
    id: int
    started_at: str
    finished_at: str | None
    out_dir: str
    out_dir_created: bool
    files: int | None
    files_scored: int | None
    files_reused: int | None
    flagged: int | None
    errors: int | None
    exit_code: int | None
    partial: bool
    note: str


@dataclass
class RunCounts:
    files: int
    files_scored: int
    files_reused: int
    flagged: int
    errors: int


@dataclass
class Changes:
    """What is different since the last completed run on this store (the baseline)."""

    baseline_run: int | None
    new: int = 0
    changed: int = 0
    deleted: int = 0
    newly_flagged: int = 0
    listed: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    listed_limit: int = MAX_LISTED_CHANGES  # files listed per kind

    def to_json(self) -> dict[str, Any]:
        return {
            "baseline_run": self.baseline_run,
            "counts": {"new": self.new, "changed": self.changed, "deleted": self.deleted, "newly_flagged": self.newly_flagged},
            "listed": self.listed,
            "listed_limit": self.listed_limit,
        }
