"""The ``uncertain`` verdict: a row becomes uncertain in each of its three ways (a probability in the
card's band, an image unlike the training images, a verdict that flips under degradation), the
card round-trips its rules, and the exit codes treat it apart from ``ai-generated``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import synthetic_detector as sd
import torch
from click.testing import CliRunner
from helpers.cli import results_by_path
from run_fixture import make_images

from audit.cli import main
from audit.engines import Scorer
from audit.intake import FileRecord, LoadOptions, load_image
from audit.model import ModelCard, NoveltyStatistics, Uncertainty, load_model, plan_compute, read_card

# Each test trains or scans with a small model: seconds apiece on 2 cores.
pytestmark = pytest.mark.slow


def scan(*args: str | Path):
    return CliRunner().invoke(main, ["scan", *map(str, args), "--no-report", "--workers", "0", "-q"],
                              catch_exceptions=False)


def rewrite_card(card_path: Path, **changes) -> Path:
    """The same weights under a changed card (the weights' sha256 still matches)."""
    card = dataclasses.replace(read_card(card_path), **changes)
    card_path.write_text(card.to_json(), encoding="utf-8")
    return card_path


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sd.save_trained_model(tmp_path_factory.mktemp("model"))


def copy_model(detector: Path, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for suffix in (".json", ".safetensors"):
        (directory / detector.with_suffix(suffix).name).write_bytes(detector.with_suffix(suffix).read_bytes())
    return directory / detector.name


def scores_of(model_path: Path, files: list[Path], root: Path, degraded: bool = False):
    """prob_ai, novelty and the degraded copy's prob_ai of each file, as the scan computes them."""
    model = load_model(model_path)
    scorer = Scorer(model, plan_compute("cpu", "fp32"))
    options = LoadOptions(preprocessing=model.card.preprocessing, check_degraded=degraded)
    loaded = [load_image(FileRecord(root=str(root), rel_path=path.relative_to(root).as_posix(), abs_path=str(path)),
                         options) for path in files]
    images = torch.stack([item.tensor for item in loaded])
    if degraded:
        images = torch.cat([images, torch.stack([item.degraded_tensor for item in loaded])])
    return scorer.scores(images, degraded=len(loaded) if degraded else 0)


def pooled_features(model_path: Path, images: torch.Tensor) -> np.ndarray:
    from audit.model import features_and_logits, normalize

    model = load_model(model_path)
    with torch.no_grad():
        features, _ = features_and_logits(model.network, normalize(images, model.card.preprocessing))
    return features.numpy()


def rows_by_path(out: Path) -> dict[str, dict[str, str]]:
    return results_by_path(out)


def test_card_round_trips_the_uncertain_rules_and_old_cards_have_none(detector: Path) -> None:
    rng = np.random.default_rng(0)
    stats = NoveltyStatistics.fit(rng.normal(size=(200, 16)), components=4, quantile=0.99, fitted="200 test features")
    rules = Uncertainty(band_low=0.3, band_high=0.7, band_fitted="by hand", novelty=stats, check_degraded=True)
    card = dataclasses.replace(read_card(detector), uncertainty=rules)
    again = ModelCard.from_json(card.to_json())
    assert again.uncertainty == rules
    assert again.uncertainty.novelty.threshold == pytest.approx(stats.threshold)
    old = json.loads(card.to_json())
    del old["uncertainty"]
    assert ModelCard.from_dict(old).uncertainty is None
    with pytest.raises(Exception, match="band must hold the threshold"):
        ModelCard.from_json(dataclasses.replace(card, uncertainty=Uncertainty(band_low=0.6, band_high=0.7)).to_json())


def test_a_probability_in_the_band_is_uncertain(detector: Path, tmp_path: Path) -> None:
    model = copy_model(detector, tmp_path / "model")
    archive = tmp_path / "archive"
    files = [path for path, _ in make_images(archive, 8)]
    probs = scores_of(model, files, archive).probs
    nearest = min(range(len(files)), key=lambda i: abs(probs[i] - 0.5))
    low, high = min(probs[nearest], 0.5) - 1e-4, max(probs[nearest], 0.5) + 1e-4
    rewrite_card(model, uncertainty=Uncertainty(band_low=low, band_high=high, band_fitted="a test's band"))
    result = scan(archive, "--model", model, "--out", tmp_path / "out")
    rows = rows_by_path(tmp_path / "out")
    row = rows[files[nearest].relative_to(archive).as_posix()]
    assert row["verdict"] == "uncertain", (result.output, row)
    assert row["verdict_reason"].startswith(f"uncertain: probability {probs[nearest]:.2f} in the band")
    outside = [r for r in rows.values() if not low <= float(r["prob_ai"]) < high]
    assert outside and all(r["verdict"] in ("ai-generated", "real") for r in outside)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["by_verdict"]["uncertain"] == summary["uncertain"] == len(rows) - len(outside)
    assert row["novelty"] == ""  # the card has no novelty statistics


def test_an_image_unlike_the_training_images_is_uncertain(detector: Path, tmp_path: Path) -> None:
    model = copy_model(detector, tmp_path / "model")
    rng = np.random.default_rng(3)
    training, _ = sd.synthetic_batch(rng, 64)
    stats = NoveltyStatistics.fit(pooled_features(model, training), components=4, quantile=1.0,
                                  fitted="64 synthetic training images")
    rewrite_card(model, uncertainty=Uncertainty(novelty=stats))
    archive = tmp_path / "archive"
    files = [path for path, _ in make_images(archive, 4)]
    stripes = np.zeros((32, 32, 3), dtype=np.uint8)
    stripes[:, ::2] = (255, 0, 255)  # saturated magenta stripes: nothing like the smooth grey noise
    strange = sd.write_png(archive / "strange" / "stripes.png", stripes)
    scan(archive, "--model", model, "--out", tmp_path / "out")
    rows = rows_by_path(tmp_path / "out")
    odd = rows["strange/stripes.png"]
    assert odd["verdict"] == "uncertain"
    assert odd["verdict_reason"].startswith("uncertain: unlike the training images (novelty ")
    assert float(odd["novelty"]) > stats.threshold
    usual = [rows[path.relative_to(archive).as_posix()] for path in files]
    assert all(float(row["novelty"]) < float(odd["novelty"]) for row in usual)
    assert strange.is_file()


def test_a_verdict_that_flips_under_degradation_is_uncertain_with_check_degraded(detector: Path,
                                                                                tmp_path: Path) -> None:
    model = copy_model(detector, tmp_path / "model")
    archive = tmp_path / "archive"
    files = [path for path, _ in make_images(archive, 8)]
    scores = scores_of(model, files, archive, degraded=True)
    gaps = [abs(p - d) for p, d in zip(scores.probs, scores.prob_degraded)]
    chosen = max(range(len(files)), key=gaps.__getitem__)
    threshold = (scores.probs[chosen] + scores.prob_degraded[chosen]) / 2  # the fixture: a threshold they straddle
    rewrite_card(model, threshold=threshold)
    name = files[chosen].relative_to(archive).as_posix()

    scan(archive, "--model", model, "--out", tmp_path / "plain")
    assert rows_by_path(tmp_path / "plain")[name]["verdict"] in ("ai-generated", "real")
    scan(archive, "--model", model, "--out", tmp_path / "checked", "--check-degraded")
    row = rows_by_path(tmp_path / "checked")[name]
    assert row["verdict"] == "uncertain"
    assert row["verdict_reason"].startswith("uncertain: flips under 0.5x rescale and JPEG q75")


def test_fail_on_flagged_ignores_uncertain_and_fail_on_uncertain_exits_4(detector: Path, tmp_path: Path) -> None:
    model = copy_model(detector, tmp_path / "model")
    archive = tmp_path / "archive"
    image = sd.write_png(archive / "one.png", sd.background(np.random.default_rng(5)))
    # Every probability below 1 is in the band: the one image is uncertain.
    rewrite_card(model, uncertainty=Uncertainty(band_low=0.0, band_high=1.0, band_fitted="everything"))
    flagged = scan(archive, "--model", model, "--out", tmp_path / "a", "--fail-on-flagged")
    assert rows_by_path(tmp_path / "a")["one.png"]["verdict"] == "uncertain"
    assert flagged.exit_code == 0, flagged.output
    uncertain = scan(archive, "--model", model, "--out", tmp_path / "b", "--fail-on-uncertain")
    assert uncertain.exit_code == 4
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["review"]["uncertain_awaiting_review"] == 1 and summary["flagged"] == 0
    # A reviewer's decision on the uncertain row settles it.
    decided = CliRunner().invoke(main, ["review", "set", str(image), "false-positive", "--archive", str(archive)],
                                 catch_exceptions=False)
    assert decided.exit_code == 0, decided.output
    again = scan(archive, "--model", model, "--out", tmp_path / "c", "--fail-on-uncertain")
    assert again.exit_code == 0, again.output
    assert rows_by_path(tmp_path / "c")["one.png"]["review"] == "false-positive"


def test_the_report_lists_uncertain_images_in_their_own_section_and_counts_them(detector: Path, tmp_path: Path) -> None:
    model = copy_model(detector, tmp_path / "model")
    archive = tmp_path / "archive"
    files = [path for path, _ in make_images(archive, 6)]
    probs = scores_of(model, files, archive).probs
    low = min(min(probs), 0.5)
    # Everything from the lowest probability up to the threshold is uncertain; flagged images stay flagged.
    rewrite_card(model, uncertainty=Uncertainty(band_low=low, band_high=0.5, band_fitted="a test's band"))
    result = CliRunner().invoke(main, ["scan", str(archive), "--model", str(model), "--out", str(tmp_path / "out"),
                                       "--workers", "0", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = rows_by_path(tmp_path / "out")
    uncertain = [row for row in rows.values() if row["verdict"] == "uncertain"]
    flagged = [row for row in rows.values() if row["verdict"] == "ai-generated"]
    assert uncertain and flagged
    page = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert f'data-count="uncertain">{len(uncertain)}<' in page
    section = page[page.index('<section class="uncertain-section"'):]
    section = section[: section.index("</section>")]
    assert f"Uncertain: a person should look ({len(uncertain)})" in section
    assert section.count('<div class="card uncertain"') == len(uncertain)
    for row in uncertain:
        assert f'data-path="{row["path"]}"' in section
    assert "uncertain because" in section and "in the band" in section
    for row in flagged:  # flagged images are in the gallery, not here
        assert f'data-path="{row["path"]}"' not in section
    assert (tmp_path / "out" / "report.pdf").stat().st_size > 0


def test_a_routed_image_is_judged_by_its_route_models_uncertain_rules(tmp_path: Path) -> None:
    """A card routing small images to another model: the route's band and novelty apply to them,
    the card's own to the rest, with --check-degraded the copy goes through the same network."""
    from test_routing import routing_model

    card = routing_model(tmp_path / "models")
    route_card = tmp_path / "models" / "small-images.json"
    rng = np.random.default_rng(4)
    training, _ = sd.synthetic_batch(rng, 32)
    stats = NoveltyStatistics.fit(pooled_features(route_card, training), components=4, quantile=1.0)
    rewrite_card(route_card, uncertainty=Uncertainty(band_low=0.0, band_high=1.0, band_fitted="all", novelty=stats))
    archive = tmp_path / "archive"
    sd.write_png(archive / "small.png", sd.background(rng))
    sd.write_png(archive / "photo.png", sd.background(rng), size=(200, 150))
    scan(archive, "--model", card, "--out", tmp_path / "out", "--check-degraded")
    rows = rows_by_path(tmp_path / "out")
    assert rows["small.png"]["verdict"] == "uncertain" and "in the band" in rows["small.png"]["verdict_reason"]
    assert float(rows["small.png"]["novelty"]) > 0
    assert rows["photo.png"]["verdict"] in ("ai-generated", "real", "uncertain")
    assert rows["photo.png"]["novelty"] == ""  # the card's own model has no novelty statistics
    assert "in the band" not in rows["photo.png"]["verdict_reason"]
