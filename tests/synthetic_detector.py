"""A tiny detector trained in seconds on synthetic images, for the explain and report tests.

"AI-generated" images carry a bright 8x8 patch in one of the 16 cells of the 4x4 Grad-CAM grid
(layer3 of resnet18-s1stem at 32x32); "real" images are the same smooth noise without it. The
patch moves from image to image, so a model that has learned the task must look at the patch,
and a Grad-CAM that is real must follow it. The default model is not needed.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from audit.model import AI_CLASS_INDEX, ModelCard, Preprocessing, build_network, normalize, save_model

INPUT_SIZE = 32
CELL = 8  # pixels of input per cell of the 4x4 layer3 map
VARIANT = "resnet18-s1stem"


def background(rng: np.random.Generator) -> np.ndarray:
    """Smooth, mid-grey noise: a coarse random field upsampled, HxWx3 uint8."""
    coarse = rng.uniform(70, 150, size=(4, 4, 3)).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR))
    noise = rng.normal(0, 6, size=smooth.shape)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def with_patch(image: np.ndarray, cell_row: int, cell_col: int) -> np.ndarray:
    marked = image.copy()
    marked[cell_row * CELL : (cell_row + 1) * CELL, cell_col * CELL : (cell_col + 1) * CELL] = 250
    return marked


def synthetic_batch(rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and their labels, half of them 'ai-generated'."""
    images, labels = [], []
    for index in range(size):
        image = background(rng)
        label = index % 2
        if label == AI_CLASS_INDEX:
            image = with_patch(image, int(rng.integers(4)), int(rng.integers(4)))
        images.append(image)
        labels.append(label)
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return batch, torch.tensor(labels)


@functools.cache
def trained_network(steps: int = 10, seed: int = 0) -> nn.Module:
    """Train once per test process; every caller gets the same weights (cached, deterministic)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_network(VARIANT)
    pre = Preprocessing()
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(steps):
        images, labels = synthetic_batch(rng, 16)
        optimiser.zero_grad()
        loss = loss_fn(net(normalize(images, pre)), labels)
        loss.backward()
        optimiser.step()
    net.eval()
    return net


def save_trained_model(directory: Path, name: str = "synthetic-detector") -> Path:
    """Write the trained network as NAME.safetensors + NAME.json; return the card path."""
    card = ModelCard(
        name=name,
        variant=VARIANT,
        threshold=0.5,
        training={"data": "synthetic bright-patch images (tests/synthetic_detector.py)"},
    )
    save_model(trained_network(), card, directory / name, dtype=torch.float32)
    return directory / f"{name}.json"


def write_png(path: Path, image: np.ndarray, size: tuple[int, int] | None = None) -> Path:
    picture = Image.fromarray(image)
    if size is not None:
        picture = picture.resize(size, Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
