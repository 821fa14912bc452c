"""Train the detector: ``python -m training fit --data DATA --output-dir RUN``.

Flat, in the manner of torchvision's references/classification: ``get_args_parser()`` (in
:mod:`training.options`) and ``main(args)``, which calls :func:`training.engine.train_one_epoch`
and :func:`training.engine.evaluate` each epoch. Every epoch writes a checkpoint; ``--resume``
continues from it. At the end the model is calibrated on the validation split and exported as
NAME.safetensors + NAME.json (:mod:`training.card`).
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.atomic import atomic_path
from audit.model import (
    ModelError,
    autocast_dtype,
    build_network,
    default_workers,
    pick_device,
    refuse_pickle,
    resolve_precision,
)
from training.card import export_model
from training.checkpoint import TrainingState, load_checkpoint, read_state, resolve_checkpoint, save_checkpoint
from training.data import TrainingData, epoch_draws, prepare_data
from training.engine import epoch_loader, evaluate, train_one_epoch
from training.options import augment_config, command_line, get_args_parser

__all__ = ["get_args_parser", "main"]

log = logging.getLogger("training")

# A resumed run keeps the schedule it started with; only how it runs may change.
RESUME_KEEPS = ("epochs", "batch_size", "lr", "warmup_fraction", "momentum", "weight_decay", "label_smoothing",
                "val_fraction", "seed", "limit_per_class", "variant", "no_archive_augment", "name",
                "jpeg_prob", "rescale_prob", "blur_prob", "epoch_size", "input_size", "resize_policy", "scale_size",
                "crops", "crop_scale", "threshold_max_fpr", "select_on")
BEST_NAME = "best.safetensors"


def main(args: argparse.Namespace) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    precision = resolve_precision(args.precision, device, for_training=True)
    dtype = autocast_dtype(precision)
    run_dir = Path(args.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_path = restore_schedule(args, run_dir)

    torch.manual_seed(args.seed)
    data = prepare_data(args)
    if args.select_on is not None and args.select_on != "mean" and args.select_on not in data.validation:
        raise ModelError(f"--select-on {args.select_on}: no data set of that name ({', '.join(data.validation)})")
    net = build_network(args.variant).to(device).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net, args)
    state = start_state(net, optimizer, args, resume_path)
    state.extra.update(data_counts=data.counts, precision=precision)
    total_steps = math.ceil(epoch_draws(data, args) / args.batch_size) * args.epochs
    workers = args.workers if args.workers is not None else default_workers(device, for_training=True)
    scaler = make_scaler(device, dtype, state)
    log.info("training %s for %d epochs (%d steps of %d) on %s, precision %s, %d threads, %d augmenting workers",
             args.variant, args.epochs, total_steps, args.batch_size, device, precision, torch.get_num_threads(), workers)
    augment = [augment_config(args, side) for side in data.storage_sides]
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    stop_at = args.epochs if args.stop_after_epochs is None else min(args.epochs, state.epochs_done + args.stop_after_epochs)
    while state.epochs_done < stop_at:
        started = time.perf_counter()
        loader = epoch_loader(data, args, state.epochs_done, augment, workers, device)
        train_loss, seen, lr = train_one_epoch(net, criterion, optimizer, scaler, loader, data.pre, device, dtype,
                                               state, args, total_steps)
        train_seconds = time.perf_counter() - started
        val = evaluate(net, data, device, dtype, limit=args.epoch_val_limit)
        seconds = time.perf_counter() - started
        state.epochs_done += 1
        state.extra["seconds"] = state.extra.get("seconds", 0.0) + seconds
        row = history_row(state.epochs_done, train_loss, val, lr, seen / train_seconds, seconds)
        end_epoch(run_dir, net, optimizer, scaler, state, args, row, val)
    if state.epochs_done < args.epochs:
        log.info("stopping after %d epochs as asked; continue with --resume", args.stop_after_epochs)
        return run_dir
    return export_run(net, data, args, state, device, run_dir)


def restore_schedule(args: argparse.Namespace, run_dir: Path) -> Path | None:
    """With ``--resume``: the checkpoint to continue from, its schedule put back into ``args``."""
    if not args.resume:
        return None
    resume_path = resolve_checkpoint(run_dir if args.resume == "auto" else Path(args.resume))
    saved_args = read_state(resume_path).args
    for key in RESUME_KEEPS:
        setattr(args, key, saved_args.get(key, getattr(args, key, None)))
    return resume_path


def make_optimizer(net: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """Nesterov SGD; weight decay on weights, not on biases and norm parameters."""
    decay, no_decay = [], []
    for param in net.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    return torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, momentum=args.momentum, nesterov=True,
    )


def start_state(net: nn.Module, optimizer: torch.optim.Optimizer, args: argparse.Namespace,
                resume_path: Path | None) -> TrainingState:
    """The checkpoint's state (network and optimiser loaded), or a fresh one from pretrained
    weights or from scratch."""
    if resume_path is not None:
        state = load_checkpoint(resume_path, net, optimizer)
        log.info("resuming from %s after epoch %d (step %d)", resume_path, state.epochs_done, state.step)
        state.args.update({k: v for k, v in vars(args).items() if k not in state.args})
        return state
    if args.pretrained:
        skipped = load_pretrained(net, args.pretrained)
        log.info("starting from pretrained weights %s; not loaded (shape differs): %s", args.pretrained, ", ".join(skipped) or "none")
    else:
        log.info("starting from scratch: random initialisation, no pretrained weights")
    return TrainingState(0, 0, vars(args).copy(), [], {"seconds": 0.0, "command": command_line(args)})


def make_scaler(device: torch.device, dtype: torch.dtype | None, state: TrainingState) -> torch.amp.GradScaler:
    """fp16 gradients underflow without loss scaling (bf16 has fp32's range and needs none);
    disabled, the scaler passes everything through unchanged."""
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if scaler.is_enabled() and "grad_scaler" in state.extra:
        # A scale that restarted at its initial value would skip steps a straight run took.
        scaler.load_state_dict(state.extra["grad_scaler"])
    return scaler


def load_pretrained(net: nn.Module, spec: str) -> list[str]:
    """Copy matching weights into the network; return the names that did not fit (left as initialised)."""
    if spec == "imagenet":
        from torchvision.models import ResNet18_Weights

        state = ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
    else:
        from safetensors.torch import load_file

        path = Path(spec)
        if path.suffix != ".safetensors":
            refuse_pickle(path)
            raise ModelError(f"--pretrained {spec}: give a .safetensors file or 'imagenet'")
        state = load_file(str(path))
    own = net.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(fitting))
    net.load_state_dict(fitting, strict=False)
    return skipped


def end_epoch(run_dir: Path, net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              state: TrainingState, args: argparse.Namespace, row: dict[str, Any],
              val: dict[str, dict[str, float]]) -> None:
    """Record a finished epoch: history, the best epoch so far, the checkpoint, a log line."""
    state.history.append(row)
    if scaler.is_enabled():
        state.extra["grad_scaler"] = scaler.state_dict()
    if args.select_on is not None:
        auc = selection_auc(val, args.select_on)
        if auc > state.extra.get("best", {}).get("roc_auc", -1.0):
            save_best(run_dir, net)
            state.extra["best"] = {"epoch": state.epochs_done, "roc_auc": auc, "data": args.select_on}
    save_checkpoint(run_dir, net, optimizer, state)
    write_history(run_dir, state.history)
    eta = state.extra["seconds"] / state.epochs_done * (args.epochs - state.epochs_done)
    figures = " ".join(f"{k} {v}" for k, v in row.items() if k not in ("epoch", "lr_end", "images_per_second", "epoch_seconds"))
    log.info("epoch %d/%d %s %.0f img/s epoch %.0fs ETA %s", state.epochs_done, args.epochs, figures,
             row["images_per_second"], row["epoch_seconds"], time.strftime("%H:%M:%S", time.gmtime(eta)))


def export_run(net: nn.Module, data: TrainingData, args: argparse.Namespace, state: TrainingState,
               device: torch.device, run_dir: Path) -> Path:
    """Export the finished run: its last epoch, or with --select-on its best one."""
    if args.select_on is not None and "best" in state.extra:
        load_best(run_dir, net)
        log.info("exporting epoch %d, the best on %s validation (AUC %.5f)", state.extra["best"]["epoch"],
                 args.select_on, state.extra["best"]["roc_auc"])
    model_path = export_model(net, data, args, state, device, run_dir / args.name)
    log.info("exported %s", model_path)
    return model_path


def selection_auc(val: dict[str, dict[str, float]], select_on: str) -> float:
    if select_on == "mean":
        return float(np.mean([metrics["roc_auc"] for metrics in val.values()]))
    return val[select_on]["roc_auc"]


def save_best(run_dir: Path, net: nn.Module) -> None:
    from safetensors.torch import save_file

    with atomic_path(run_dir / BEST_NAME) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(tmp))


def load_best(run_dir: Path, net: nn.Module) -> None:
    from safetensors.torch import load_file

    device = next(net.parameters()).device
    net.load_state_dict({k: v.to(device) for k, v in load_file(str(run_dir / BEST_NAME)).items()})


def history_row(epoch: int, train_loss: float, val: dict[str, dict[str, float]], lr: float, rate: float,
                seconds: float) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch, "train_loss": round(train_loss, 5)}
    if len(val) == 1:
        (only,) = val.values()
        row.update(val_accuracy=round(only["accuracy"], 5), val_auc=round(only["roc_auc"], 6))
    else:
        for name, metrics in val.items():
            row[f"val_accuracy_{name}"] = round(metrics["accuracy"], 5)
            row[f"val_auc_{name}"] = round(metrics["roc_auc"], 6)
    row.update(lr_end=lr, images_per_second=round(rate, 1), epoch_seconds=round(seconds, 1))
    return row


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    import csv

    path = run_dir / "history.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
