"""The model stage: a model card plus safetensors weights -> a ready ``torch.nn.Module``.

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
from audit.errors import UsageError
from audit.atomic import atomic_path, write_text

if TYPE_CHECKING:  # torch is imported where a network is built or run: a rerun that scores nothing never pays for it
    import torch
    from PIL import Image
    from torch import nn

CARD_SCHEMA_VERSION = 1
SHIPPED_MODELS_DIR = Path(__file__).parent / "weights"
# The default detector: fine-tuned on CIFAKE and wild images. cifake-resnet18 (CIFAKE only)
# ships beside it so its published comparison stays reproducible (`--model cifake-resnet18`).
DEFAULT_MODEL_NAME = "general-resnet18"
DEFAULT_MODEL_PATH = SHIPPED_MODELS_DIR / f"{DEFAULT_MODEL_NAME}.json"

# Index of each class in the network's output. Folder names in training data map onto these.
CLASS_NAMES = ("real", "ai-generated")
AI_CLASS_INDEX = 1


# How an image of any size becomes the network's input (the card's "input policy"):
#   squash       the whole image resized to input_size x input_size (aspect not kept);
#   center-crop  resized so its shorter side is input_size, then the central square;
#   crops        resized so its shorter side is scale_size, then `crops` squares of input_size
#                (centre, then the corners; 9: a 3x3 grid) scored alone, their logits averaged.
RESIZE_POLICIES = ("squash", "center-crop", "crops")
CROP_COUNTS = (1, 5, 9)
# Pillow's bilinear filter, which antialiases when it reduces.
RESAMPLE_FILTERS = ("bilinear-antialias",)


class ModelError(UsageError):
    """A model cannot be used; the user must act (wrong path, pickle file, broken card)."""


# --------------------------------------------------------------------------- architectures


def _resnet18_stock(num_classes: int) -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes)


def _resnet18_s1_stem(num_classes: int) -> nn.Module:
    """ResNet18 with a 3x3 stride-1 stem that keeps the max-pool.

    At 32x32 input the stock stem (7x7 stride 2 + max-pool) leaves layer4 at 1x1, which gives
    Grad-CAM a single pixel. This stem keeps twice the resolution: layer3 is 4x4, layer4 2x2.
    """
    from torch import nn
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return net


# A small registry in the spirit of timm's: card["variant"] -> constructor.
ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "resnet18": _resnet18_stock,
    "resnet18-s1stem": _resnet18_s1_stem,
}


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
class Preprocessing:
    """Everything needed to turn a decoded RGB image into the network's input."""

    input_size: int = 32
    # "squash": the whole image is resized to input_size x input_size (aspect not kept),
    # so that no part of the picture is cropped away before judging it.
    resize_policy: str = "squash"
    resample: str = "bilinear-antialias"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    # Transparent pixels are composited onto this colour before scoring.
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    # Only for resize_policy "crops": the shorter side before cropping, and how many crops.
    scale_size: int = 0
    crops: int = 1

    @property
    def views(self) -> int:
        """Network inputs per image: a "crops" policy scores several, the others one."""
        return self.crops if self.resize_policy == "crops" else 1

    @property
    def decode_size(self) -> int:
        """The largest side the policy needs decoded (JPEG draft mode may stop there)."""
        return max(self.input_size, self.scale_size) if self.resize_policy == "crops" else self.input_size

    def describe(self) -> str:
        """The input policy in words, for the report and `audit models`."""
        size = f"{self.input_size}x{self.input_size}"
        if self.resize_policy == "squash":
            return f"whole image resized to {size} (aspect not kept)"
        if self.resize_policy == "center-crop":
            return f"shorter side resized to {self.input_size}, central {size} square"
        return (f"shorter side reduced to {self.scale_size} (a smaller image keeps its own size), up to {self.crops} "
                f"crops of {size} (centre, corners) scored alone and their logits averaged")

    def storage_view(self, side: int | None = None) -> "Preprocessing":
        """How training stores an image in memory: one view, from which random crops of
        input_size are taken. For "crops" that is the central square of ``side`` (scale_size
        unless a data set's images are smaller)."""
        if self.resize_policy != "crops":
            return self
        return dataclasses.replace(self, input_size=side or self.scale_size, resize_policy="center-crop", scale_size=0, crops=1)


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
    schema_version: int = CARD_SCHEMA_VERSION

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
            card = cls(**values)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"model card is malformed: {exc}") from None
        card.validate()
        return card

    def validate(self) -> None:
        """Refuse values that would give silently wrong probabilities rather than an error."""
        problems = []
        pre = self.preprocessing
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            problems.append(f"temperature must be > 0 (got {self.temperature!r})")
        if not isinstance(self.threshold, (int, float)) or not 0.0 <= self.threshold <= 1.0:
            problems.append(f"threshold must lie in [0, 1] (got {self.threshold!r})")
        if not isinstance(pre.input_size, int) or pre.input_size <= 0:
            problems.append(f"input_size must be a positive integer (got {pre.input_size!r})")
        if pre.resize_policy not in RESIZE_POLICIES:
            problems.append(f"resize_policy {pre.resize_policy!r} is not one of {', '.join(RESIZE_POLICIES)}")
        if pre.resize_policy == "crops" and (pre.crops not in CROP_COUNTS or not isinstance(pre.scale_size, int)
                                              or pre.scale_size < pre.input_size):
            problems.append(f"a crops policy needs crops in {CROP_COUNTS} and scale_size >= input_size "
                            f"(got {pre.crops}, {pre.scale_size})")
        if pre.resample not in RESAMPLE_FILTERS:
            problems.append(f"resample {pre.resample!r} is not one of {', '.join(RESAMPLE_FILTERS)}")
        if len(pre.mean) != 3 or len(pre.std) != 3 or not all(v > 0 for v in pre.std):
            problems.append("mean and std need three values each, std > 0")
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


def load_model(path: str | Path | None = None, verify_hash: bool = True, lazy: bool = False) -> LoadedModel:
    """Load a model from its card and safetensors weights; never unpickles.

    The card is read and the weights' sha256 checked at once. With ``lazy`` the network is built
    (and the safetensors parsed) on first use of ``.network`` rather than now.
    """
    given = resolve_model(path)
    if given.suffix.lower() in _PICKLE_SUFFIXES:
        refuse_pickle(given)
    weights_path, card_path = model_paths(given)
    if not weights_path.is_file():
        if path is None:
            raise ModelError(f"model weights not found: {weights_path} (the default model is missing from this "
                             "install; reinstall, or pass --model PATH)")
        known = ", ".join(p.stem for p in shipped_models())
        raise ModelError(f"model weights not found: {weights_path} (shipped models, by name: {known or 'none'})")
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


# --------------------------------------------------------------------------- preprocessing


def to_model_input(rgb_image: "Image.Image", pre: Preprocessing, distinct_views: bool = False) -> torch.Tensor:
    """Resize a decoded RGB image as the card's input policy says; return uint8 CHW, or
    uint8 KCHW (K crops) for a "crops" policy.

    With ``distinct_views`` a crops policy returns each distinct crop once (a CIFAKE image no
    larger than one crop is one view, not five copies of it): the mean of the logits is the
    same, at a fraction of the cost. Training keeps K fixed so that images stack.
    Training and the audit both call this, so the network sees the same pixels in both.
    """
    import numpy as np
    import torch

    if rgb_image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {rgb_image.mode}")
    if pre.resize_policy == "squash":
        views = [_resized(rgb_image, (pre.input_size, pre.input_size))]
    elif pre.resize_policy == "center-crop":
        scaled = _resized(rgb_image, shorter_side_to(rgb_image.size, pre.input_size))
        views = [scaled.crop(box) for box in crop_boxes(scaled.size, pre.input_size, 1)]
    else:
        scaled = _resized(rgb_image, crops_scale(rgb_image.size, pre))
        boxes = crop_boxes(scaled.size, pre.input_size, pre.crops)
        if distinct_views:
            boxes = list(dict.fromkeys(boxes))
        views = [scaled.crop(box) for box in boxes]
    arrays = [torch.from_numpy(np.asarray(view, dtype=np.uint8).copy()).permute(2, 0, 1) for view in views]
    return arrays[0] if pre.resize_policy != "crops" else torch.stack(arrays)


def crops_scale(size: tuple[int, int], pre: Preprocessing) -> tuple[int, int]:
    """A crops policy's size before cropping: shorter side scale_size, never enlarged to it (the
    pixels stay as they are when they already fit: a 32x32 image is judged at its own scale),
    but at least one crop's side."""
    shorter = min(size)
    if shorter > pre.scale_size:
        return shorter_side_to(size, pre.scale_size)
    if shorter < pre.input_size:
        return shorter_side_to(size, pre.input_size)
    return size


def _resized(image: "Image.Image", size: tuple[int, int]) -> "Image.Image":
    from PIL import Image

    # The card was validated on load: Pillow's (antialiasing) bilinear filter.
    return image if image.size == size else image.resize(size, Image.Resampling.BILINEAR)


def shorter_side_to(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    width, height = size
    scale = shorter / min(width, height)
    return max(shorter, round(width * scale)), max(shorter, round(height * scale))


def crop_boxes(size: tuple[int, int], side: int, count: int) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom) of `count` squares of `side`: the centre first, then
    the four corners (5) or the rest of a 3x3 grid (9)."""
    width, height = size
    xs = (0, (width - side) // 2, width - side)
    ys = (0, (height - side) // 2, height - side)
    if count == 1:
        points = [(xs[1], ys[1])]
    elif count == 5:
        points = [(xs[1], ys[1]), (xs[0], ys[0]), (xs[2], ys[0]), (xs[0], ys[2]), (xs[2], ys[2])]
    else:
        points = [(xs[1], ys[1])] + [(x, y) for y in ys for x in xs if (x, y) != (xs[1], ys[1])]
    return [(x, y, x + side, y + side) for x, y in points]


def flatten_views(inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """NKCHW (K crops an image) -> (N*K)CHW and K; NCHW passes through with K = 0."""
    if inputs.ndim == 5:
        return inputs.flatten(0, 1), inputs.shape[1]
    return inputs, 0


def combine_views(logits: torch.Tensor, views: int | list[int]) -> torch.Tensor:
    """Average the logits of each image's crops: K each (0: one view each, nothing to
    combine), or a list of each image's count of views, in order."""
    import torch

    if isinstance(views, list):
        return torch.stack([part.mean(dim=0) for part in logits.split(views)])
    return logits.view(-1, views, logits.shape[-1]).mean(dim=1) if views else logits


def normalize(batch_uint8: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 NCHW -> normalised float NCHW, on the batch's device."""
    import torch

    mean = torch.tensor(pre.mean, device=batch_uint8.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(pre.std, device=batch_uint8.device).view(1, 3, 1, 1) * 255.0
    return (batch_uint8.float() - mean) / std
