"""The training package: fit end to end, resume, evaluation by hand, model card, pickle refusal."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from audit.model import (
    LoadedModel,
    ModelCard,
    ModelError,
    Preprocessing,
    build_network,
    file_sha256,
    load_model,
    read_card,
    save_model,
)
from audit.report import expected_calibration_error
from training import evaluate, export, train
from training.__main__ import main as training_cli
from training.checkpoint import resolve_checkpoint
from training.data import ImageSet, load_split, stratified_split
from training.metrics import choose_threshold, classification_metrics, fit_temperature
from training.options import command_line


def _synthetic_jpeg(label: int, rng: np.random.Generator) -> bytes:
    """REAL: smooth noise; FAKE: smooth noise plus a fine checkerboard (a learnable 'artefact')."""
    base = rng.normal(128, 40, size=(8, 8, 3)).clip(0, 255).astype(np.uint8)
    image = np.asarray(Image.fromarray(base).resize((32, 32), Image.Resampling.BILINEAR), dtype=np.int16)
    if label == 1:
        checker = (np.indices((32, 32)).sum(axis=0) % 2) * 40 - 20
        image = image + checker[..., None]
    buffer = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def make_dataset(root: Path, per_class: dict[str, int], seed: int = 0) -> dict[str, bytes]:
    """Write SPLIT/REAL|FAKE/*.jpg under root; return {relative name: bytes}."""
    rng = np.random.default_rng(seed)
    files = {}
    for split, count in per_class.items():
        for label, folder in ((0, "REAL"), (1, "FAKE")):
            for index in range(count):
                files[f"{split}/{folder}/{index:04d}.jpg"] = _synthetic_jpeg(label, rng)
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def fit_args(data: Path, out: Path, **overrides) -> object:
    argv = ["--data", str(data), "--output-dir", str(out), "--name", "tiny", "--epochs", "2", "--batch-size", "32",
            "--precision", "fp32", "--print-freq", "0", "--val-fraction", "0.2", "--lr", "0.05"]
    args = train.get_args_parser().parse_args(argv)
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.fixture(scope="module")
def dataset_zip(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifake-like")
    files = make_dataset(root / "folder", {"train": 100, "test": 20})
    return make_zip(root / "data.zip", files)


@pytest.mark.slow
def test_fit_from_zip_trains_exports_and_loads(dataset_zip, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training")
    card_path = train.main(fit_args(dataset_zip, tmp_path / "run"))

    assert "starting from scratch" in caplog.text
    model = load_model(card_path)
    card = model.card
    assert card.weights_sha256 and card.weights_dtype == "float16"
    assert card.temperature > 0 and 0.0 < card.threshold < 1.0
    assert "balanced accuracy" in card.threshold_method
    (data_set,) = card.training["data"]
    assert data_set["train_images"] == 160 and data_set["validation_images"] == 40 and data_set["name"] == "data"
    assert "training fit" in card.training["command"] and "--precision fp32" in card.training["command"]
    assert card.training["mixed_precision"] == "fp32"
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,train_loss,val_accuracy,val_auc")
    assert len(history) == 3
    # One log line per epoch with the figures an operator watches.
    epoch_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epoch_lines) == 2 and all("val_auc" in l and "img/s" in l and "ETA" in l for l in epoch_lines)
    probs = model.probabilities(model.network(torch.zeros(2, 3, 32, 32)))
    assert probs.shape == (2,) and bool(((probs >= 0) & (probs <= 1)).all())


@pytest.mark.slow
def test_fine_tuning_from_an_exported_model_records_what_it_started_from(dataset_zip, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training")
    first = train.main(fit_args(dataset_zip, tmp_path / "first", epochs=1))
    start = first.with_suffix(".safetensors")
    tuned = train.main(fit_args(dataset_zip, tmp_path / "tuned", epochs=1, pretrained=str(start),
                                rescale_prob=0.05, blur_prob=0.0))

    assert f"starting from pretrained weights {start}" in caplog.text
    training = load_model(tuned).card.training
    # The start is named by its hash: the path may later hold another model (the shipped one is replaced).
    assert training["pretrained"] == {"path_given": str(start), "sha256": file_sha256(start)}
    assert (training["augmentation"]["rescale_prob"], training["augmentation"]["blur_prob"]) == (0.05, 0.0)
    assert "--rescale-prob 0.05 --blur-prob 0.0" in training["command"]


def test_folder_and_zip_hold_the_same_data(tmp_path):
    files = make_dataset(tmp_path / "folder", {"train": 5, "test": 3})
    archive = make_zip(tmp_path / "data.zip", {f"cifake/{k}": v for k, v in files.items()})
    pre = Preprocessing()
    from_folder = load_split(tmp_path / "folder", "test", pre)
    from_zip = load_split(archive, "test", pre)
    assert from_folder.sha256 == from_zip.sha256
    assert torch.equal(from_folder.images, from_zip.images)
    assert from_folder.labels.tolist() == [1, 1, 1, 0, 0, 0]  # FAKE sorts before REAL


def test_validation_split_is_stratified_seeded_and_keeps_duplicates_together():
    labels = torch.tensor([0] * 50 + [1] * 50)
    hashes = [f"r{i}" for i in range(50)] + [f"f{i // 2}" for i in range(50)]  # fake images in duplicate pairs
    train_a, val_a = stratified_split(labels, hashes, 0.2, seed=3)
    train_b, val_b = stratified_split(labels, hashes, 0.2, seed=3)
    assert np.array_equal(val_a, val_b) and np.array_equal(train_a, train_b)
    assert sorted(np.concatenate([train_a, val_a]).tolist()) == list(range(100))
    assert (labels[val_a] == 0).sum() == 10 and (labels[val_a] == 1).sum() == 10
    assert not {hashes[i] for i in train_a} & {hashes[i] for i in val_a}


@pytest.mark.slow
def test_resume_continues_where_the_last_run_stopped(dataset_zip, tmp_path):
    straight = train.main(fit_args(dataset_zip, tmp_path / "straight"))
    train.main(fit_args(dataset_zip, tmp_path / "split", stop_after_epochs=1))
    state = json.loads((tmp_path / "split" / "checkpoint.json").read_text())
    assert state["epochs_done"] == 1 and not (tmp_path / "split" / "tiny.json").exists()

    interim = export.main(export.get_args_parser().parse_args([str(tmp_path / "split"), "--output", str(tmp_path / "interim")]))
    assert any(note.startswith("INTERIM: exported after epoch 1 of a 2-epoch") for note in load_model(interim).card.notes)

    # Batches augmented by worker processes must be the very batches the main process would make.
    resumed = train.main(fit_args(dataset_zip, tmp_path / "split", resume="auto", workers=2))

    history = (tmp_path / "split" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]
    a, b = load_file(str(straight.with_suffix(".safetensors"))), load_file(str(resumed.with_suffix(".safetensors")))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run (with workers) must end with the same weights as a straight one"


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_an_fp16_run_keeps_its_loss_scale_across_a_resume(dataset_zip, tmp_path):
    small = {"precision": "fp16", "limit_per_class": 12, "batch_size": 8}
    straight = train.main(fit_args(dataset_zip, tmp_path / "straight", **small))
    train.main(fit_args(dataset_zip, tmp_path / "split", stop_after_epochs=1, **small))
    saved = json.loads((tmp_path / "split" / "checkpoint.json").read_text())
    assert saved["extra"]["grad_scaler"]["scale"] > 0, "the loss scale must be checkpointed with the run"
    resumed = train.main(fit_args(dataset_zip, tmp_path / "split", resume="auto", **small))
    a, b = load_file(str(straight.with_suffix(".safetensors"))), load_file(str(resumed.with_suffix(".safetensors")))
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed fp16 run must end with the same weights as a straight one"


@pytest.mark.parametrize("old, new", [("off", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("auto", "auto")])
def test_the_old_amp_flag_names_the_same_precision(old, new):
    # Model cards and the README record commands with --amp; it stays a hidden alias (off is fp32).
    fit_old = train.get_args_parser().parse_args(["--data", "d", "--amp", old])
    fit_new = train.get_args_parser().parse_args(["--data", "d", "--precision", new])
    assert fit_old.precision == fit_new.precision == new
    assert command_line(fit_old) == command_line(fit_new)
    evaluate_old = evaluate.get_args_parser().parse_args(["m.json", "--data", "d", "--amp", old])
    assert evaluate_old.precision == new
    assert evaluate.get_args_parser().parse_args(["m.json", "--data", "d"]).precision == "fp32"
    assert "--amp" not in train.get_args_parser().format_help()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_is_a_usage_error(tmp_path, capsys):
    assert training_cli(["fit", "--data", str(tmp_path), "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_pickle_checkpoints_are_refused(tmp_path, capsys):
    net = build_network("resnet18-s1stem")
    torch.save(net.state_dict(), tmp_path / "model.pth")
    with pytest.raises(ModelError, match="pickle"):
        load_model(tmp_path / "model.pth")
    with pytest.raises(ModelError, match="pickle"):
        resolve_checkpoint(tmp_path / "model.pth")
    assert training_cli(["fit", "--data", str(tmp_path), "--resume", str(tmp_path / "model.pth")]) == 2
    assert "refused" in capsys.readouterr().err
    # A pickle hiding behind the safetensors name is refused too, not unpickled.
    card = save_model(net, ModelCard(name="disguised"), tmp_path / "disguised")
    torch.save(net.state_dict(), tmp_path / "disguised.safetensors")
    with pytest.raises(ModelError):
        load_model(tmp_path / "disguised.json")
    with pytest.raises(ModelError, match="pickle"):
        load_model(tmp_path / "disguised.json", verify_hash=False)
    assert card.weights_sha256


def test_model_card_survives_save_and_reload(tmp_path):
    card = ModelCard(
        name="round-trip",
        preprocessing=Preprocessing(mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), alpha_background=(0, 0, 0)),
        temperature=1.37,
        threshold=0.4321,
        threshold_method="chosen by hand",
        training={"seed": 7, "history": [{"epoch": 1, "val_accuracy": 0.5}]},
        validation_metrics={"accuracy": 0.9},
        test_metrics={"official_test": {"accuracy": 0.97, "confusion_matrix": [[1, 2], [3, 4]]}},
        notes=["a note"],
    )
    saved = save_model(build_network(card.variant), card, tmp_path / "m")
    assert read_card(tmp_path / "m.json") == saved
    assert load_model(tmp_path / "m").card == saved
    assert saved.to_dict() | {"weights_sha256": "", "weights_dtype": "float32"} == card.to_dict()


def test_unknown_card_fields_and_changed_weights_are_refused(tmp_path):
    save_model(build_network("resnet18-s1stem"), ModelCard(name="m"), tmp_path / "m")
    weights = tmp_path / "m.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ModelError, match="does not match its card"):
        load_model(tmp_path / "m.json")
    data = json.loads((tmp_path / "m.json").read_text())
    data["surprise"] = 1
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="unknown fields"):
        read_card(tmp_path / "m.json")


# --------------------------------------------------------------------------- metrics by hand

HAND_PROBS = np.array([0.95, 0.81, 0.28, 0.62, 0.15, 0.05])
HAND_LABELS = np.array([1, 1, 1, 0, 0, 0])


def test_metrics_match_a_case_computed_by_hand():
    m = classification_metrics(HAND_PROBS, HAND_LABELS, threshold=0.5)
    # predicted AI: 0.95, 0.81, 0.62 -> TP 2, FN 1 (0.28), FP 1 (0.62), TN 2
    assert m["confusion_matrix"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    # positive/negative pairs ranked correctly: 3 + 3 + 2 of 9
    assert m["roc_auc"] == pytest.approx(8 / 9)
    # confidences 0.95 0.81 0.72 0.62 0.85 0.95; right, right, wrong, wrong, right, right;
    # each in its own 1/30-wide bin except the two 0.95s: (0.05*2 + 0.19 + 0.72 + 0.62 + 0.15) / 6
    assert m["ece"] == pytest.approx(1.78 / 6)
    assert expected_calibration_error(np.array([0.9] * 10), np.array([1] * 9 + [0])) == pytest.approx(0.0)


class _LookupNet(torch.nn.Module):
    """Outputs the logits of a fixed probability per pixel value, to evaluate a known case."""

    def __init__(self, prob_by_value: dict[int, float]):
        super().__init__()
        table = torch.full((256,), 0.5)
        for value, prob in prob_by_value.items():
            table[value] = prob
        self.register_buffer("logit_ai", torch.logit(table.double()).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        values = images[:, 0, 0, 0].round().long().clamp(0, 255)
        logit_ai = self.logit_ai[values]
        return torch.stack([torch.zeros_like(logit_ai), logit_ai], dim=1)


def test_evaluate_reproduces_the_hand_computed_case_on_official_and_deduplicated_splits():
    values = list(range(10, 16))
    # Identity preprocessing: normalised input == pixel value.
    pre = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))
    card = ModelCard(name="lookup", preprocessing=pre, threshold=0.5, temperature=1.0)
    model = LoadedModel(network=_LookupNet(dict(zip(values, HAND_PROBS))), card=card, weights_path=Path("none"))
    images = torch.stack([torch.full((3, 32, 32), v, dtype=torch.uint8) for v in values])
    test = ImageSet(images, torch.tensor(HAND_LABELS), [f"img{v}" for v in values], [f"h{v}" for v in values])

    # The misclassified real image (0.62) also occurs in train: the de-duplicated split drops it.
    results = evaluate.evaluate_model(model, test, {"h13"}, torch.device("cpu"), None, robustness=False)

    official, dedup = results["official_test"], results["deduplicated_test"]
    assert official["confusion_matrix"] == [[2, 1], [1, 2]] and official["roc_auc"] == pytest.approx(8 / 9)
    assert dedup["count"] == 5 and dedup["dropped_files_also_in_train"] == 1
    assert dedup["confusion_matrix"] == [[2, 0], [1, 2]]
    assert dedup["accuracy"] == pytest.approx(4 / 5) and dedup["precision"] == pytest.approx(1.0)
    # left: positives 0.95 0.81 0.28 against negatives 0.15 0.05, all six pairs in order
    assert dedup["roc_auc"] == pytest.approx(1.0)


@pytest.mark.slow
def test_evaluate_command_writes_metrics_plots_and_card(dataset_zip, tmp_path):
    card_path = train.main(fit_args(dataset_zip, tmp_path / "run", epochs=1))
    args = evaluate.get_args_parser().parse_args([str(card_path), "--data", str(dataset_zip), "--update-card"])
    evaluate.main(args)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["official_test"]["count"] == 40
    assert set(metrics["robustness_official_test"]) == {
        "jpeg_q90", "jpeg_q75", "jpeg_q50", "downscale_x2_upscale", "gaussian_blur_sigma1"
    }
    for plot in ("roc.png", "confusion_matrix.png", "reliability.png"):
        assert (tmp_path / "run" / plot).stat().st_size > 1000
    card = read_card(card_path)
    assert card.test_metrics["official_test"]["accuracy"] == metrics["official_test"]["accuracy"]
    load_model(card_path)  # the card edit leaves the weights' hash valid


def test_temperature_and_threshold_are_fitted_on_held_out_scores():
    rng = np.random.default_rng(0)
    labels = torch.tensor(rng.integers(0, 2, 2000))
    # score = +-1 + N(0, 1): the true log-odds are 2 * score, and the logits given are 4 * score,
    # so the temperature that calibrates them is 2.
    score = torch.where(labels == 1, 1.0, -1.0) + torch.tensor(rng.normal(0, 1, 2000), dtype=torch.float32)
    logits = torch.stack([torch.zeros(2000), 4 * score], dim=1)
    temperature = fit_temperature(logits, labels)
    assert 1.7 < temperature < 2.3
    threshold, method = choose_threshold(np.array([0.1, 0.2, 0.7, 0.9]), np.array([0, 0, 1, 1]))
    assert 0.2 < threshold < 0.7 and "validation" in method


@pytest.mark.parametrize(
    "change, message",
    [
        ({"temperature": 0}, "temperature must be > 0"),
        ({"threshold": 1.5}, "threshold must lie in"),
        ({"preprocessing": {"input_size": 32, "colour": "blue"}}, "malformed"),
        ({"class_names": ["cat", "dog"]}, "class_names"),
    ],
)
def test_a_card_that_would_give_wrong_probabilities_is_refused(tmp_path, change, message):
    save_model(build_network("resnet18-s1stem"), ModelCard(name="m"), tmp_path / "m")
    data = json.loads((tmp_path / "m.json").read_text()) | change
    (tmp_path / "m.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        load_model(tmp_path / "m.json")


def test_a_broken_file_in_a_training_folder_is_skipped_not_fatal(tmp_path, caplog):
    make_dataset(tmp_path, {"train": 4})
    (tmp_path / "train" / "FAKE" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    caplog.set_level(logging.WARNING, logger="training")
    loaded = load_split(tmp_path, "train", Preprocessing())
    assert len(loaded) == 8
    assert "skipped 1 unreadable files" in caplog.text and "broken.jpg" in caplog.text
