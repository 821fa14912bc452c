"""The gallery's crop boxes: an image judged through several crops shows each crop's box where the
crop lies, coloured by that crop's own score (tests/synthetic_detector.py: the bright patch is
what its network calls AI-generated)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import synthetic_detector as sd
import torch

from audit.model import ModelCard, Preprocessing, save_model
from audit.report._explain import explain_images
from audit.report._pictures import CROP_HIGH, CROP_LOW

# Each test trains or scans with a small model: seconds apiece on 2 cores.
pytestmark = pytest.mark.slow


def crops_model(directory: Path) -> Path:
    card = ModelCard(name="synthetic-crops", variant=sd.VARIANT, threshold=0.5,
                     preprocessing=Preprocessing(input_size=32, resize_policy="crops", scale_size=64, crops=5))
    save_model(sd.trained_network(), card, directory / card.name, dtype=torch.float32)
    return directory / f"{card.name}.json"


def picture_with_patch_in_the_top_right(path: Path) -> Path:
    """64x64: four tiles of the detector's 'real' background; the patch in the top-right tile,
    outside the centre crop (16..48)."""
    rng = np.random.default_rng(21)
    tiles = [sd.background(rng) for _ in range(4)]
    image = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)
    image[4:12, 52:60] = 250
    return sd.write_png(path, image)


def colour_near(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.abs(pixel.astype(int) - np.array(colour)).max() <= 40)


def test_the_high_scoring_crop_gets_the_red_box_where_the_region_is(tmp_path: Path) -> None:
    model = crops_model(tmp_path)
    image = picture_with_patch_in_the_top_right(tmp_path / "patched.png")
    (result,) = explain_images([image], model)
    assert len(result.crops) == 5  # centre, then the corners
    width, height = result.thumbnail.size
    top_right = max(result.crops, key=lambda crop: crop.prob_ai)
    left, top, right, bottom = top_right.box
    # The top-right crop of the 64 px picture: the right half of the thumbnail, its top half.
    assert (left, top) == (width // 2, 0) and (right, bottom) == (width, height // 2)
    assert top_right.prob_ai >= 0.5 > max(crop.prob_ai for crop in result.crops if crop is not top_right)
    drawn = np.asarray(result.crop_picture)
    middle_of_right_edge = drawn[(top + bottom) // 2, right - 1]
    assert colour_near(middle_of_right_edge, CROP_HIGH)
    bottom_left = next(crop for crop in result.crops if crop.box[0] == 0 and crop.box[1] == height // 2)
    assert colour_near(drawn[(bottom_left.box[1] + bottom_left.box[3]) // 2, 0], CROP_LOW)
    # The probability of the image is the scan's: the crops' logits averaged, not the top crop's.
    assert result.prob_ai < top_right.prob_ai


def test_a_single_view_image_has_no_boxes(tmp_path: Path) -> None:
    model = crops_model(tmp_path)
    small = sd.write_png(tmp_path / "small.png", sd.background(np.random.default_rng(2)))
    (result,) = explain_images([small], model)
    assert result.crops == () and result.crop_picture is None
