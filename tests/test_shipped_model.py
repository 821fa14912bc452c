"""The models that ship inside the package: they load with no download, their cards carry the
measured figures, and the default one tells the bundled example archive's REAL from FAKE."""

from __future__ import annotations

from pathlib import Path

import pytest

from audit.engines import Scorer, score_records
from audit.intake import LoadOptions, discover
from audit.model import DEFAULT_MODEL_PATH, load_model, plan_compute, route_policies, shipped_models

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifake-sample"


def test_the_shipped_models_are_installed_with_complete_cards() -> None:
    names = [path.stem for path in shipped_models()]
    assert names[0] == DEFAULT_MODEL_PATH.stem and "cifake-resnet18" in names
    total_bytes = 0
    for card_path in shipped_models():
        model = load_model(card_path, lazy=True)  # verifies the weights' sha256 against the card
        card = model.card
        total_bytes += model.weights_path.stat().st_size
        official = card.test_metrics["official_test"]
        assert official["count"] == 20000 and 0.9 < official["accuracy"] <= 1.0
        assert "deduplicated_test" in card.test_metrics
        assert card.gradcam_layer and card.threshold_method and card.temperature > 0
    assert total_bytes <= 50 * 1024 * 1024  # the package stays small


def test_the_default_model_was_measured_beyond_cifake() -> None:
    card = load_model(lazy=True).card
    wild = card.test_metrics["data_sets"]["wild"]
    assert wild["split"] == "val" and wild["metrics"]["count"] == 489
    assert {"per_source", "per_generator", "file_level"} <= set(wild)
    assert "png_1x" in wild["file_level"]["cases"] and "stored_4x" in wild["file_level"]["cases"]
    assert "real images flagged" in card.threshold_method


@pytest.mark.slow
@pytest.mark.parametrize("name", ["general-resnet18", "cifake-resnet18"])
def test_each_shipped_model_separates_the_example_archive(name: str) -> None:
    model = load_model(name)
    records = list(discover([str(SAMPLE)]))
    scorer = Scorer(model, plan_compute("cpu", "fp32"))
    options = LoadOptions(preprocessing=model.card.preprocessing, routes=route_policies(model.routes))
    scored = list(score_records(records, scorer, options, workers=0))
    truth = [record.rel_path.split("/")[0] == "FAKE" for record in records]
    # Each image at the threshold of the model that scored it (the card may route small images).
    flagged = [item.prob_ai >= model.scored_by(item.result.route).card.threshold for item in scored]
    correct = sum(t == f for t, f in zip(truth, flagged))
    assert len(records) == 200 and correct / len(records) >= 0.9  # measured: see README "The models"
