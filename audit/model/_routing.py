"""Routing by image size: a card may send images no larger than a side to another model.

One network rarely holds both 32x32 thumbnails (CIFAKE) and photos at once; a card says so
openly with ``routes`` (each: the longest side it takes, the model, and why), and every row
scored through a route says which model scored it. The route's weights are pinned by sha256.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.model._card import LoadedModel, ModelError, load_one_model, model_paths, resolve_model
from audit.model._input_policy import Preprocessing

if TYPE_CHECKING:
    from audit.model._card import ModelCard


@dataclass(frozen=True)
class Route:
    """Images whose longer side is at most ``max_side`` pixels are scored by ``model``."""

    max_side: int
    model: str  # a shipped model's name, or a path relative to the routing card's folder
    weights_sha256: str
    reason: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Route":
        try:
            route = cls(max_side=int(data["max_side"]), model=str(data["model"]),
                        weights_sha256=str(data.get("weights_sha256", "")), reason=str(data.get("reason", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model card route is malformed ({exc}): {data!r}") from None
        if route.max_side < 1:
            raise ModelError(f"model card route: max_side must be >= 1 (got {route.max_side})")
        return route

    def describe(self) -> str:
        return f"images of at most {self.max_side} px on their longer side go to {self.model}" + (
            f" ({self.reason})" if self.reason else "")


def card_routes(card: ModelCard) -> list[Route]:
    return [Route.from_dict(item) for item in card.routes]


def load_routes(card: ModelCard, card_dir: Path, lazy: bool) -> list[tuple[Route, LoadedModel]]:
    """Each route's model, loaded and checked against the sha256 the card pins."""
    loaded = []
    for route in card_routes(card):
        candidate = card_dir / route.model
        spec = candidate if candidate.with_suffix(".json").is_file() or candidate.is_file() else route.model
        model = load_one_model(resolve_model(spec), lazy=lazy)
        if route.weights_sha256 and model.card.weights_sha256 != route.weights_sha256:
            raise ModelError(f"route model {route.model} is {model.model_id}, not the one the card pins "
                             f"(weights sha256 {route.weights_sha256[:12]})")
        if model.card.routes:
            raise ModelError(f"route model {route.model} routes again: one level of routing only")
        if (tuple(model.card.preprocessing.mean), tuple(model.card.preprocessing.std)) != (
                tuple(card.preprocessing.mean), tuple(card.preprocessing.std)):
            raise ModelError(f"route model {route.model} normalises differently from {card.name}; "
                             "a batch is normalised once")
        loaded.append((route, model))
    return loaded


def route_policies(routes: list[tuple[Route, LoadedModel]]) -> tuple[tuple[int, Preprocessing], ...]:
    """What the load stage needs: per route, its longest side and its model's input policy."""
    return tuple((route.max_side, model.card.preprocessing) for route, model in routes)


def route_index(width: int | None, height: int | None, policies: tuple[tuple[int, Preprocessing], ...]) -> int:
    """0: the card's own network; i: the i-th route (the first that takes the image)."""
    if width is None or height is None:
        return 0
    longer = max(width, height)
    for index, (max_side, _) in enumerate(policies, start=1):
        if longer <= max_side:
            return index
    return 0


def load_model(path: str | Path | None = None, verify_hash: bool = True, lazy: bool = False) -> LoadedModel:
    """Load a model from its card and safetensors weights (never unpickling), with the models
    its card routes images to. With ``lazy`` each network is built on first use."""
    model = load_one_model(path, verify_hash=verify_hash, lazy=lazy)
    if model.card.routes:
        _, card_path = model_paths(model.weights_path)
        model.routes = load_routes(model.card, card_path.parent, lazy)
    return model


def input_description(card: ModelCard) -> str:
    """How an image reaches the network, routes included, in words (audit models, the report)."""
    return "; ".join([card.preprocessing.describe(), *(Route.from_dict(item).describe() for item in card.routes)])
