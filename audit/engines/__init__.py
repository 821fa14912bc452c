"""Score: one :class:`ScoringEngine` interface, with the local engine (a DataLoader on this
machine) and the Ray engine (``audit.engines.ray``) behind it. Both yield calibrated probabilities
in the records' order.
"""

from __future__ import annotations

from audit.engines._local import LocalEngine, Scorer, collate_results, make_loader, score_records
from audit.engines.base import ENGINES, EngineRequest, Scored, ScoringEngine, create_engine, engine_class

__all__ = ["ENGINES", "EngineRequest", "LocalEngine", "Scored", "ScoringEngine", "Scorer", "collate_results", "create_engine", "engine_class", "make_loader", "score_records"]
