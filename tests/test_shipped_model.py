"""The default model that ships inside the package: it loads with no download, its card carries
the measured test figures, and it tells the bundled example archive's REAL from FAKE."""

from __future__ import annotations

from pathlib import Path

from audit.discover import discover
from audit.loading import LoadOptions
from audit.model import DEFAULT_MODEL_PATH, load_model
from audit.scoring import Scorer, plan_compute, score_records

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cifake-sample"


def test_the_default_model_is_installed_with_a_complete_card() -> None:
    model = load_model()  # verifies the weights' sha256 against the card
    card = model.card
    assert model.weights_path == DEFAULT_MODEL_PATH.with_suffix(".safetensors")
    assert DEFAULT_MODEL_PATH.with_suffix(".safetensors").stat().st_size <= 25 * 1024 * 1024
    official = card.test_metrics["official_test"]
    assert official["count"] == 20000 and 0.9 < official["accuracy"] <= 1.0
    assert "deduplicated_test" in card.test_metrics and "robustness_official_test" in card.test_metrics
    assert card.gradcam_layer and card.threshold_method and card.temperature > 0


def test_the_default_model_separates_the_example_archive() -> None:
    model = load_model()
    records = list(discover([str(SAMPLE)]))
    scorer = Scorer(model, plan_compute("cpu", "fp32"))
    scored = list(score_records(records, scorer, LoadOptions(preprocessing=model.card.preprocessing), workers=0))
    truth = [record.rel_path.split("/")[0] == "FAKE" for record in records]
    flagged = [item.prob_ai >= model.card.threshold for item in scored]
    correct = sum(t == f for t, f in zip(truth, flagged))
    assert len(records) == 200 and correct / len(records) >= 0.9  # measured: see README "The detector"
