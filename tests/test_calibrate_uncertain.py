"""``python -m training calibrate-uncertain``: fits the band and the novelty statistics on a tiny
synthetic data set (tests/synthetic_detector.py) and writes them into the card; and the evaluation
reports the uncertain rate per source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import synthetic_detector as sd

from audit.model import load_model, read_card
from training.__main__ import main as training_cli
from training.uncertain import fit_band

# Each test trains or scans with a small model: seconds apiece on 2 cores.
pytestmark = pytest.mark.slow


def make_data_set(root: Path, per_class: int = 24, seed: int = 11) -> Path:
    """train/ and val/ of REAL (smooth noise) and FAKE (with the bright patch) PNGs."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", per_class // 2)):
        for index in range(2 * count):
            image = sd.background(rng)
            fake = index % 2 == 1
            if fake:
                image = sd.with_patch(image, int(rng.integers(4)), int(rng.integers(4)))
            sd.write_png(root / split / ("FAKE" if fake else "REAL") / f"src{index % 3}_{index:03d}.png", image)
    return root


@pytest.fixture(scope="module")
def data_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_data_set(tmp_path_factory.mktemp("data") / "synthetic")


def test_calibrate_uncertain_writes_the_band_and_novelty_into_the_card(data_set: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture) -> None:
    card_path = sd.save_trained_model(tmp_path)
    before = read_card(card_path)
    assert before.uncertainty is None
    code = training_cli(["calibrate-uncertain", "--model", str(card_path), "--data", str(data_set),
                         "--train-sample", "30", "--band-errors", "0.5", "--band-max-share", "0.4",
                         "--novelty-quantile", "0.95", "--novelty-components", "4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "band " in printed and "novelty threshold" in printed and str(card_path) in printed
    card = read_card(card_path)
    rules = card.uncertainty
    assert rules.band_low <= card.threshold <= rules.band_high
    assert "validation images" in rules.band_fitted
    assert rules.novelty is not None and rules.novelty.threshold > 0 and len(rules.novelty.mean) == 512
    assert len(rules.novelty.components) == 4 and "30 training images" in rules.novelty.fitted
    # The weights are untouched: the model still loads with its hash checked.
    assert load_model(card_path).card.uncertainty == rules
    assert card.weights_sha256 == before.weights_sha256


def test_the_band_is_the_narrowest_that_meets_the_targets() -> None:
    # 10 images: errors at 0.45 (an AI image called real) and 0.55 (a real one flagged), far ones right.
    prob = np.array([0.05, 0.1, 0.2, 0.3, 0.45, 0.55, 0.7, 0.8, 0.9, 0.95])
    labels = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])
    novel = np.zeros(10, dtype=bool)
    fit = fit_band(prob, labels, 0.5, novel, error_target=1.0, max_share=0.3)
    assert fit.met_targets and fit.errors_caught == 1.0 and fit.share_uncertain == pytest.approx(0.2)
    assert fit.low <= 0.45 and 0.55 < fit.high <= 0.7
    # A share too small for both errors: the band catches what it can within the share.
    tight = fit_band(prob, labels, 0.5, novel, error_target=1.0, max_share=0.1)
    assert not tight.met_targets and tight.errors_caught == pytest.approx(0.5) and tight.share_uncertain <= 0.1
    # An error the novelty test already catches needs no band width.
    novel[4] = True
    fit = fit_band(prob, labels, 0.5, novel, error_target=1.0, max_share=0.3)
    assert fit.low > 0.45 and fit.errors_caught == 1.0


def test_evaluate_reports_the_uncertain_rate_and_the_wrong_verdicts_it_holds(data_set: Path, tmp_path: Path) -> None:
    import dataclasses
    import json

    from audit.model import Uncertainty, summarize

    card_path = sd.save_trained_model(tmp_path)
    card = read_card(card_path)
    # A band over everything below the threshold: every real image and every missed AI image is uncertain.
    card.uncertainty = Uncertainty(band_low=0.0, band_high=card.threshold, band_fitted="a test's band")
    card_path.write_text(card.to_json(), encoding="utf-8")
    manifest = tmp_path / "manifest.tsv"
    lines = ["file\tgenerator"] + [f"val/FAKE/src{i % 3}_{i:03d}.png\tgen-{(i // 2) % 2}" for i in range(1, 24, 2)]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = training_cli(["evaluate", str(card_path), "--data", str(data_set), "--manifest", str(manifest),
                         "--no-robustness", "--update-card", "--output-dir", str(tmp_path / "eval")])
    assert code == 0
    measured = json.loads((tmp_path / "eval" / "metrics.json").read_text())["data_sets"]["synthetic"]
    figures = measured["uncertain"]
    prob_real_share = measured["metrics"]["confusion_matrix"][0]
    assert figures["uncertain_rate"] > 0 and figures["wrong_uncertain"] <= figures["wrong"]
    assert figures["ai_caught_or_uncertain_rate"] == 1.0  # every AI image is caught or below the threshold
    assert figures["real_flagged_rate"] == pytest.approx(prob_real_share[1] / sum(prob_real_share))
    for table in ("per_source", "per_generator"):
        assert all({"uncertain_rate", "wrong", "wrong_uncertain"} <= set(row) for row in measured[table])
    assert {row["source"] for row in measured["per_generator"]} >= {"AI: gen-0", "AI: gen-1"}
    # The card keeps the figures, and the readable summary (the method page) shows them.
    figures_shown = summarize(read_card(card_path)).data_sets[0]
    assert figures_shown.uncertain_rate == figures["uncertain_rate"]
    assert figures_shown.wrong_uncertain == figures["wrong_uncertain"]
    assert dataclasses.asdict(read_card(card_path).uncertainty)["band_high"] == card.threshold
