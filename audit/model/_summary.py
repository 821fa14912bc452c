"""A model card in readable form: for `audit models` and the report's "Method and limits" page."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.model._card import DEFAULT_MODEL_PATH, ModelCard, model_paths
from audit.model._routing import input_description


@dataclass
class DataSetFigures:
    """What the card says a model measured on one data set."""

    name: str
    split: str
    count: int
    roc_auc: float | None
    accuracy: float | None
    real_flagged_rate: float | None
    ai_caught_rate: float | None
    weak_sources: list[dict[str, Any]] = field(default_factory=list)
    # With a card's uncertain rules (training.evaluate): the share uncertain, the wrong verdicts and
    # how many of them are uncertain, AI images caught or sent to a person; None for older cards.
    uncertain_rate: float | None = None
    wrong: int | None = None
    wrong_uncertain: int | None = None
    ai_caught_or_uncertain_rate: float | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)  # the per-generator (else per-source) table


@dataclass
class ModelSummary:
    name: str
    model_id: str
    is_default: bool
    input_policy: str
    threshold: float
    threshold_method: str
    weights_mb: float | None
    data_sets: list[DataSetFigures]
    trained_on: list[str]
    uncertain_rules: list[str] = field(default_factory=list)  # the card's rules for "uncertain", in words


def _rate(metrics: dict[str, Any], label: int) -> float | None:
    """Share of real images flagged (label 0) or of AI images caught (label 1), from a confusion matrix."""
    matrix = metrics.get("confusion_matrix")
    if not matrix:
        return None
    row = matrix[label]
    total = sum(row)
    return row[1] / total if total else None


def weak_sources(per_source: list[dict[str, Any]], threshold_rate: float = 0.5, fpr_limit: float = 0.1) -> list[dict[str, Any]]:
    """Sources the model is weak on: AI sources caught less than half the time, real sources
    flagged more than 10% of the time (at least 5 images, so one odd file is no finding)."""
    weak = []
    for row in per_source:
        if row["count"] < 5:
            continue
        if row["ai"] == row["count"] and row["flagged_rate"] < threshold_rate:
            weak.append({**row, "weakness": f"only {row['flagged_rate']:.0%} of its AI images caught"})
        elif row["real"] == row["count"] and row["flagged_rate"] > fpr_limit:
            weak.append({**row, "weakness": f"{row['flagged_rate']:.0%} of its real photos flagged"})
    return weak


def summarize(card: ModelCard, card_path: Path | None = None) -> ModelSummary:
    tests = card.test_metrics or {}
    data_sets: list[DataSetFigures] = []
    official = tests.get("official_test")
    named = tests.get("data_sets", {})
    for name, measured in named.items():
        metrics = measured.get("metrics", {})
        table = measured.get("per_generator") or measured.get("per_source") or []
        uncertain = measured.get("uncertain") or {}
        data_sets.append(DataSetFigures(
            name=name, split=measured.get("split", "test"), count=metrics.get("count", 0),
            roc_auc=metrics.get("roc_auc"), accuracy=metrics.get("accuracy"),
            real_flagged_rate=uncertain.get("real_flagged_rate", measured.get("real_flagged_rate")),
            ai_caught_rate=uncertain.get("ai_caught_rate", measured.get("ai_caught_rate")),
            weak_sources=weak_sources(table), uncertain_rate=uncertain.get("uncertain_rate"),
            wrong=uncertain.get("wrong"), wrong_uncertain=uncertain.get("wrong_uncertain"),
            ai_caught_or_uncertain_rate=uncertain.get("ai_caught_or_uncertain_rate"), groups=list(table),
        ))
    if official and not any(d.split == "test" for d in data_sets):
        data_sets.insert(0, DataSetFigures(
            name="cifake", split="test", count=official.get("count", 0), roc_auc=official.get("roc_auc"),
            accuracy=official.get("accuracy"), real_flagged_rate=_rate(official, 0), ai_caught_rate=_rate(official, 1),
        ))
    weights_mb = None
    if card_path is not None:
        weights, _ = model_paths(card_path)
        weights_mb = round(weights.stat().st_size / 1e6, 1) if weights.is_file() else None
    data = card.training.get("data", [])
    sets = data if isinstance(data, list) else [data]
    trained_on = [d.get("name", "?") if isinstance(d, dict) else str(d) for d in sets]
    return ModelSummary(
        name=card.name, model_id=card.model_id,
        is_default=card_path is not None and card_path.resolve() == DEFAULT_MODEL_PATH.resolve(),
        input_policy=input_description(card),
        threshold=card.threshold, threshold_method=card.threshold_method,
        weights_mb=weights_mb, data_sets=data_sets, trained_on=trained_on,
        uncertain_rules=card.uncertainty.describe() if card.uncertainty is not None else [],
    )


def format_summary(summary: ModelSummary) -> str:
    """A few plain lines for a terminal."""
    lines = [f"{summary.name}{'  (default)' if summary.is_default else ''}  {summary.model_id}",
             f"  input: {summary.input_policy}; threshold {summary.threshold:.3f}; "
             f"trained on {', '.join(summary.trained_on)}" + (f"; {summary.weights_mb} MB" if summary.weights_mb else "")]
    for figures in summary.data_sets:
        parts = [f"{figures.name} {figures.split} ({figures.count})"]
        if figures.accuracy is not None:
            parts.append(f"accuracy {figures.accuracy:.2%}")
        if figures.roc_auc is not None:
            parts.append(f"AUC {figures.roc_auc:.3f}")
        if figures.real_flagged_rate is not None:
            parts.append(f"real flagged {figures.real_flagged_rate:.1%}")
        if figures.ai_caught_rate is not None:
            parts.append(f"AI caught {figures.ai_caught_rate:.1%}")
        if figures.uncertain_rate is not None:
            parts.append(f"uncertain {figures.uncertain_rate:.1%} ({figures.wrong_uncertain} of {figures.wrong} "
                         "wrong verdicts)")
        lines.append("  " + ", ".join(parts))
    if not summary.data_sets:
        lines.append("  no test figures in its card")
    for rule in summary.uncertain_rules:
        lines.append(f"  uncertain when: {rule}")
    return "\n".join(lines)


def training_rows(training: dict[str, Any]) -> list[tuple[str, str]]:
    """The card's training record as readable (name, text) rows: no raw JSON."""
    rows: list[tuple[str, str]] = []
    if training.get("command"):
        rows.append(("command", str(training["command"])))
    pretrained = training.get("pretrained")
    if isinstance(pretrained, dict):
        rows.append(("started from", f"{pretrained.get('path_given', '?')} (sha256 {str(pretrained.get('sha256', ''))[:12]})"))
    elif pretrained:
        rows.append(("started from", str(pretrained)))
    epochs = training.get("epochs_done", training.get("epochs"))
    if epochs is not None:
        size = f" of {training['epoch_size']:,} images" if training.get("epoch_size") else ""
        rows.append(("schedule", f"{epochs} epochs{size}, batch {training.get('batch_size', '?')}; {training.get('optimizer', '')}"))
    if training.get("selected_epoch"):
        chosen = training["selected_epoch"]
        rows.append(("epoch kept", f"{chosen.get('epoch')} (best validation AUC on {chosen.get('data')}: {chosen.get('roc_auc', 0):.4f})"))
    augmentation = training.get("augmentation")
    if isinstance(augmentation, dict):
        rows.append(("augmentation", _augmentation_text(augmentation)))
    elif augmentation:
        rows.append(("augmentation", str(augmentation)))
    if training.get("validation"):
        rows.append(("validation", str(training["validation"])))
    history = training.get("history") or []
    if history:
        last = history[-1]
        figures = ", ".join(f"{k} {v}" for k, v in last.items() if k.startswith(("val_", "train_loss")))
        rows.append(("last epoch", f"epoch {last.get('epoch')}: {figures}"))
    if training.get("hardware"):
        seconds = training.get("train_seconds")
        rows.append(("hardware", f"{training['hardware']}" + (f"; {seconds:.0f} s of training" if seconds else "")))
    return rows


def _augmentation_text(augmentation: dict[str, Any]) -> str:
    if augmentation and all(isinstance(v, dict) for v in augmentation.values()):
        return "; ".join(f"{name}: {_augmentation_text(values)}" for name, values in augmentation.items())
    parts = []
    if augmentation.get("jpeg_prob"):
        low, high = augmentation.get("jpeg_quality", ("?", "?"))
        parts.append(f"JPEG q{low}-{high} on {augmentation['jpeg_prob']:.0%}")
    if augmentation.get("rescale_prob"):
        parts.append(f"down-and-up rescale on {augmentation['rescale_prob']:.0%}")
    if augmentation.get("blur_prob"):
        parts.append(f"blur on {augmentation['blur_prob']:.0%}")
    if augmentation.get("crop_scale"):
        low, high = augmentation["crop_scale"]
        parts.append(f"random crops of {low:.0%}-{high:.0%} of the side")
    else:
        parts.append(f"{augmentation.get('crop_padding', 0)}-pixel padded crops")
    if augmentation.get("flip"):
        parts.append("flips")
    return ", ".join(parts)


def data_set_rows(training: dict[str, Any]) -> list[dict[str, Any]]:
    """The training data sets as table rows (older cards hold one set as a mapping)."""
    data = training.get("data") or []
    sets = data if isinstance(data, list) else [data]
    return [{
        "name": d.get("name", "?"), "share": d.get("share", 1.0), "balance": bool(d.get("balance_sources")),
        "train_images": d.get("train_images"), "validation_images": d.get("validation_images"),
        "sha256": str(d.get("sha256", ""))[:12],
    } for d in sets if isinstance(d, dict)]
