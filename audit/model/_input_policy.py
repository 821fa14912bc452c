"""The input policy: how a decoded image of any size becomes the network's input.

Holds the card's :class:`Preprocessing` (its rules and their validation), the resize and crop
geometry, and the tensor steps around the network: :func:`to_model_input` (image -> uint8
views), :func:`normalize`, and :func:`flatten_views` / :func:`combine_views` (several views of
an image in, one logit row per image out). Training and the audit both use these, so the
network sees the same pixels in both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a tensor is made: a rerun that scores nothing never pays for it
    import torch
    from PIL import Image

# How an image of any size becomes the network's input (the card's "input policy"):
#   squash       the whole image resized to input_size x input_size (aspect not kept);
#   center-crop  resized so its shorter side is input_size, then the central square;
#   crops        resized so its shorter side is scale_size, then `crops` squares of input_size
#                (centre, then the corners; 9: a 3x3 grid) scored alone, their logits averaged.
RESIZE_POLICIES = ("squash", "center-crop", "crops")
CROP_COUNTS = (1, 5, 9)
# Pillow's bilinear filter, which antialiases when it reduces.
RESAMPLE_FILTERS = ("bilinear-antialias",)


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

    def problems(self) -> list[str]:
        """What is wrong with this policy, in words (empty: nothing); the model card refuses a
        card with any, since a bad policy gives silently wrong probabilities rather than an error."""
        problems = []
        if not isinstance(self.input_size, int) or self.input_size <= 0:
            problems.append(f"input_size must be a positive integer (got {self.input_size!r})")
        if self.resize_policy not in RESIZE_POLICIES:
            problems.append(f"resize_policy {self.resize_policy!r} is not one of {', '.join(RESIZE_POLICIES)}")
        if self.resize_policy == "crops" and (self.crops not in CROP_COUNTS or not isinstance(self.scale_size, int)
                                              or self.scale_size < self.input_size):
            problems.append(f"a crops policy needs crops in {CROP_COUNTS} and scale_size >= input_size "
                            f"(got {self.crops}, {self.scale_size})")
        if self.resample not in RESAMPLE_FILTERS:
            problems.append(f"resample {self.resample!r} is not one of {', '.join(RESAMPLE_FILTERS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(v > 0 for v in self.std):
            problems.append("mean and std need three values each, std > 0")
        return problems


# --------------------------------------------------------------------------- image -> views


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


# --------------------------------------------------------------------------- tensors around the network


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
