"""Export a trained network with its model card: calibrated and thresholded on validation, with
what the run was (data, command, schedule, precision, hardware, history)."""

from __future__ import annotations

import argparse
import dataclasses
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.model import CLASS_NAMES, ModelCard, file_sha256, save_model
from training.checkpoint import TrainingState
from training.data import DataSpec, TrainingData, epoch_draws
from training.engine import predict_logits
from training.metrics import choose_threshold, choose_threshold_per_sets, classification_metrics, fit_temperature
from training.options import augment_config, command_line

VARIANT_NOTES = {
    "resnet18-s1stem": "Variant resnet18-s1stem: 3x3 stride-1 stem, max-pool kept; at 32x32 input layer3 is 4x4 "
    "(the Grad-CAM layer) and layer4 2x2.",
    "resnet18": "Variant resnet18: torchvision's stock stem; at 32x32 input layer3 is 2x2 and layer4 1x1.",
}


def pretrained_record(spec: str | None) -> str | dict[str, str]:
    """What the run started from; a local file is named by hash, since its path may later hold another model."""
    if not spec:
        return "none (trained from scratch)"
    if spec == "imagenet":
        return "torchvision ResNet18_Weights.IMAGENET1K_V1"
    path = Path(spec)
    return {"path_given": spec, "sha256": file_sha256(path)} if path.is_file() else spec


def dataset_fingerprint(spec: DataSpec) -> dict[str, Any]:
    """Name, hash and share of one training data set, for the model card."""
    source = spec.path
    info: dict[str, Any] = {"name": spec.name, "path_given": str(source), "share": spec.share, "balance_sources": spec.balance}
    if source.is_file():
        info["sha256"] = file_sha256(source)
    return info


def precision_record(args: argparse.Namespace, state: TrainingState) -> str:
    """The precision the run trained in (fp32, bf16 or fp16); for a checkpoint from before that
    was recorded, what its ``--amp`` asked for."""
    if "precision" in state.extra:
        return state.extra["precision"]
    legacy = getattr(args, "amp", None)
    if legacy:
        return "fp32" if legacy == "off" else legacy
    return args.precision


def calibrate(net: nn.Module, data: TrainingData, args: argparse.Namespace,
              device: torch.device) -> tuple[float, float, str, dict[str, Any]]:
    """Temperature, threshold, how it was chosen, and the validation metrics at it (fp32).

    With several data sets, each set's validation weighs the same in the temperature and the
    threshold, whatever its size (CIFAKE's 10,000 would otherwise drown wild's 489).
    """
    names = list(data.validation)
    logits_by_set = {name: predict_logits(net, data.validation[name].images, data.pre, device, None) for name in names}
    labels_by_set = {name: data.validation[name].labels for name in names}
    val_logits = torch.cat([logits_by_set[name] for name in names])
    labels_tensor = torch.cat([labels_by_set[name] for name in names])
    labels = labels_tensor.numpy()
    groups = np.concatenate([np.full(len(labels_by_set[name]), index) for index, name in enumerate(names)])
    weights = torch.tensor([1.0 / len(labels_by_set[names[g]]) for g in groups], dtype=torch.float32)
    temperature = fit_temperature(val_logits, labels_tensor, weights=weights if len(names) > 1 else None)
    prob_ai = torch.softmax(val_logits / temperature, dim=1)[:, 1].numpy()
    if len(names) == 1 and args.threshold_max_fpr is None:
        threshold, method = choose_threshold(prob_ai, labels)
    else:
        threshold, method = choose_threshold_per_sets(prob_ai, labels, groups, names, args.threshold_max_fpr)
    uncalibrated = torch.softmax(val_logits, dim=1)[:, 1].numpy()
    validation: dict[str, Any] = {
        "calibrated": classification_metrics(prob_ai, labels, threshold),
        "uncalibrated_ece": classification_metrics(uncalibrated, labels, 0.5)["ece"],
    }
    if len(names) > 1:
        validation["per_data_set"] = {
            name: classification_metrics(prob_ai[groups == index], labels_by_set[name].numpy(), threshold)
            for index, name in enumerate(names)
        }
    return temperature, threshold, method, validation


def training_record(data: TrainingData, args: argparse.Namespace, state: TrainingState,
                    device: torch.device) -> dict[str, Any]:
    """The card's ``training`` section: what the run trained on, how, where and how long."""
    seconds = state.extra.get("seconds", 0.0)
    training = {
        "data": [{**dataset_fingerprint(spec), **data.counts.get(spec.name, {}), "validation": data.validation_origin[spec.name]}
                 for spec in data.specs],
        "command": state.extra.get("command") or command_line(args),
        "seed": args.seed,
        "epochs": args.epochs,
        "epochs_done": state.epochs_done,
        "epoch_size": epoch_draws(data, args),
        "batch_size": args.batch_size,
        "optimizer": f"SGD nesterov momentum {args.momentum}, weight decay {args.weight_decay}, one-cycle peak lr {args.lr}",
        # One set: its augmentation; several: each set's (a crops policy crops each at its own size).
        "augmentation": (dataclasses.asdict(augment_config(args, data.storage_sides[0])) if len(data.specs) == 1 else
                         {name: dataclasses.asdict(augment_config(args, side))
                          for name, side in zip(data.counts, data.storage_sides)}),
        "validation": "; ".join(f"{name}: {origin}" for name, origin in data.validation_origin.items()),
        "pretrained": pretrained_record(args.pretrained),
        "mixed_precision": precision_record(args, state),
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / max(1, state.epochs_done), 1),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}",
        "torch": torch.__version__,
        "history": state.history,
    }
    if "best" in state.extra and args.select_on is not None:
        training["selected_epoch"] = state.extra["best"]
    return training


def card_notes(args: argparse.Namespace, state: TrainingState, data: TrainingData) -> list[str]:
    interim = [] if state.epochs_done >= args.epochs else [
        f"INTERIM: exported after epoch {state.epochs_done} of a {args.epochs}-epoch schedule; "
        "the learning rate had not yet annealed, so this is not the finished model.",
    ]
    return interim + [VARIANT_NOTES.get(args.variant, f"Variant {args.variant}."), f"Input policy: {data.pre.describe()}."]


def export_model(
    net: nn.Module, data: TrainingData, args: argparse.Namespace, state: TrainingState, device: torch.device,
    model_path: Path,
) -> Path:
    """Calibrate on validation, choose the threshold there, and write NAME.safetensors + NAME.json."""
    temperature, threshold, method, validation = calibrate(net, data, args, device)
    card = ModelCard(
        name=args.name,
        variant=args.variant,
        class_names=CLASS_NAMES,
        preprocessing=data.pre,
        temperature=temperature,
        threshold=threshold,
        threshold_method=method,
        training=training_record(data, args, state, device),
        validation_metrics=validation,
        notes=card_notes(args, state, data),
    )
    save_model(net, card, model_path)
    return model_path.with_name(model_path.name + ".json")
