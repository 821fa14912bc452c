"""summary.json, the run's record for automation: :class:`RunSummary`, written once and last by
the scan (its presence means the run completed), read back only through :func:`read_summary`.

Its fields are a versioned output format, documented in docs/output-format.md. FORMAT_VERSION is
"MAJOR.MINOR": a new field bumps the minor number; a field removed, renamed or given another
meaning bumps the major one. A reader takes any summary of its major version or older (a field
an older summary lacks gets its default) and refuses a newer major version.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.errors import UsageError

FORMAT_VERSION = "2.1"
# Summaries written before the format had a version.
UNVERSIONED = "1.0"


class SummaryError(UsageError):
    """A summary.json that cannot be read: not JSON, not an object, or of a newer major version."""


@dataclass(frozen=True)
class ToolRecord:
    name: str = "ai-image-audit"
    version: str = "unknown"


@dataclass(frozen=True)
class ModelRecord:
    """The model the run judged with."""

    id: str = ""
    name: str = ""
    sha256: str = ""  # of the weights file
    path: str = ""  # the weights file as the scan was given it (relative paths start at ``cwd``)
    variant: str = ""
    temperature: float | None = None
    threshold: float | None = None
    threshold_method: str = ""


@dataclass(frozen=True)
class StoreRecord:
    """The run store the run used."""

    path: str = ""
    run_id: int | None = None  # this run's id in the store
    mode: str = "incremental"  # or "full" (--full: nothing reused)
    chosen_by: str = ""  # "--store" or "default (follows the archives)"
    lock_takeover: str | None = None  # a killed run's lock taken over, in words


@dataclass(frozen=True)
class ChangesRecord:
    """What differs since the last completed run on the store. The counts are complete; ``listed``
    holds at most ``listed_limit`` files of each kind (`audit runs --changes RUN` lists all)."""

    baseline_run: int | None = None  # None: no earlier completed run, every file is new
    counts: dict[str, int] = field(default_factory=dict)  # new, changed, deleted, newly_flagged
    listed: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # kind -> [{root, path, sha256, verdict}]
    listed_limit: int = 0


@dataclass(frozen=True)
class RunSummary:
    """One completed run. Field by field in docs/output-format.md."""

    format_version: str = FORMAT_VERSION
    tool: ToolRecord = field(default_factory=ToolRecord)
    started_at: str = ""  # ISO 8601 UTC
    finished_at: str = ""
    cwd: str = ""  # the scan's working folder: where relative archive and model paths start
    exit_code: int | None = None
    files: int = 0  # rows in results.csv: every file found
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # by_status, by_verdict
    flagged: int = 0
    uncertain: int = 0  # files with verdict uncertain: not flagged, a person should look (2.1)
    throughput_files_per_s: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # discover, store_lookup, load_and_score, write, total
    model: ModelRecord = field(default_factory=ModelRecord)
    threshold: float | None = None
    compute: dict[str, Any] | None = None  # device, precision, threads; None: nothing was scored
    labels: dict[str, Any] | None = None  # with --labels: source, unmatched entries, labelled metrics
    options: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)  # name, and what the engine measured
    files_scored: int = 0
    files_reused: int = 0
    store: StoreRecord | None = None
    changes: ChangesRecord | None = None
    review: dict[str, Any] | None = None  # reviewers' decisions as the run applied them
    output_sha256: dict[str, str] = field(default_factory=dict)  # results.csv, results.xlsx
    rows_fingerprint: str | None = None  # what the rows are made of (audit.pipeline._reuse.RowsFingerprint)
    rows_copied_from_run: int | None = None  # the store run whose results were copied, unchanged

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        """A summary from its JSON object; fields it lacks get their defaults, unknown ones are left."""
        values = _known(cls, data)
        values["format_version"] = str(data.get("format_version") or UNVERSIONED)
        for name, record in (("tool", ToolRecord), ("model", ModelRecord), ("store", StoreRecord),
                             ("changes", ChangesRecord)):
            if isinstance(values.get(name), dict):
                values[name] = record(**_known(record, values[name]))
            elif name in values and name in ("tool", "model"):
                del values[name]
        return cls(**values)


def _known(record: type, data: dict[str, Any]) -> dict[str, Any]:
    names = {item.name for item in dataclasses.fields(record)}
    return {name: value for name, value in data.items() if name in names}


def read_summary(path: Path) -> RunSummary:
    """The summary.json at ``path`` (SummaryError when it cannot be read as one)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SummaryError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise SummaryError(f"{path} is not a summary.json of audit scan (not a JSON object)")
    version = str(data.get("format_version") or UNVERSIONED)
    if _major(version) > _major(FORMAT_VERSION):
        raise SummaryError(f"{path} has format version {version}, newer than this audit reads ({FORMAT_VERSION}); "
                           "use a newer audit")
    try:
        return RunSummary.from_json(data)
    except TypeError as exc:
        raise SummaryError(f"{path} is not a summary.json of audit scan ({exc})") from None


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0
