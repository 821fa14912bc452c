"""A card may route small images to another model by size; every such row says so."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from synthetic_detector import background, save_trained_model, with_patch, write_png

from audit.cli import main
from audit.model import ModelCard, ModelError, Preprocessing, build_network, load_model, save_model, summarize

# Each test trains or scans with a small model: seconds apiece on 2 cores.
pytestmark = pytest.mark.slow

CROPS = Preprocessing(input_size=32, resize_policy="crops", scale_size=64, crops=5)


def routing_model(directory: Path, route_threshold: float = 0.4) -> Path:
    """A random crops-policy network that sends images of at most 32 px to the synthetic detector."""
    route_card = save_trained_model(directory, "small-images")
    route = json.loads(route_card.read_text())
    route["threshold"] = route_threshold
    route_card.write_text(json.dumps(route))
    torch.manual_seed(1)
    card = ModelCard(name="photos", preprocessing=CROPS, threshold=0.6,
                     routes=[{"max_side": 32, "model": "small-images", "weights_sha256": route["weights_sha256"],
                              "reason": "trained on 32x32 images"}])
    save_model(build_network(card.variant), card, directory / "photos")
    return directory / "photos.json"


def scan_rows(archive: Path, model: Path, out: Path) -> dict[str, dict[str, str]]:
    result = CliRunner().invoke(main, ["scan", str(archive), "--model", str(model), "--out", str(out), "--no-report",
                                       "--workers", "0", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with open(out / "results.csv", newline="", encoding="utf-8-sig") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    rng = np.random.default_rng(3)
    root = tmp_path / "archive"
    write_png(root / "small-ai.png", with_patch(background(rng), 1, 2))
    write_png(root / "small-real.png", background(rng))
    write_png(root / "photo.png", background(rng), size=(200, 150))
    return root


def test_small_images_are_scored_by_the_route_and_say_so(tmp_path: Path, archive: Path) -> None:
    card = routing_model(tmp_path / "models")
    routed = scan_rows(archive, card, tmp_path / "routed")
    alone = scan_rows(archive, tmp_path / "models" / "small-images.json", tmp_path / "alone")
    primary_only = tmp_path / "models" / "photos-alone.json"
    data = json.loads(card.read_text())
    data["routes"] = []
    primary_only.write_text(json.dumps(data))
    (tmp_path / "models" / "photos-alone.safetensors").write_bytes((tmp_path / "models" / "photos.safetensors").read_bytes())
    unrouted = scan_rows(archive, primary_only, tmp_path / "unrouted")

    for name in ("small-ai.png", "small-real.png"):
        assert float(routed[name]["prob_ai"]) == pytest.approx(float(alone[name]["prob_ai"]), abs=1e-5)
        assert float(routed[name]["threshold"]) == pytest.approx(0.4)
        assert "scored by small-images@" in routed[name]["note"] and "<= 32 px" in routed[name]["note"]
    assert routed["small-ai.png"]["verdict"] == "ai-generated" and routed["small-real.png"]["verdict"] == "real"
    assert float(routed["photo.png"]["prob_ai"]) == pytest.approx(float(unrouted["photo.png"]["prob_ai"]), abs=1e-5)
    assert float(routed["photo.png"]["threshold"]) == pytest.approx(0.6) and routed["photo.png"]["note"] == ""
    assert {row["model_id"] for row in routed.values()} == {load_model(card, lazy=True).model_id}


def test_the_card_pins_the_route_and_states_it(tmp_path: Path) -> None:
    card = routing_model(tmp_path)
    loaded = load_model(card, lazy=True)
    assert loaded.card.routes[0]["max_side"] == 32 and loaded.scored_by(1).card.name == "small-images"
    assert ModelCard.from_json(loaded.card.to_json()).routes == loaded.card.routes
    assert "images of at most 32 px on their longer side go to small-images" in summarize(loaded.card).input_policy

    data = json.loads(card.read_text())
    data["routes"][0]["weights_sha256"] = "0" * 64
    card.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="not the one the card pins"):
        load_model(card, lazy=True)
    result = CliRunner().invoke(main, ["scan", str(tmp_path), "--model", str(card), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "not the one the card pins" in result.output


def test_the_report_explains_a_routed_image_with_the_network_that_scored_it(tmp_path: Path, archive: Path) -> None:
    card = routing_model(tmp_path / "models")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["scan", str(archive), "--model", str(card), "--out", str(out), "--workers", "0",
                                       ], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "report.html").exists(), result.output
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "small-ai.png" in page and "go to small-images" in page
    assert "differs from the score" not in page and "disagree" not in page


def test_the_route_command_pins_the_model_it_routes_to(tmp_path: Path) -> None:
    from training.__main__ import main as training_main

    save_trained_model(tmp_path, "small-images")
    torch.manual_seed(1)
    save_model(build_network("resnet18-s1stem"), ModelCard(name="photos", preprocessing=CROPS), tmp_path / "photos")
    assert training_main(["route", str(tmp_path / "photos.json"), "--max-side", "32", "--to",
                          str(tmp_path / "small-images.json"), "--reason", "thumbnails"]) == 0
    loaded = load_model(tmp_path / "photos.json", lazy=True)
    assert loaded.scored_by(1).card.name == "small-images"
    assert loaded.card.routes[0]["weights_sha256"] == loaded.scored_by(1).card.weights_sha256


def test_evaluation_judges_a_split_with_the_model_its_images_are_routed_to(tmp_path: Path) -> None:
    from training.evaluate import model_for_split

    card = routing_model(tmp_path / "models")
    rng = np.random.default_rng(0)
    for label in ("REAL", "FAKE"):
        write_png(tmp_path / "small" / "test" / label / "a.png", background(rng))
        write_png(tmp_path / "mixed" / "test" / label / "a.png", background(rng))
    write_png(tmp_path / "mixed" / "test" / "REAL" / "big.png", background(rng), size=(200, 150))
    model = load_model(card, lazy=True)
    assert model_for_split(model, tmp_path / "small", "test").card.name == "small-images"
    assert model_for_split(model, tmp_path / "mixed", "test") is model
