"""Pictures for the explain stage and the report: reading an image file once for both the model
input and the thumbnail, thumbnails, heatmap overlays, and writing them.

The model input comes through the scan's own load stage (audit.intake._load), so the probability
recomputed from it is the one the scan wrote; the thumbnail is decoded from the very same bytes.
Files are written through a temporary name, and their names never come from archive strings
unmade safe (safe_stem).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, ImageOps

from audit.atomic import atomic_path
from audit.evidence import Finding
from audit.intake import (
    DEFAULT_MAX_FILE_BYTES,
    FileRecord,
    LoadOptions,
    LoadResult,
    load_bytes,
    read_file_bytes,
    strict_pillow,
    to_rgb,
)
from audit.model import Preprocessing

if TYPE_CHECKING:  # tensors come from the load stage: a report whose pictures are all kept needs no torch
    import torch

# Longest side of a thumbnail in pixels: the PDF shows it about 38 mm wide, so 144 px is
# ~96 dpi there. Larger thumbnails would only make the report heavier.
THUMBNAIL_SIZE = 144
# Share of the colour map in the overlay; the rest is the picture itself.
OVERLAY_ALPHA = 0.45


@dataclass(frozen=True)
class LoadedPicture:
    """An image file read once: the model's input and the thumbnail, both of the same bytes."""

    path: Path
    sha256: str
    thumbnail: Image.Image
    model_input: torch.Tensor  # uint8 CHW at the model's input size (KCHW: a crops policy's views)
    enlarged: bool  # the picture is smaller than the thumbnail (pixels repeated, not invented)
    evidence: list[Finding] = field(default_factory=list)  # provenance findings, strongest first
    picture_size: tuple[int, int] = (0, 0)  # the upright picture's (width, height)


def load_picture(path: Path, pre: Preprocessing, thumbnail_size: int = THUMBNAIL_SIZE) -> LoadedPicture:
    """Read the file once: its bytes give the model input, the sha256, the evidence and the
    thumbnail. The decoded picture is dropped on return: a batch keeps only thumbnails.
    Raises ValueError with the load stage's message when the file cannot be loaded."""
    data = read_image_file(path)
    model_input, sha256, evidence = load_model_input(path, pre, data)
    picture = load_display_rgb(data, pre, thumbnail_size)
    del data  # the file's bytes need not live while the thumbnail is made
    thumbnail = make_thumbnail(picture, thumbnail_size)
    return LoadedPicture(path, sha256, thumbnail, model_input, max(picture.size) < thumbnail_size, evidence, picture.size)


def read_image_file(path: Path) -> bytes:
    """The file's bytes, read once for both the model input and the thumbnail (so both are the
    same bytes, and the file is hashed once); ValueError with the load stage's message."""
    try:
        return read_file_bytes(str(path), DEFAULT_MAX_FILE_BYTES)
    except Exception as exc:  # noqa: BLE001 - the load stage's own error type carries the message
        raise ValueError(str(exc) or type(exc).__name__) from None


def load_model_input(path: Path, pre: Preprocessing, data: bytes | None = None) -> tuple[torch.Tensor, str, list[Finding]]:
    """The model's uint8 input, the sha256 of ``data`` (the file's bytes, read when not given)
    and its provenance evidence, through the scan's own load stage.

    The same decoder, draft decoding, orientation, alpha and size limits as the scan, so the
    probability recomputed here is the one the scan wrote. Raises ValueError with the load
    stage's message when the file cannot be loaded.
    """
    record = FileRecord(root=str(path.parent), rel_path=path.name, abs_path=str(path))
    data = read_image_file(path) if data is None else data
    loaded = load_bytes(data, LoadOptions(preprocessing=pre), LoadResult(record=record))
    if loaded.error is not None or loaded.tensor is None:
        raise ValueError(loaded.error or "cannot load image")
    return loaded.tensor, loaded.sha256, loaded.evidence


def load_display_rgb(data: bytes, pre: Preprocessing, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """Decode the picture for display: first frame, upright, RGB as the scan composites it.

    JPEGs are decoded at reduced size (draft mode) down to twice the thumbnail, so a 12 MP
    photo costs little. ``data`` are the bytes load_model_input accepted (its size limits, and a
    strict decode), decoded under the same strict Pillow settings: the thumbnail shows exactly
    the bytes that were judged, never a file replaced in between.
    """
    with strict_pillow(), Image.open(io.BytesIO(data)) as opened:
        if opened.format == "JPEG":
            opened.draft("RGB", (2 * size, 2 * size))
        opened.load()
        upright = ImageOps.exif_transpose(opened)
        return to_rgb(upright, pre.alpha_background)


def make_thumbnail(rgb: Image.Image, size: int = THUMBNAIL_SIZE) -> Image.Image:
    """Scale the longest side to ``size``, keeping the aspect ratio.

    Small images (CIFAKE is 32x32) are enlarged with nearest-neighbour so the reviewer sees the
    real pixels rather than detail invented by interpolation; large ones are reduced smoothly.
    """
    width, height = rgb.size
    scale = size / max(width, height)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS
    return rgb.resize(target, resample)


def upsample_heatmap(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map in [0, 1] resized (bilinear) to ``size`` = (width, height), still in [0, 1]."""
    resized = cv2.resize(cam.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)
    return np.clip(resized, 0.0, 1.0)


def overlay_heatmap(thumbnail: Image.Image, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """Blend a JET colour map of ``heatmap`` (same size as the thumbnail) over the picture."""
    if heatmap.shape != (thumbnail.height, thumbnail.width):
        raise ValueError(f"heatmap shape {heatmap.shape} does not match thumbnail {thumbnail.size}")
    colour_bgr = cv2.applyColorMap(np.uint8(np.round(255 * heatmap)), cv2.COLORMAP_JET)
    colour = cv2.cvtColor(colour_bgr, cv2.COLOR_BGR2RGB).astype(np.float32)
    picture = np.asarray(thumbnail.convert("RGB"), dtype=np.float32)
    blended = (1.0 - alpha) * picture + alpha * colour
    return Image.fromarray(np.clip(np.round(blended), 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class CropScore:
    """One crop of an image judged through several: its box on the thumbnail and its own prob_ai."""

    box: tuple[int, int, int, int]  # left, top, right, bottom, in thumbnail pixels
    prob_ai: float


CROP_HIGH, CROP_LOW = (230, 30, 30), (30, 190, 60)  # at or above the threshold: red; below: green


def draw_crop_boxes(thumbnail: Image.Image, crops: tuple[CropScore, ...], threshold: float) -> Image.Image:
    """The thumbnail with each crop's box, red at or above the threshold and green below, and its
    probability printed in its corner; the highest-scoring crop is drawn last (on top)."""
    from PIL import ImageDraw, ImageFont

    picture = thumbnail.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for crop in sorted(crops, key=lambda c: c.prob_ai):
        colour = CROP_HIGH if crop.prob_ai >= threshold else CROP_LOW
        left, top, right, bottom = crop.box
        draw.rectangle((left, top, right - 1, bottom - 1), outline=colour, width=2)
        label = f"{crop.prob_ai:.2f}"
        text_box = draw.textbbox((left + 3, top + 3), label, font=font)
        draw.rectangle((text_box[0] - 1, text_box[1] - 1, text_box[2] + 1, text_box[3] + 1), fill=colour)
        draw.text((left + 3, top + 3), label, fill=(255, 255, 255), font=font)
    return picture


def save_png(image: Image.Image, path: Path) -> Path:
    """Write a PNG through a temporary name, so a killed run never leaves half a file."""
    return save_image(image, path, "PNG")


def save_image(image: Image.Image, path: Path, image_format: str, jpeg_quality: int = 88) -> Path:
    """Write PNG or JPEG through a temporary name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        if image_format == "JPEG":
            image.convert("RGB").save(temporary, format="JPEG", quality=jpeg_quality, optimize=True)
        else:
            image.save(temporary, format="PNG", optimize=True)
    return path


def safe_stem(path: Path, index: int) -> str:
    """A file name for outputs that cannot escape the output folder or upset a shell."""
    kept = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in path.stem)[:60].strip("._")
    return f"{index:03d}-{kept or 'image'}"
