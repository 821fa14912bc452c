"""Training augmentations: what an archive does to an image, applied to uint8 batches.

Archives re-encode, rescale and soften images; a detector that only ever saw pristine CIFAKE
files learns JPEG-grid details that one re-save destroys. Each degradation is applied to a random
part of each batch, then the usual crop and flip.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset


@dataclass
class AugmentConfig:
    jpeg_prob: float = 0.25
    jpeg_quality: tuple[int, int] = (40, 95)
    rescale_prob: float = 0.15
    rescale_factor: tuple[float, float] = (0.5, 0.9)
    blur_prob: float = 0.15
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    crop_padding: int = 4
    flip: bool = True
    # Random resized crop instead of the padded crop: a square of this share of the side
    # (uniform in the range), resized to output_size. Teaches the net that scale is no clue.
    crop_scale: tuple[float, float] | None = None
    output_size: int | None = None  # the network's input size when batches are stored larger


def jpeg_reencode(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Re-encode one uint8 CHW image as JPEG at a quality, and decode it again."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        array = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def rescale(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Downscale by a factor and upscale back (uint8 NCHW)."""
    height, width = images.shape[-2:]
    small = (max(1, round(height * factor)), max(1, round(width * factor)))
    as_float = images.float()
    down = F.interpolate(as_float, size=small, mode="bilinear", antialias=True, align_corners=False)
    up = F.interpolate(down, size=(height, width), mode="bilinear", align_corners=False)
    return up.round_().clamp_(0, 255).to(torch.uint8)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of uint8 NCHW images with reflect padding."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel_1d = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel_1d /= kernel_1d.sum()
    channels = images.shape[1]
    as_float = F.pad(images.float(), (radius, radius, radius, radius), mode="reflect")
    horizontal = kernel_1d.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    vertical = kernel_1d.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    out = F.conv2d(as_float, horizontal, groups=channels)
    out = F.conv2d(out, vertical, groups=channels)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    batch, _, height, width = images.shape
    if padding:
        padded = F.pad(images.float(), (padding, padding, padding, padding), mode="reflect").to(torch.uint8)
        tops = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).tolist()
        lefts = torch.randint(0, 2 * padding + 1, (batch,), generator=generator).tolist()
        images = torch.stack([padded[i, :, t : t + height, l : l + width] for i, (t, l) in enumerate(zip(tops, lefts))])
    if flip:
        flips = torch.rand(batch, generator=generator) < 0.5
        images = torch.where(flips.view(-1, 1, 1, 1), images.flip(-1), images)
    return images


def random_resized_crop(images: torch.Tensor, scale: tuple[float, float], output_size: int,
                        generator: torch.Generator) -> torch.Tensor:
    """A random square of scale[0]..scale[1] of the shorter side of each image, resized to
    output_size (antialiased bilinear, as the audit's own resize)."""
    batch, _, height, width = images.shape
    out = torch.empty((batch, images.shape[1], output_size, output_size), dtype=torch.uint8)
    low, high = scale
    for index in range(batch):
        share = low + (high - low) * torch.rand(1, generator=generator).item()
        side = max(1, round(min(height, width) * share))
        top = int(torch.randint(0, height - side + 1, (1,), generator=generator).item())
        left = int(torch.randint(0, width - side + 1, (1,), generator=generator).item())
        crop = images[index : index + 1, :, top : top + side, left : left + side].float()
        if side != output_size:
            crop = F.interpolate(crop, size=(output_size, output_size), mode="bilinear", antialias=True, align_corners=False)
        out[index] = crop[0].round_().clamp_(0, 255).to(torch.uint8)
    return out


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Apply the archive degradations, then crop and flip, to a uint8 NCHW batch."""
    images = images.clone()
    batch = images.shape[0]

    def chosen(prob: float) -> list[int]:
        return torch.nonzero(torch.rand(batch, generator=generator) < prob).flatten().tolist()

    def uniform(bounds: tuple[float, float]) -> float:
        low, high = bounds
        return low + (high - low) * torch.rand(1, generator=generator).item()

    for index in chosen(config.rescale_prob):
        images[index : index + 1] = rescale(images[index : index + 1], uniform(config.rescale_factor))
    for index in chosen(config.blur_prob):
        images[index : index + 1] = gaussian_blur(images[index : index + 1], uniform(config.blur_sigma))
    # JPEG last among the degradations: archives usually re-save after editing.
    for index in chosen(config.jpeg_prob):
        low, high = config.jpeg_quality
        quality = int(torch.randint(low, high + 1, (1,), generator=generator).item())
        images[index] = jpeg_reencode(images[index], quality)
    if config.crop_scale is not None:
        output_size = config.output_size or images.shape[-1]
        return random_crop_flip(random_resized_crop(images, config.crop_scale, output_size, generator), 0, config.flip, generator)
    return random_crop_flip(images, config.crop_padding, config.flip, generator)


class AugmentedBatches(Dataset):
    """One epoch's batches, each augmented with its own seeded generator.

    A batch's augmentation depends only on (seed, batch number), not on which worker makes it or
    in what order, so DataLoader workers can prepare batches ahead of a GPU and a resumed run
    still sees the same batches. Images may be held in several tensors of different sizes (one
    per data set, each with its own augmentation); ``order`` indexes them as if concatenated.
    """

    def __init__(self, images: torch.Tensor | list[torch.Tensor], labels: torch.Tensor, order: torch.Tensor,
                 batch_size: int, config: AugmentConfig | list[AugmentConfig], seed: int) -> None:
        self.parts = images if isinstance(images, list) else [images]
        self.configs = config if isinstance(config, list) else [config] * len(self.parts)
        self.offsets = torch.tensor([0] + [len(part) for part in self.parts]).cumsum(0)
        self.labels, self.order = labels, order
        self.batch_size, self.seed = batch_size, seed

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, batch_number: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self.order[batch_number * self.batch_size : (batch_number + 1) * self.batch_size]
        generator = torch.Generator().manual_seed(self.seed * 100_003 + batch_number)
        if len(self.parts) == 1:
            return augment_batch(self.parts[0][index], self.configs[0], generator), self.labels[index]
        part_of = torch.bucketize(index, self.offsets[1:], right=True)
        images, labels = [], []
        for part in range(len(self.parts)):
            chosen = index[part_of == part]
            if len(chosen):
                images.append(augment_batch(self.parts[part][chosen - self.offsets[part]], self.configs[part], generator))
                labels.append(self.labels[chosen])
        return torch.cat(images), torch.cat(labels)
