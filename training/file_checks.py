"""File-level robustness and shortcut checks: the same picture stored another way.

Unlike the tensor-level robustness table (which damages the network's 32x32 input), these
re-encode or resize the picture itself and send the new file through the scan's own decoder and
input policy, as an archive that holds the picture that way would.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from audit.model import LoadedModel
from training.data import decode_to_input, iter_files
from training.engine import predict_logits
from training.metrics import classification_metrics

log = logging.getLogger("training")

Transform = Callable[[Image.Image], bytes]


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    return _encode(image, "PNG", compress_level=1)


def _jpeg(quality: int) -> Transform:
    return lambda image: _encode(image, "JPEG", quality=quality)


def _scaled(factor: float) -> Transform:
    def store(image: Image.Image) -> bytes:
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        return _png(image.resize(size, Image.Resampling.LANCZOS))

    return store


def _central_square(image: Image.Image) -> bytes:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return _png(image.crop((left, top, left + side, top + side)))


# The reference is the decoded picture stored losslessly at its own size.
CASES: dict[str, Transform] = {
    "png_1x": _png,
    "jpeg_q95": _jpeg(95),
    "jpeg_q75": _jpeg(75),
    "jpeg_q50": _jpeg(50),
    "downscaled_x0.5": _scaled(0.5),
    "stored_2x": _scaled(2.0),
    "stored_4x": _scaled(4.0),
    "central_square": _central_square,
}


def _pictures(source: Path, split: str) -> tuple[list[Image.Image], np.ndarray]:
    pictures, labels = [], []
    for _name, label, data in iter_files(source, split):
        with Image.open(io.BytesIO(data)) as opened:
            pictures.append(ImageOps.exif_transpose(opened).convert("RGB"))
        labels.append(label)
    return pictures, np.array(labels)


def _score(model: LoadedModel, files: list[bytes], device: torch.device, dtype: torch.dtype | None) -> np.ndarray:
    tensors = []
    for index, data in enumerate(files):
        tensor, error = decode_to_input(f"case-{index}", data, model.card.preprocessing)
        if tensor is None:
            raise ValueError(f"a re-stored picture did not decode: {error}")
        tensors.append(tensor)
    logits = predict_logits(model.network.to(device), torch.stack(tensors), model.card.preprocessing, device, dtype)
    return model.probabilities(logits).numpy()


def file_level_checks(model: LoadedModel, source: Path, split: str, device: torch.device,
                      dtype: torch.dtype | None) -> dict[str, Any]:
    """Each case's metrics, and how far each storage moves prob_ai from the lossless 1x copy."""
    pictures, labels = _pictures(source, split)
    threshold = model.card.threshold
    probs: dict[str, np.ndarray] = {}
    table: dict[str, Any] = {}
    for case, transform in CASES.items():
        probs[case] = _score(model, [transform(picture) for picture in pictures], device, dtype)
        metrics = classification_metrics(probs[case], labels, threshold)
        table[case] = {
            "roc_auc": metrics["roc_auc"],
            "real_flagged_rate": round(float((probs[case][labels == 0] >= threshold).mean()), 4),
            "ai_caught_rate": round(float((probs[case][labels == 1] >= threshold).mean()), 4),
        }
        if case != "png_1x":
            moved = np.abs(probs[case] - probs["png_1x"])
            table[case].update(
                mean_abs_prob_change=round(float(moved.mean()), 4),
                p95_abs_prob_change=round(float(np.quantile(moved, 0.95)), 4),
                verdicts_changed=int(((probs[case] >= threshold) != (probs["png_1x"] >= threshold)).sum()),
            )
        log.info("file-level %-16s %s", case, table[case])
    return {"images": len(labels), "reference": "png_1x (the decoded picture stored losslessly)", "cases": table}
