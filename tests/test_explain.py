"""The explain stage: Grad-CAM sanity checks on a tiny detector trained here on synthetic images.

The detector learns that a bright 8x8 patch (anywhere on a 4x4 grid) means "ai-generated", so we
know where the evidence is and can check that the maps are about the model and the input:
randomised weights change the map (Adebayo et al., 2018), occluding the patch changes the map
and the score, the map follows the patch, values lie in [0, 1], and shapes match thumbnails.
"""

from __future__ import annotations

import copy
import io
import re
from pathlib import Path

import numpy as np
import pytest
import synthetic_detector as sd
import torch
from PIL import Image

from audit.cli import print_explanations
from audit.model import LoadedModel, load_model, normalize
from audit.report import (
    THUMBNAIL_SIZE,
    ExplainFailure,
    Explanation,
    GradCamExplainer,
    explain_images,
    gradcam_grid,
    make_thumbnail,
)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The trained detector, through save_model/load_model as the audit would load it."""
    card_path = sd.save_trained_model(tmp_path_factory.mktemp("model"))
    return load_model(card_path)


def as_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def explain(explainer: GradCamExplainer, batch_uint8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(prob_ai (N,), maps (N, H, W)) from one forward pass, as the report's gallery gets them."""
    logits, maps = explainer.explain_batch_logits(batch_uint8)
    return explainer.probabilities(logits), maps


def heatmap_mass_by_cell(heatmap: np.ndarray, cells: int = 4) -> np.ndarray:
    """Share of the map's total in each cell of a cells x cells grid (sums to 1; uniform if empty)."""
    height, width = heatmap.shape
    rows = np.array_split(np.arange(height), cells)
    cols = np.array_split(np.arange(width), cells)
    mass = np.array([[heatmap[np.ix_(r, c)].sum() for c in cols] for r in rows], dtype=np.float64)
    total = mass.sum()
    return mass / total if total > 0 and np.isfinite(total) else np.full((cells, cells), 1.0 / cells**2)


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho (ranks of the flattened maps; ties are rare in float maps)."""
    rank_a = np.argsort(np.argsort(a.ravel())).astype(float)
    rank_b = np.argsort(np.argsort(b.ravel())).astype(float)
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


def randomised_copy(network: torch.nn.Module, seed: int = 5) -> torch.nn.Module:
    """The same architecture with every layer re-initialised (cascading randomisation, all at once)."""
    randomised = copy.deepcopy(network)
    torch.manual_seed(seed)
    for module in randomised.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return randomised.eval()


def test_the_tiny_detector_has_learnt_the_task(model: LoadedModel) -> None:
    images, labels = sd.synthetic_batch(np.random.default_rng(99), 64)
    with torch.no_grad():
        prob_ai = model.probabilities(model.network(normalize(images, model.card.preprocessing)))
    accuracy = ((prob_ai >= 0.5).long() == labels).float().mean().item()
    assert accuracy >= 0.95, "the sanity checks below mean nothing unless the model works"


def test_the_cards_layer_gives_a_map_with_spatial_resolution(model: LoadedModel) -> None:
    assert model.card.gradcam_layer == "layer3"
    assert gradcam_grid(model) == (4, 4), "layer3 of resnet18-s1stem at 32x32; layer4 would be 2x2"


@pytest.mark.slow
def test_randomised_weights_change_the_map(model: LoadedModel) -> None:
    rng = np.random.default_rng(9)
    images = as_batch(*[sd.with_patch(sd.background(rng), int(rng.integers(4)), int(rng.integers(4))) for _ in range(8)])
    with GradCamExplainer(model) as explainer:
        _, trained_maps = explain(explainer, images)
    random_model = LoadedModel(randomised_copy(model.network), model.card, model.weights_path)
    with GradCamExplainer(random_model) as explainer:
        _, random_maps = explain(explainer, images)
    mean_abs_difference = float(np.abs(trained_maps - random_maps).mean())
    correlations = [rank_correlation(a, b) for a, b in zip(trained_maps, random_maps)]
    # Measured: difference 0.17-0.36 per image, rank correlation median ~0.5.
    assert mean_abs_difference > 0.1
    assert float(np.median(correlations)) < 0.75


def test_occluding_the_patch_changes_the_map_and_the_score(model: LoadedModel) -> None:
    rng = np.random.default_rng(11)
    background = sd.background(rng)
    marked = sd.with_patch(background, 3, 3)
    # Occlude the salient region by putting back the pixels under it; for comparison, occlude
    # a cell far from it (top-left) with plain grey.
    occluded_patch = background
    occluded_elsewhere = marked.copy()
    occluded_elsewhere[0:8, 0:8] = 110
    with GradCamExplainer(model) as explainer:
        prob_ai, maps = explain(explainer, as_batch(marked, occluded_patch, occluded_elsewhere))
    change_patch = float(np.abs(maps[0] - maps[1]).mean())
    change_elsewhere = float(np.abs(maps[0] - maps[2]).mean())
    assert prob_ai[0] > 0.9 and prob_ai[1] < 0.5, "without its patch the image is judged real"
    assert change_patch > 0.1
    assert change_patch > 4 * change_elsewhere, (change_patch, change_elsewhere)


def test_the_map_follows_the_patch(model: LoadedModel) -> None:
    """With the patch top-left the map's mass is top-left; with it bottom-right, bottom-right."""
    background = sd.background(np.random.default_rng(12))
    with GradCamExplainer(model) as explainer:
        _, maps = explain(explainer, as_batch(sd.with_patch(background, 0, 0), sd.with_patch(background, 3, 3)))
    top_left = [heatmap_mass_by_cell(m, 2)[0, 0] for m in maps]
    bottom_right = [heatmap_mass_by_cell(m, 2)[1, 1] for m in maps]
    assert top_left[0] > top_left[1] + 0.2
    assert bottom_right[1] > bottom_right[0] + 0.2


def test_values_in_unit_range_and_shapes_match_the_thumbnails(model: LoadedModel, tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    picture = sd.with_patch(sd.background(rng), 1, 2)
    files = [
        sd.write_png(tmp_path / "square.png", picture),
        sd.write_png(tmp_path / "wide.png", picture, size=(200, 120)),
        sd.write_png(tmp_path / "tall.png", picture, size=(48, 300)),
    ]
    rgba = Image.fromarray(picture).convert("RGBA")
    rgba.putalpha(200)
    rgba.save(tmp_path / "alpha.png")
    Image.fromarray(picture).resize((640, 480)).save(tmp_path / "photo.jpg", quality=90)
    files += [tmp_path / "alpha.png", tmp_path / "photo.jpg"]

    results = explain_images(files, model)
    assert [r.path for r in results] == files
    for result in results:
        assert isinstance(result, Explanation), result
        thumbnail = result.thumbnail
        assert max(thumbnail.size) == THUMBNAIL_SIZE
        assert result.heatmap.shape == (thumbnail.height, thumbnail.width)
        assert result.overlay.size == thumbnail.size and result.overlay.mode == "RGB"
        assert result.heatmap.dtype == np.float32
        assert result.heatmap.min() >= 0.0 and result.heatmap.max() <= 1.0
        assert result.heatmap.max() > 0.5, "a flagged image has a non-empty map"
        assert np.asarray(result.overlay).std() > 0
    wide = results[1].thumbnail.size
    assert wide == (THUMBNAIL_SIZE, round(120 * THUMBNAIL_SIZE / 200)), "aspect ratio kept"


def test_probability_is_the_one_the_scan_computes(model: LoadedModel, tmp_path: Path) -> None:
    """Same loader and preprocessing as the scan: the same prob_ai as a plain forward pass."""
    from audit.intake import FileRecord, LoadOptions, load_image

    rng = np.random.default_rng(14)
    files = [sd.write_png(tmp_path / f"{i}.png", sd.with_patch(sd.background(rng), i % 4, 1), size=(96, 64)) for i in range(4)]
    files.append(sd.write_png(tmp_path / "real.png", sd.background(rng)))
    results = explain_images(files, model, batch_size=2)
    for path, result in zip(files, results):
        loaded = load_image(FileRecord(root=str(tmp_path), rel_path=path.name, abs_path=str(path)),
                            LoadOptions(preprocessing=model.card.preprocessing))
        with torch.no_grad():
            expected = model.probabilities(model.network(normalize(loaded.tensor[None], model.card.preprocessing)))[0]
        assert result.prob_ai == pytest.approx(float(expected), abs=1e-5)
        assert result.sha256 == loaded.sha256
    assert results[-1].prob_ai < 0.5 < results[0].prob_ai


def test_hooks_are_released_and_no_batch_is_kept(model: LoadedModel) -> None:
    layer = dict(model.network.named_modules())[model.card.gradcam_layer]
    assert not layer._forward_hooks
    background = sd.background(np.random.default_rng(15))
    with GradCamExplainer(model) as explainer:
        assert layer._forward_hooks, "Grad-CAM hooks the layer the card names"
        explain(explainer, as_batch(sd.with_patch(background, 1, 1)))
        state = explainer._cam.activations_and_grads
        assert not state.activations and not state.gradients and explainer._cam.outputs is None
    assert not layer._forward_hooks
    assert all(p.grad is None for p in model.network.parameters())


def test_paths_are_streamed_a_batch_at_a_time(model: LoadedModel, tmp_path: Path) -> None:
    """Memory stays flat: no more than one batch of paths is read ahead of what was yielded."""
    rng = np.random.default_rng(16)
    files = [sd.write_png(tmp_path / f"{i}.png", sd.with_patch(sd.background(rng), 0, i % 4)) for i in range(7)]
    consumed = []

    def counting_paths():
        for path in files:
            consumed.append(path)
            yield path

    with GradCamExplainer(model, batch_size=3) as explainer:
        stream = explainer.explain_paths(counting_paths())
        first = next(stream)
        assert len(consumed) == 3 and first.path == files[0]
        rest = list(stream)
    assert [r.path for r in [first, *rest]] == files


def test_frozen_weights_under_inference_mode_still_give_the_map(model: LoadedModel) -> None:
    """A caller may have frozen the network and be inside inference_mode (as scoring is)."""
    image = as_batch(sd.with_patch(sd.background(np.random.default_rng(17)), 2, 1))
    with GradCamExplainer(model) as explainer:
        _, expected = explain(explainer, image)
    frozen = copy.deepcopy(model.network).requires_grad_(False)
    with torch.inference_mode(), GradCamExplainer(LoadedModel(frozen, model.card, model.weights_path)) as explainer:
        _, maps = explain(explainer, image)
    np.testing.assert_allclose(maps, expected, atol=1e-5)


def test_unreadable_files_are_results_not_exceptions(model: LoadedModel, tmp_path: Path) -> None:
    good = sd.write_png(tmp_path / "good.png", sd.with_patch(sd.background(np.random.default_rng(18)), 0, 0))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "gone.png"
    results = explain_images([text, good, missing], model)
    assert isinstance(results[0], ExplainFailure) and "not an image" in results[0].error
    assert isinstance(results[1], Explanation)
    assert isinstance(results[2], ExplainFailure) and "cannot read" in results[2].error


def test_small_images_are_enlarged_without_inventing_pixels() -> None:
    picture = Image.fromarray(sd.with_patch(sd.background(np.random.default_rng(19)), 0, 0))
    thumbnail = make_thumbnail(picture, 128)
    assert thumbnail.size == (128, 128)
    colours = {tuple(c) for c in np.asarray(thumbnail).reshape(-1, 3)}
    assert colours <= {tuple(c) for c in np.asarray(picture).reshape(-1, 3)}


def test_explain_command_prints_probabilities_and_writes_overlays(model: LoadedModel, tmp_path: Path) -> None:
    rng = np.random.default_rng(20)
    fake = sd.write_png(tmp_path / "in" / "fake one.png", sd.with_patch(sd.background(rng), 2, 2))
    real = sd.write_png(tmp_path / "in" / "real.png", sd.background(rng))
    broken = tmp_path / "in" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n")
    lines: list[str] = []
    code = print_explanations([fake, real, broken], model.weights_path, tmp_path / "out", echo=lines.append)
    assert code == 3, "an unreadable image gives the scan's 'some files were errors' code"
    fake_line = next(line for line in lines if line.startswith(str(fake)))
    real_line = next(line for line in lines if line.startswith(str(real)))
    assert "\tai-generated\t" in fake_line and "\treal\t" in real_line
    assert any(line.startswith(str(broken)) and "\terror\t" in line for line in lines)
    overlays = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in overlays] == ["000-fake_one-gradcam.png", "001-real-gradcam.png"]
    with Image.open(overlays[0]) as overlay:
        assert max(overlay.size) == THUMBNAIL_SIZE
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_audit_explain_command(model: LoadedModel, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from audit.cli import main

    image = sd.write_png(tmp_path / "suspect.png", sd.with_patch(sd.background(np.random.default_rng(21)), 3, 0))
    result = CliRunner().invoke(main, ["explain", str(image), "--model", str(model.weights_path), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    match = re.search(r"suspect\.png\tprob_ai=([\d.]+)\tai-generated\t", result.output)
    assert match and float(match.group(1)) > 0.9, result.output
    assert (tmp_path / "o" / "000-suspect-gradcam.png").is_file()
    missing_model = CliRunner().invoke(main, ["explain", str(image), "--model", str(tmp_path / "none.json")])
    assert missing_model.exit_code == 2 and "not found" in missing_model.output


def test_explain_applies_the_scans_verdict_rule_to_metadata_declarations(model: LoadedModel, tmp_path: Path) -> None:
    """A picture the model calls real, but whose PNG carries Stable Diffusion parameters, is
    flagged by `audit explain` as the scan would flag it, and the line says why."""
    from PIL import PngImagePlugin

    picture = Image.open(sd.write_png(tmp_path / "plain.png", sd.background(np.random.default_rng(22)))).convert("RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Model: sd15")
    declared = tmp_path / "declared.png"
    picture.save(declared, pnginfo=info)
    lines: list[str] = []
    assert print_explanations([tmp_path / "plain.png", declared], model.weights_path, tmp_path / "out", echo=lines.append) == 0
    plain_line, declared_line = lines[1], lines[2]
    assert "\treal\t" in plain_line
    assert "\tai-generated\t" in declared_line and "declared AI by png-text" in declared_line


def test_each_file_is_read_once_and_the_thumbnail_shows_the_bytes_that_were_judged(
        model: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    import audit.report._pictures

    rng = np.random.default_rng(19)
    picture = sd.write_png(tmp_path / "picture.png", sd.with_patch(sd.background(rng), 0, 0))
    original = picture.read_bytes()
    replacement = sd.background(rng)
    read = audit.report._pictures.read_image_file
    reads: list[Path] = []

    def read_then_replace(path: Path) -> bytes:
        reads.append(path)
        data = read(path)
        sd.write_png(path, replacement)  # the archive changes right after the one read
        return data

    monkeypatch.setattr(audit.report._pictures, "read_image_file", read_then_replace)
    [result] = explain_images([picture], model)
    assert reads == [picture]  # model input, sha256 and thumbnail from one read
    assert isinstance(result, Explanation) and result.sha256 == hashlib.sha256(original).hexdigest()
    with Image.open(io.BytesIO(original)) as opened:
        expected = make_thumbnail(opened.convert("RGB"))
    assert np.array_equal(np.asarray(result.thumbnail), np.asarray(expected))
