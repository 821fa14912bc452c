"""Several training data sets, the card's input policy, shipped models by name, per-source tables."""

from __future__ import annotations

import argparse
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from audit.cli import main as audit_cli
from audit.engines import Scorer, score_records
from audit.intake import LoadOptions, discover
from audit.model import (
    DEFAULT_MODEL_PATH,
    SHIPPED_MODELS_DIR,
    ModelCard,
    ModelError,
    Preprocessing,
    crop_boxes,
    load_model,
    normalize,
    plan_compute,
    read_card,
    resolve_model,
    save_model,
    shipped_models,
    to_model_input,
)
from tests.synthetic_detector import save_trained_model, trained_network
from training import train
from training.data import epoch_order, prepare_data
from training.sources import source_table


def _jpeg(colour: int, size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (colour, colour, colour)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def _args(*data: str, **overrides) -> argparse.Namespace:
    argv = [word for spec in data for word in ("--data", spec)] + ["--val-fraction", "0.2", "--epoch-size", "6000"]
    args = train.get_args_parser().parse_args(argv)
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_training_on_two_data_sets_draws_each_by_its_share_and_balances_sources(tmp_path):
    # Set "big": 100 images a class, one source. Set "small": 20 a class, sources "a" (15) and "b" (5).
    big = _zip(tmp_path / "big.zip", {f"train/{label}/{i:03d}.jpg": _jpeg(i) for label in ("REAL", "FAKE") for i in range(100)})
    small_files = {}
    for label in ("REAL", "FAKE"):
        for i in range(20):
            small_files[f"train/{label}/{'a' if i < 15 else 'b'}_{i:02d}.jpg"] = _jpeg(100 + i)
    small_files.update({f"val/{label}/v_{i}.jpg": _jpeg(200 + i) for label in ("REAL", "FAKE") for i in range(3)})
    small = _zip(tmp_path / "small.zip", small_files)

    data = prepare_data(_args(f"{big}:share=0.75", f"{small}:share=0.25:balance"))
    order = epoch_order(data, _args(f"{big}:share=0.75", f"{small}:share=0.25:balance"), epoch=0)
    big_count = len(data.train_parts[0])
    from_small = order >= big_count
    assert len(order) == 6000
    assert from_small.float().mean().item() == pytest.approx(0.25, abs=0.03)
    # Balanced: source "b" (5 files a class) is drawn as often as source "a" (15 a class).
    small_names = data.train_parts[1].names
    drawn = [small_names[i - big_count] for i in order[from_small].tolist()]
    share_b = sum(name.split("/")[-1].startswith("b_") for name in drawn) / len(drawn)
    assert share_b == pytest.approx(0.5, abs=0.05)
    # A set with a val/ split is validated on it; one without has part of train held out.
    assert len(data.validation["small"]) == 6 and len(data.validation["big"]) == 40
    assert data.counts["big"]["train_images"] == 160 and data.counts["small"]["train_sources"] == 2


def test_the_card_round_trips_its_input_policy_and_data_sets(tmp_path):
    policy = Preprocessing(input_size=32, resize_policy="crops", scale_size=64, crops=5)
    data = [{"name": "cifake", "sha256": "ab" * 32, "share": 0.5, "balance_sources": False},
            {"name": "wild", "sha256": "cd" * 32, "share": 0.5, "balance_sources": True}]
    card = ModelCard(name="general", preprocessing=policy, training={"data": data})
    again = ModelCard.from_json(card.to_json())
    assert again.preprocessing == policy and again.training["data"] == data
    assert "5 crops" in again.preprocessing.describe()
    with pytest.raises(ModelError, match="crops"):
        ModelCard.from_json(card.to_json().replace('"crops": 5', '"crops": 4'))


def test_a_shipped_model_is_found_by_name_and_listed(tmp_path, monkeypatch):
    names = [path.stem for path in shipped_models()]
    assert "cifake-resnet18" in names and shipped_models()[0] == DEFAULT_MODEL_PATH
    assert resolve_model("cifake-resnet18") == SHIPPED_MODELS_DIR / "cifake-resnet18.json"
    assert load_model("cifake-resnet18", lazy=True).card.name == "cifake-resnet18"
    # A file of that name in the working folder is a path, and wins over the shipped name.
    monkeypatch.chdir(tmp_path)
    local = save_trained_model(tmp_path, name="cifake-resnet18")
    assert resolve_model("cifake-resnet18") == Path("cifake-resnet18")
    assert load_model("cifake-resnet18", lazy=True).weights_path == local.with_suffix(".safetensors").relative_to(tmp_path)
    listed = CliRunner().invoke(audit_cli, ["models"])
    assert listed.exit_code == 0
    assert "cifake-resnet18" in listed.output and "(default)" in listed.output and "AUC" in listed.output
    unknown = CliRunner().invoke(audit_cli, ["scan", str(tmp_path), "--model", "no-such-model", "--out", str(tmp_path / "o")])
    assert unknown.exit_code == 2 and "shipped models, by name" in unknown.output


def test_the_scan_scores_a_large_image_through_the_crops_of_its_policy(tmp_path):
    """A 256x192 picture with the synthetic 'AI' patch in its top-left corner only: the crops
    policy scores the five 32x32 crops of its 64-pixel rendition and averages their logits."""
    card_path = save_trained_model(tmp_path / "models")
    card = read_card(card_path)
    card.preprocessing = Preprocessing(input_size=32, resize_policy="crops", scale_size=64, crops=5)
    crops_path = tmp_path / "models" / "crops-detector"
    save_model(trained_network(), card, crops_path, dtype=torch.float32)
    model = load_model(crops_path)

    rng = np.random.default_rng(3)
    picture = np.asarray(Image.fromarray(rng.uniform(80, 140, (24, 32, 3)).astype(np.uint8)).resize((256, 192)))
    picture = picture.copy()
    picture[0:32, 0:32] = 250  # the top-left crop of the 85x64 rendition covers this corner
    archive = tmp_path / "archive"
    archive.mkdir()
    Image.fromarray(picture).save(archive / "large.png")

    records = list(discover([str(archive)]))
    scored = list(score_records(records, Scorer(model, plan_compute("cpu", "fp32")),
                                LoadOptions(preprocessing=model.card.preprocessing), workers=0))
    rendition = Image.fromarray(picture).resize((85, 64), Image.Resampling.BILINEAR)
    boxes = crop_boxes(rendition.size, 32, 5)
    assert len(set(boxes)) == 5 and boxes[1] == (0, 0, 32, 32)
    views = torch.stack([torch.from_numpy(np.asarray(rendition.crop(box)).copy()).permute(2, 0, 1) for box in boxes])
    with torch.no_grad():
        logits = model.network(normalize(views, model.card.preprocessing))
        per_crop = model.probabilities(logits)
        expected = model.probabilities(logits.mean(dim=0, keepdim=True))[0].item()
    assert scored[0].prob_ai == pytest.approx(expected, abs=1e-5)
    # The crops judge different parts: the corner with the patch scores apart from the centre.
    assert abs(per_crop[1].item() - per_crop[0].item()) > 0.05
    # A picture no larger than one crop is one view, not five copies (same logits, 1/5 of the work).
    assert to_model_input(Image.new("RGB", (32, 32)), model.card.preprocessing, distinct_views=True).shape == (1, 3, 32, 32)


def test_the_per_source_table_matches_a_case_computed_by_hand():
    prob_ai = np.array([0.9, 0.2, 0.7, 0.4, 0.6, 0.1, 0.8])
    labels = np.array([1, 0, 1, 0, 1, 0, 0])
    keys = ["gen", "cam", "gen", "cam", "gen", "web", "web"]
    rows = {row["source"]: row for row in source_table(prob_ai, labels, keys, threshold=0.65)}
    assert rows["gen"] == {"source": "gen", "count": 3, "real": 0, "ai": 3, "flagged_rate": round(2 / 3, 4),
                           "mean_prob_ai": round(2.2 / 3, 4), "roc_auc": None}
    assert rows["cam"]["flagged_rate"] == 0.0 and rows["cam"]["roc_auc"] is None
    assert rows["web"]["flagged_rate"] == 0.5
    mixed = source_table(prob_ai, labels, ["all"] * 7, threshold=0.65)[0]
    # AUC by hand: positives 0.9 0.7 0.6 against negatives 0.2 0.4 0.1 0.8: 4 + 3 + 3 of 12 pairs in order.
    assert mixed["roc_auc"] == pytest.approx(10 / 12, abs=1e-4) and mixed["count"] == 7


def test_grad_cam_of_a_crops_policy_is_placed_where_each_crop_lies(tmp_path):
    card = read_card(save_trained_model(tmp_path / "models"))
    card.preprocessing = Preprocessing(input_size=32, resize_policy="crops", scale_size=64, crops=5)
    save_model(trained_network(), card, tmp_path / "models" / "crops-detector", dtype=torch.float32)
    model = load_model(tmp_path / "models" / "crops-detector")
    picture = np.full((192, 256, 3), 110, np.uint8)
    picture[0:32, 0:32] = 250  # the synthetic "AI" patch, in the top-left crop only
    Image.fromarray(picture).save(tmp_path / "large.png")
    from audit.report import GradCamExplainer

    with GradCamExplainer(model) as explainer:
        (result,) = list(explainer.explain_paths([tmp_path / "large.png"]))
    heatmap = result.heatmap
    height, width = heatmap.shape
    assert heatmap[: height // 4, : width // 4].mean() > 2 * heatmap[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3].mean()
    # The probability is the scan's: the crops' logits averaged.
    scored = list(score_records(list(discover([str(tmp_path / "large.png")])), Scorer(model, plan_compute("cpu", "fp32")),
                                LoadOptions(preprocessing=model.card.preprocessing), workers=0))
    assert result.prob_ai == pytest.approx(scored[0].prob_ai, abs=1e-4)
