"""The contract every scoring engine keeps, whatever it runs on.

An engine takes the records to score and yields one :class:`Scored` per record, in the records'
order: the run does not know whether a DataLoader on this machine or a Ray cluster did the work.
Engines are found by name through :func:`create_engine` (``--engine local|ray``).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence

from audit.config import ScanOptions
from audit.errors import UsageError
from audit.intake import FileRecord, LoadOptions, LoadResult
from audit.model import ComputePlan, LoadedModel


@dataclass
class Scored:
    result: LoadResult
    prob_ai: float | None  # None when the file could not be loaded
    # How unlike the training images it is (audit.model.NoveltyStatistics); None: the card has no statistics.
    novelty: float | None = None
    prob_degraded: float | None = None  # prob_ai of its degraded copy, when the run checks one


@dataclass(frozen=True)
class EngineRequest:
    """What every engine is given: the model, how to load a file, and the run's compute options."""

    model: LoadedModel
    load_options: LoadOptions
    options: ScanOptions
    plan: ComputePlan | None = None  # a compute plan chosen already (``--device cuda`` is checked early)


class ScoringEngine(ABC):
    """start (connect, check), score (in order), close (leave); what it used, for summary.json."""

    name: ClassVar[str]

    @classmethod
    def check_options(cls, options: ScanOptions) -> None:
        """Raise a UsageError for options this engine cannot honour, before anything is written."""

    def start(self, records: Sequence[FileRecord]) -> None:
        """Get ready to score ``records`` (connect to a cluster, check paths); called once."""

    @abstractmethod
    def score(self, records: Sequence[FileRecord]) -> Iterator[Scored]:
        """One Scored per record, in the records' order; a bad file is a Scored without a probability."""

    def close(self) -> None:
        """Release what start took; safe to call after a failure or twice."""

    @abstractmethod
    def engine_record(self) -> dict[str, Any]:
        """summary.json's ``engine`` record: the engine's name and what it measured."""

    @abstractmethod
    def compute_record(self) -> dict[str, Any] | None:
        """summary.json's ``compute`` record: device, precision, threads."""

    @property
    def workers(self) -> int:
        """Decode worker processes on this machine (0 when the engine decodes elsewhere)."""
        return 0


# Engines by name: the module and class, imported only when that engine is asked for.
ENGINES: dict[str, str] = {"local": "audit.engines._local:LocalEngine", "ray": "audit.engines.ray._engine:RayEngine"}


def engine_class(name: str) -> type[ScoringEngine]:
    if name not in ENGINES:
        raise UsageError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_engine(request: EngineRequest) -> ScoringEngine:
    """The engine ``request.options.engine`` names, built for this request."""
    return engine_class(request.options.engine)(request)
