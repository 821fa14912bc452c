"""The model stage: a model card plus safetensors weights -> a ready ``torch.nn.Module``.

This module holds the card, the network architectures, and saving, finding and loading a
model; how an image becomes the network's input (the card's ``preprocessing``) lives in
:mod:`audit.model._input_policy`.

A model is two files side by side: ``NAME.safetensors`` (weights) and ``NAME.json`` (the card).
Loading never unpickles anything: a ``torch.save`` / pickle file is refused with a clear message.
The training package builds its networks with :func:`build_network`, so a trained model loads
here without conversion.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from audit.atomic import atomic_path, write_text
from audit.errors import UsageError
from audit.model._input_policy import Preprocessing
from audit.model._uncertainty import Uncertainty

if TYPE_CHECKING:  # torch is imported where a network is built or run: a rerun that scores nothing never pays for it
    import torch
    from torch import nn

CARD_SCHEMA_VERSION = 1
SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "weights"
# The default detector: fine-tuned on CIFAKE and wild images. cifake-resnet18 (CIFAKE only)
# ships beside it so its published comparison stays reproducible (`--model cifake-resnet18`).
DEFAULT_MODEL_NAME = "general-resnet18"
DEFAULT_MODEL_PATH = SHIPPED_MODELS_DIR / f"{DEFAULT_MODEL_NAME}.json"

# Index of each class in the network's output. Folder names in training data map onto these.
CLASS_NAMES = ("real", "ai-generated")
AI_CLASS_INDEX = 1


class ModelError(UsageError):
    """A model cannot be used; the user must act (wrong path, pickle file, broken card)."""


# --------------------------------------------------------------------------- architectures


def _resnet18_stock(num_classes: int) -> nn.Module:
    from audit.model._resnet import ResNet18

    return ResNet18(num_classes=num_classes)


def _resnet18_s1_stem(num_classes: int) -> nn.Module:
    """ResNet18 with a 3x3 stride-1 stem that keeps the max-pool.

    At 32x32 input the stock stem (7x7 stride 2 + max-pool) leaves layer4 at 1x1, which gives
    Grad-CAM a single pixel. This stem keeps twice the resolution: layer3 is 4x4, layer4 2x2.
    """
    from torch import nn

    from audit.model._resnet import ResNet18

    net = ResNet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return net


# A small registry in the spirit of timm's: card["variant"] -> constructor.
ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": _resnet18_stock,
    "resnet18-s1stem": _resnet18_s1_stem,
}


# Stride-2 steps (each ceil(n / 2)) before a layer's output, by variant: the Grad-CAM grid of a
# card is known without building the network (and without importing torch).
_HALVINGS_BEFORE = {
    "resnet18": {"layer1": 2, "layer2": 3, "layer3": 4, "layer4": 5},  # 7x7 stride-2 stem, max-pool
    "resnet18-s1stem": {"layer1": 1, "layer2": 2, "layer3": 3, "layer4": 4},  # max-pool only
}


def gradcam_grid_of(card: ModelCard) -> tuple[int, int] | None:
    """(rows, columns) of the card's Grad-CAM map at its input size; None for a layer not listed
    (audit.report._explain.gradcam_grid measures it on the network)."""
    halvings = _HALVINGS_BEFORE.get(card.variant, {}).get(card.gradcam_layer)
    if halvings is None:
        return None
    size = card.preprocessing.input_size
    for _ in range(halvings):
        size = -(-size // 2)
    return size, size


def build_network(variant: str, num_classes: int = len(CLASS_NAMES)) -> nn.Module:
    """Build an untrained network of a registered variant."""
    try:
        constructor = ARCHITECTURES[variant]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelError(f"unknown model variant {variant!r}; known variants: {known}") from None
    return constructor(num_classes)


# --------------------------------------------------------------------------- the model card


@dataclass
class ModelCard:
    """What is needed to use the weights correctly and to judge them (see shared/DESIGN.md)."""

    name: str
    architecture: str = "resnet18"
    variant: str = "resnet18-s1stem"
    class_names: tuple[str, ...] = CLASS_NAMES
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    # Calibrated probability: softmax(logits / temperature)[AI_CLASS_INDEX].
    temperature: float = 1.0
    threshold: float = 0.5
    threshold_method: str = "fixed at 0.5 (not chosen on data)"
    gradcam_layer: str = "layer3"
    weights_dtype: str = "float32"
    compute_dtype: str = "float32"
    weights_sha256: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    validation_metrics: dict[str, Any] = field(default_factory=dict)
    test_metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Images a route takes by size are scored by another model (audit.model._routing).
    routes: list[dict[str, Any]] = field(default_factory=list)
    schema_version: int = CARD_SCHEMA_VERSION
    # The rules for the "uncertain" verdict (audit.model._uncertainty); None: no row is uncertain.
    uncertainty: Uncertainty | None = None

    @property
    def model_id(self) -> str:
        return f"{self.name}@{self.weights_sha256[:12]}" if self.weights_sha256 else self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        if data.get("schema_version") != CARD_SCHEMA_VERSION:
            raise ModelError(
                f"model card schema version {data.get('schema_version')!r} is not supported "
                f"(this tool reads version {CARD_SCHEMA_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"model card has unknown fields: {', '.join(unknown)}")
        values = dict(data)
        pre = dict(values.get("preprocessing", {}))
        for key in ("mean", "std", "alpha_background"):
            if key in pre:
                pre[key] = tuple(pre[key])
        try:
            values["preprocessing"] = Preprocessing(**pre)
            values["class_names"] = tuple(values.get("class_names", CLASS_NAMES))
            if values.get("uncertainty") is not None:
                values["uncertainty"] = Uncertainty.from_dict(values["uncertainty"])
            card = cls(**values)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model card is malformed: {exc}") from None
        card.validate()
        return card

    def validate(self) -> None:
        """Refuse values that would give silently wrong probabilities rather than an error."""
        problems = []
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            problems.append(f"temperature must be > 0 (got {self.temperature!r})")
        if not isinstance(self.threshold, (int, float)) or not 0.0 <= self.threshold <= 1.0:
            problems.append(f"threshold must lie in [0, 1] (got {self.threshold!r})")
        problems.extend(self.preprocessing.problems())  # the input policy checks its own rules
        if self.uncertainty is not None:
            problems.extend(self.uncertainty.problems(self.threshold))
        if tuple(self.class_names) != CLASS_NAMES:
            problems.append(f"class_names must be {list(CLASS_NAMES)} (got {list(self.class_names)})")
        if problems:
            raise ModelError("model card is invalid: " + "; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ModelError("model card must be a JSON object")
        return cls.from_dict(data)


# --------------------------------------------------------------------------- files


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """Return (weights, card) for a model given as NAME, NAME.json or NAME.safetensors."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        stem = path.with_suffix("")
    else:
        stem = path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


_PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"}


def refuse_pickle(path: Path) -> None:
    """Raise a clear error for torch.save / pickle files: loading them can run arbitrary code."""
    head = b""
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(4)
    # torch.save writes a zip archive (PK..); plain pickle starts with protocol marker 0x80.
    if path.suffix.lower() in _PICKLE_SUFFIXES or head[:2] == b"PK" or head[:1] == b"\x80":
        raise ModelError(
            f"{path} looks like a pickle/torch.save checkpoint. Loading it could run arbitrary "
            "code, so it is refused. Export a model as NAME.safetensors + NAME.json with "
            "`python -m training export`."
        )


def save_model(net: nn.Module, card: ModelCard, path: str | Path, dtype: torch.dtype | None = None) -> ModelCard:
    """Write NAME.safetensors and NAME.json (weights in ``dtype``, fp16 by default); return the
    card with its weights hash filled in."""
    import torch
    from safetensors.torch import save_file

    dtype = dtype or torch.float16

    weights_path, card_path = model_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        name: (tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()).contiguous().cpu()
        for name, tensor in net.state_dict().items()
    }
    with atomic_path(weights_path) as tmp_weights:
        save_file(state, str(tmp_weights), metadata={"format": "pt"})
    card = dataclasses.replace(
        card, weights_dtype=str(dtype).removeprefix("torch."), weights_sha256=file_sha256(weights_path)
    )
    write_text(card_path, card.to_json())
    return card


def shipped_models() -> list[Path]:
    """Cards of the models that ship inside the package, the default first."""
    cards = sorted(p for p in SHIPPED_MODELS_DIR.glob("*.json") if not p.name.endswith(".metrics.json"))
    return sorted(cards, key=lambda p: p != DEFAULT_MODEL_PATH)


def resolve_model(spec: str | Path | None) -> Path:
    """A model given as None (the default), a shipped model's NAME, or a path.

    A path that exists wins over a shipped name, so `--model ./cifake-resnet18` means that file.
    """
    if spec is None:
        return DEFAULT_MODEL_PATH
    given = Path(spec)
    weights, card = model_paths(given)
    if given.exists() or weights.exists() or card.exists():
        return given
    if given.name == str(spec) and (SHIPPED_MODELS_DIR / f"{spec}.json").is_file():
        return SHIPPED_MODELS_DIR / f"{spec}.json"
    return given


def read_card(path: str | Path) -> ModelCard:
    _, card_path = model_paths(resolve_model(path))
    if not card_path.is_file():
        raise ModelError(f"model card not found: {card_path}")
    return ModelCard.from_json(card_path.read_text(encoding="utf-8"))


class LoadedModel:
    """A model card with its verified weights file; the network (eval mode, fp32) is built on
    first use, so a run that only re-emits stored results never imports torch or builds it."""

    def __init__(self, network: nn.Module | None, card: ModelCard, weights_path: Path) -> None:
        self._network = network  # None: built from weights_path on first use
        self.card = card
        self.weights_path = weights_path
        self.routes: list[tuple[Any, LoadedModel]] = []  # (audit.model._routing.Route, its model)

    def scored_by(self, route: int) -> "LoadedModel":
        """The model that scores an image sent down ``route`` (0: this one)."""
        return self if route == 0 else self.routes[route - 1][1]

    def __repr__(self) -> str:
        return f"LoadedModel({self.card.name!r}, {str(self.weights_path)!r}, built={self._network is not None})"

    @property
    def network(self) -> nn.Module:
        if self._network is None:
            self._network = _load_network(self.card, self.weights_path)
        return self._network

    @property
    def model_id(self) -> str:
        return self.card.model_id

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probability of 'AI-generated' for a batch of logits."""
        import torch

        scaled = logits.float() / self.card.temperature
        return torch.softmax(scaled, dim=1)[:, AI_CLASS_INDEX]


def load_one_model(path: str | Path | None = None, verify_hash: bool = True, lazy: bool = False) -> LoadedModel:
    """Load one model (not its routes: audit.model._routing.load_model) from its card and safetensors weights; never unpickles.

    The card is read and the weights' sha256 checked at once. With ``lazy`` the network is built
    (and the safetensors parsed) on first use of ``.network`` rather than now.
    """
    given = resolve_model(path)
    if given.suffix.lower() in _PICKLE_SUFFIXES:
        refuse_pickle(given)
    weights_path, card_path = model_paths(given)
    # The default model missing means a broken install, not a mistyped --model.
    missing_default = " (the default model is missing from this install; reinstall, or pass --model PATH)" if path is None else ""
    if not weights_path.is_file():
        known = ", ".join(p.stem for p in shipped_models())
        raise ModelError(f"model weights not found: {weights_path} (shipped models, by name: {known or 'none'}){missing_default}")
    if not card_path.is_file():
        raise ModelError(f"model card not found: {card_path}{missing_default}")
    card = read_card(card_path)
    if verify_hash and card.weights_sha256:
        actual = file_sha256(weights_path)
        if actual != card.weights_sha256:
            raise ModelError(
                f"{weights_path} does not match its card (sha256 {actual[:12]}, card says "
                f"{card.weights_sha256[:12]}): the weights were changed or belong to another model"
            )
    model = LoadedModel(None, card, weights_path)
    if not lazy:
        model.network  # noqa: B018 - build now, so a bad file is an error here
    return model


def _load_network(card: ModelCard, weights_path: Path) -> nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as exc:
        refuse_pickle(weights_path)
        raise ModelError(f"cannot read {weights_path} as safetensors: {exc}") from None
    net = build_network(card.variant, num_classes=len(card.class_names))
    # Weights may be stored in fp16 to keep the package small; compute in fp32.
    state = {name: (t.float() if t.is_floating_point() else t) for name, t in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"weights in {weights_path} do not fit variant {card.variant!r}: {exc}") from None
    net.eval()
    return net
