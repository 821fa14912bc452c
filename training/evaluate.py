"""Evaluate an exported model: ``python -m training evaluate MODEL --data DATA [--data DATA2 ...]``.

For each data set: its test split (CIFAKE) is measured twice, as the official split and
de-duplicated (dropping every test file whose sha256 also occurs in train; CIFAKE has 378 such
files); a set without a test split is measured on its val split (wild.zip). Every set gets a
table per source (and per generator, with ``--manifest``). A robustness table re-scores the
first set's test split after the damage archives do to images; a set measured on val/ gets a
file-level one (re-encoding, downscaling, storage at 2x and 4x, PNG against JPEG q95, square
crops of real photos).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageFilter

from audit.atomic import write_text
from audit.model import (
    LoadedModel,
    autocast_dtype,
    load_model,
    model_paths,
    pick_device,
    resolve_precision,
    route_index,
    route_policies,
)
from training.data import ImageSet, has_split, iter_files, load_split, split_hashes
from training.engine import predict_logits, predict_logits_and_features, single_view
from training.file_checks import file_level_checks
from training.metrics import classification_metrics, reliability_table
from training.options import add_compute_options
from training.sources import generator_keys, read_manifests, source_table, uncertain_figures
from training.uncertain import uncertain_mask

log = logging.getLogger("training")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate an exported detector on the test split", add_help=add_help)
    parser.add_argument("model", help="NAME.json or NAME.safetensors of an exported model")
    parser.add_argument("--data", required=True, action="append", help="folder or zip with test/REAL|FAKE (and train/ for "
                        "de-duplication), or with val/REAL|FAKE; repeat for several data sets")
    parser.add_argument("--manifest", action="append", default=[], help="TSV with 'file' and 'generator' columns "
                        "(e.g. WILD-MANIFEST.tsv): per-generator tables for the files it names")
    parser.add_argument("--output-dir", default=None, help="where metrics.json and the plots go (default: beside the model)")
    add_compute_options(parser, "fp32", "autocast precision of the evaluation; auto as in fit (default fp32)")
    parser.add_argument("--no-robustness", action="store_true", help="skip the robustness table")
    parser.add_argument("--compare-bf16", action="store_true", help="also score in bf16 autocast and report how far its probabilities move")
    parser.add_argument("--update-card", action="store_true", help="write the test metrics into the model card (weights unchanged)")
    return parser


# --------------------------------------------------------------------------- damage


def _per_image(transform: Callable[[Image.Image], Image.Image]) -> Callable[[torch.Tensor], torch.Tensor]:
    def apply(images: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(images)
        for index in range(len(images)):
            pil = Image.fromarray(images[index].permute(1, 2, 0).numpy())
            damaged = np.asarray(transform(pil).convert("RGB"), dtype=np.uint8)
            out[index] = torch.from_numpy(damaged.copy()).permute(2, 0, 1)
        return out

    return apply


def _jpeg(quality: int) -> Callable[[Image.Image], Image.Image]:
    def encode(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")

    return encode


def _down_up(factor: int) -> Callable[[Image.Image], Image.Image]:
    def resample(image: Image.Image) -> Image.Image:
        small = image.resize((image.width // factor, image.height // factor), Image.Resampling.BILINEAR)
        return small.resize(image.size, Image.Resampling.BILINEAR)

    return resample


# Independent of training.augment on purpose: the test damage is Pillow's, not the training code's.
ROBUSTNESS_CASES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "jpeg_q90": _per_image(_jpeg(90)),
    "jpeg_q75": _per_image(_jpeg(75)),
    "jpeg_q50": _per_image(_jpeg(50)),
    "downscale_x2_upscale": _per_image(_down_up(2)),
    "gaussian_blur_sigma1": _per_image(lambda image: image.filter(ImageFilter.GaussianBlur(radius=1))),
}


# --------------------------------------------------------------------------- scoring


def score(model: LoadedModel, images: torch.Tensor, device: torch.device, dtype: torch.dtype | None) -> np.ndarray:
    net = model.network.to(device)
    logits = predict_logits(net, images, model.card.preprocessing, device, dtype)
    return model.probabilities(logits).numpy()


def score_with_novelty(model: LoadedModel, images: torch.Tensor, device: torch.device,
                       dtype: torch.dtype | None) -> tuple[np.ndarray, np.ndarray | None]:
    """prob_ai, and the novelty of each image where the card has novelty statistics."""
    logits, features = predict_logits_and_features(model.network.to(device), images, model.card.preprocessing,
                                                   device, dtype)
    rules = model.card.uncertainty
    novelty = rules.novelty.score(features).numpy() if rules is not None and rules.novelty is not None else None
    return model.probabilities(logits).numpy(), novelty


def model_for_split(model: LoadedModel, source: Path, split: str) -> LoadedModel:
    """The model the scan judges a split's images with: a route's, when the card routes every one
    of them there by size (CIFAKE's 32x32 test images), else the card's own."""
    if not model.routes:
        return model
    policies = route_policies(model.routes)
    routes = set()
    for _, _, data in iter_files(source, split):
        with Image.open(io.BytesIO(data)) as image:
            routes.add(route_index(*image.size, policies))
    if len(routes) == 1:
        return model.scored_by(routes.pop())
    log.warning("%s %s: its images go to %d networks by size; measured with the card's own", source, split, len(routes))
    return model


def evaluate_model(
    model: LoadedModel, test: ImageSet, train_hashes: set[str], device: torch.device, dtype: torch.dtype | None,
    robustness: bool = True,
) -> dict[str, Any]:
    threshold = model.card.threshold
    labels = test.labels.numpy()
    started = time.perf_counter()
    prob_ai = score(model, test.images, device, dtype)
    seconds = time.perf_counter() - started
    kept = np.array([digest not in train_hashes for digest in test.sha256])
    results: dict[str, Any] = {
        "model_id": model.model_id,
        "threshold": threshold,
        "temperature": model.card.temperature,
        "official_test": classification_metrics(prob_ai, labels, threshold),
        "deduplicated_test": {
            **classification_metrics(prob_ai[kept], labels[kept], threshold),
            "dropped_files_also_in_train": int((~kept).sum()),
        },
        "reliability_official_test": reliability_table(prob_ai, labels),
        "images_per_second": round(len(labels) / seconds, 1),
    }
    if robustness:
        clean = results["official_test"]
        table = {}
        for case, damage in ROBUSTNESS_CASES.items():
            damaged_prob = score(model, damage(test.images), device, dtype)
            metrics = classification_metrics(damaged_prob, labels, threshold)
            table[case] = {
                "accuracy": metrics["accuracy"],
                "roc_auc": metrics["roc_auc"],
                "accuracy_drop_points": round(100 * (clean["accuracy"] - metrics["accuracy"]), 3),
            }
            log.info("robustness %-22s accuracy %.4f auc %.5f", case, metrics["accuracy"], metrics["roc_auc"])
        results["robustness_official_test"] = table
    results["_prob_ai"] = prob_ai
    results["_labels"] = labels
    return results


def bf16_agreement(model: LoadedModel, test: ImageSet, prob_fp32: np.ndarray, device: torch.device) -> dict[str, Any]:
    """How far bf16 autocast moves the calibrated probabilities, and what it does to accuracy."""
    started = time.perf_counter()
    prob_bf16 = score(model, test.images, device, torch.bfloat16)
    seconds = time.perf_counter() - started
    threshold = model.card.threshold
    difference = np.abs(prob_bf16 - prob_fp32)
    return {
        "max_abs_diff": float(difference.max()),
        "mean_abs_diff": float(difference.mean()),
        "p99_abs_diff": float(np.quantile(difference, 0.99)),
        "verdicts_changed": int(((prob_bf16 >= threshold) != (prob_fp32 >= threshold)).sum()),
        "accuracy_bf16": classification_metrics(prob_bf16, test.labels.numpy(), threshold)["accuracy"],
        "images_per_second_bf16": round(len(test) / seconds, 1),
    }


# --------------------------------------------------------------------------- plots


def write_plots(prob_ai: np.ndarray, labels: np.ndarray, threshold: float, output_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    written = []
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    RocCurveDisplay.from_predictions(labels, prob_ai, ax=ax, name="detector")
    ax.set_title("ROC, official CIFAKE test split")
    fig.tight_layout()
    fig.savefig(output_dir / "roc.png", dpi=120)
    plt.close(fig)
    written.append("roc.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        labels, (prob_ai >= threshold).astype(int), display_labels=["real", "ai-generated"], ax=ax, colorbar=False, values_format="d"
    )
    ax.set_title(f"Confusion matrix (threshold {threshold:.3f})")
    fig.tight_layout()
    fig.savefig(output_dir / "confusion_matrix.png", dpi=120)
    plt.close(fig)
    written.append("confusion_matrix.png")

    rows = [row for row in reliability_table(prob_ai, labels) if row["count"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.plot([r["mean_prob_ai"] for r in rows], [r["fraction_ai"] for r in rows], marker="o", label="detector")
    ax.set_xlabel("predicted probability of AI-generated")
    ax.set_ylabel("fraction that is AI-generated")
    ax.set_title("Reliability diagram")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(output_dir / "reliability.png", dpi=120)
    plt.close(fig)
    written.append("reliability.png")
    return written


def card_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The part of the metrics that goes into the model card."""
    keep = ("count", "accuracy", "precision", "recall", "f1", "roc_auc", "ece", "confusion_matrix")
    summary: dict[str, Any] = {}
    if "official_test" in results:
        summary["official_test"] = {k: results["official_test"][k] for k in keep}
        summary["deduplicated_test"] = {k: results["deduplicated_test"][k] for k in keep + ("dropped_files_also_in_train",)}
    if "test_scored_by" in results:
        summary["test_scored_by"] = results["test_scored_by"]
    if "robustness_official_test" in results:
        summary["robustness_official_test"] = results["robustness_official_test"]
    for name, measured in results.get("data_sets", {}).items():
        summary.setdefault("data_sets", {})[name] = {
            "split": measured["split"],
            "metrics": {k: measured["metrics"][k] for k in keep},
            "real_flagged_rate": measured["real_flagged_rate"],
            "ai_caught_rate": measured["ai_caught_rate"],
            "per_source": measured["per_source"],
            **({"uncertain": measured["uncertain"]} if "uncertain" in measured else {}),
            **({"per_generator": measured["per_generator"]} if "per_generator" in measured else {}),
            **({"file_level": measured["file_level"]} if "file_level" in measured else {}),
        }
    return summary


def measure_split(model: LoadedModel, source: Path, split: str, generators: dict[str, str], device: torch.device,
                  dtype: torch.dtype | None, file_level: bool) -> dict[str, Any]:
    """Metrics, per-source (and per-generator) tables of one data set's split."""
    images = load_split(source, split, model.card.preprocessing)
    prob_ai, novelty = score_with_novelty(model, single_view(images.images), device, dtype)
    labels = images.labels.numpy()
    threshold = model.card.threshold
    # Only a card with uncertain rules gets the uncertain figures (the degraded check is not measured here).
    uncertain = uncertain_mask(prob_ai, novelty, model.card.uncertainty) if model.card.uncertainty else None
    measured: dict[str, Any] = {
        "split": split,
        "metrics": classification_metrics(prob_ai, labels, threshold),
        "real_flagged_rate": round(float((prob_ai[labels == 0] >= threshold).mean()), 4),
        "ai_caught_rate": round(float((prob_ai[labels == 1] >= threshold).mean()), 4),
        "per_source": source_table(prob_ai, labels, images.sources, threshold, uncertain),
    }
    if uncertain is not None:
        at_threshold = prob_ai >= threshold
        figures = uncertain_figures(at_threshold, labels, uncertain)
        is_ai = labels == 1
        measured["uncertain"] = {
            "uncertain_rate": figures["uncertain_rate"], "wrong": figures["wrong"],
            "wrong_uncertain": figures["wrong_uncertain"],
            "real_flagged_rate": round(float((at_threshold & ~uncertain)[~is_ai].mean()), 4),
            "ai_caught_rate": round(float((at_threshold & ~uncertain)[is_ai].mean()), 4),
            "ai_caught_or_uncertain_rate": round(float((at_threshold | uncertain)[is_ai].mean()), 4),
        }
    named = [name for name in images.names if name in generators]
    if named:
        measured["per_generator"] = source_table(prob_ai, labels, generator_keys(images.names, labels, generators),
                                                 threshold, uncertain)
    if file_level:
        measured["file_level"] = file_level_checks(model, source, split, device, dtype)
    log.info("%s %s: n=%d auc %.4f real flagged %.2f%% AI caught %.2f%%", source, split, len(labels),
             measured["metrics"]["roc_auc"], 100 * measured["real_flagged_rate"], 100 * measured["ai_caught_rate"])
    if uncertain is not None:
        u = measured["uncertain"]
        log.info("%s %s: uncertain %.2f%%; %d of %d wrong verdicts uncertain; AI caught or uncertain %.2f%%", source,
                 split, 100 * u["uncertain_rate"], u["wrong_uncertain"], u["wrong"], 100 * u["ai_caught_or_uncertain_rate"])
    return measured


def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    model = load_model(args.model)
    device = pick_device(args.device)
    dtype = autocast_dtype(resolve_precision(args.precision, device, for_training=True))
    sources = [Path(path) for path in (args.data if isinstance(args.data, list) else [args.data])]
    generators = read_manifests(args.manifest)
    with_test = [source for source in sources if has_split(source, "test")]
    results: dict[str, Any] = {}
    prob_ai = labels = None
    if with_test:
        # The first set with a test split keeps the figures earlier cards carried (CIFAKE's).
        test = load_split(with_test[0], "test", model.card.preprocessing)
        test.images = single_view(test.images)
        train_hashes = split_hashes(with_test[0], "train")
        log.info("test split: %d images; train hashes: %d", len(test), len(train_hashes))
        judge = model_for_split(model, with_test[0], "test")
        results = evaluate_model(judge, test, train_hashes, device, dtype,
                                 robustness=not args.no_robustness and test.images.ndim == 4)
        prob_ai, labels = results.pop("_prob_ai"), results.pop("_labels")
        results["test_data"] = str(with_test[0])
        results["model_id"] = model.model_id
        if judge is not model:
            results["test_scored_by"] = f"{judge.model_id}, where the card routes these images by size"
    results["data_sets"] = {}
    for source in sources:
        split = "test" if source in with_test else "val"
        name = source.stem if source.is_file() else source.name
        results["data_sets"][name] = measure_split(model_for_split(model, source, split), source, split, generators,
                                                   device, dtype,
                                                   file_level=split == "val" and not args.no_robustness)
    weights_path, card_path = model_paths(args.model)
    output_dir = Path(args.output_dir) if args.output_dir else weights_path.parent
    output_dir.mkdir(parents=True, exist_ok=True)
    if args.compare_bf16 and device.type == "cpu" and with_test:
        results["bf16_agreement"] = bf16_agreement(model, test, prob_ai, device)
        log.info("bf16 against fp32: %s", results["bf16_agreement"])
    results["data"] = [str(source) for source in sources]
    results["precision"] = str(dtype or "float32")
    if prob_ai is not None:
        results["plots"] = write_plots(prob_ai, labels, results["threshold"], output_dir)
    metrics_path = output_dir / "metrics.json"
    write_text(metrics_path, json.dumps(results, indent=1) + "\n")
    for name in ("official_test", "deduplicated_test"):
        if name not in results:
            continue
        m = results[name]
        log.info(
            "%-18s n=%d accuracy %.4f precision %.4f recall %.4f f1 %.4f auc %.5f ece %.4f confusion %s",
            name, m["count"], m["accuracy"], m["precision"], m["recall"], m["f1"], m["roc_auc"], m["ece"], m["confusion_matrix"],
        )
    log.info("wrote %s", metrics_path)
    if args.update_card:
        card = model.card
        card.test_metrics = card_summary(results)
        write_text(card_path, card.to_json())
        log.info("updated the test metrics in %s", card_path)
    return results
