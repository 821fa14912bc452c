"""Train the detector: ``python -m training fit --data DATA --output-dir RUN``.

Flat, in the manner of torchvision's references/classification: ``get_args_parser()`` and
``main(args)``. Every epoch writes a checkpoint; ``--resume`` continues from it. At the end the
model is calibrated on the validation split and exported as NAME.safetensors + NAME.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.model import (
    CLASS_NAMES,
    ModelCard,
    ModelError,
    Preprocessing,
    refuse_pickle,
    build_network,
    file_sha256,
    normalize,
    save_model,
)
from training.augment import AugmentConfig, AugmentedBatches
from training.checkpoint import TrainingState, load_checkpoint, resolve_checkpoint, save_checkpoint
from training.data import ImageSet, channel_stats, load_split, stratified_split
from training.metrics import choose_threshold, classification_metrics, fit_temperature

log = logging.getLogger("training")

VARIANT_NOTES = {
    "resnet18-s1stem": "Variant resnet18-s1stem: 3x3 stride-1 stem, max-pool kept; at 32x32 input layer3 is 4x4 "
    "(the Grad-CAM layer) and layer4 2x2.",
    "resnet18": "Variant resnet18: torchvision's stock stem; at 32x32 input layer3 is 2x2 and layer4 1x1.",
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the AI-generated image detector", add_help=add_help)
    parser.add_argument("--data", required=True, help="folder or zip with train/REAL|FAKE (and test/REAL|FAKE)")
    parser.add_argument("--output-dir", default="runs/detector", help="run folder: checkpoint, history, exported model")
    parser.add_argument("--name", default="detector", help="name of the exported model (NAME.safetensors + NAME.json)")
    parser.add_argument("--variant", default="resnet18-s1stem", help="network variant (audit.model.ARCHITECTURES)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.2, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--warmup-fraction", type=float, default=0.15)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-per-class", type=int, default=None, help="use at most N training images per class (smoke runs)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"], help="mixed precision; auto: bf16 where supported (CUDA, or CPUs with avx512_bf16/amx_bf16), fp16 on CUDA without bf16, else off")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, default=None, help="processes that augment batches ahead (default: 0 on CPU, up to 8 with CUDA)")
    parser.add_argument("--pretrained", default=None, help="'imagenet' (torchvision download) or a local .safetensors file")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, help="continue from the checkpoint in --output-dir (or a given run folder)")
    parser.add_argument("--stop-after-epochs", type=int, default=None, help="stop (resumably) after this many epochs of this invocation")
    parser.add_argument("--print-freq", type=int, default=100, help="batches between progress lines inside an epoch (0: none)")
    parser.add_argument("--no-archive-augment", action="store_true", help="only crop and flip; no JPEG, rescale or blur")
    defaults = AugmentConfig()
    parser.add_argument("--jpeg-prob", type=float, default=defaults.jpeg_prob, help="share of images re-encoded as JPEG")
    parser.add_argument("--rescale-prob", type=float, default=defaults.rescale_prob, help="share of images downscaled and upscaled back")
    parser.add_argument("--blur-prob", type=float, default=defaults.blur_prob, help="share of images blurred slightly")
    return parser


# --------------------------------------------------------------------------- helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but CUDA is not available")
    return torch.device(name)


def usable_cpus() -> int:
    """CPUs this process may run on (a container or taskset may allow fewer than the host has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def augment_config(args: argparse.Namespace) -> AugmentConfig:
    if args.no_archive_augment:
        return AugmentConfig(jpeg_prob=0, rescale_prob=0, blur_prob=0)
    return AugmentConfig(jpeg_prob=args.jpeg_prob, rescale_prob=args.rescale_prob, blur_prob=args.blur_prob)


def one_cycle_lr(step: int, total_steps: int, peak: float, warmup_fraction: float) -> float:
    """Linear warm-up from peak/25 to peak, then cosine down to peak/1e4 (as OneCycleLR).

    Computed from the step alone, so a resumed run needs no scheduler state.
    """
    warmup = max(1, int(total_steps * warmup_fraction))
    start, end = peak / 25.0, peak / 1e4
    if step < warmup:
        return start + (peak - start) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return end + (peak - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


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


@torch.no_grad()
def predict_logits(
    net: nn.Module, images: torch.Tensor, pre: Preprocessing, device: torch.device, dtype: torch.dtype | None, batch_size: int = 500
) -> torch.Tensor:
    net.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        batch = normalize(batch, pre).contiguous(memory_format=torch.channels_last)
        with autocast(device, dtype):
            outputs.append(net(batch).float().cpu())
    return torch.cat(outputs)


def command_line(args: argparse.Namespace) -> str:
    """The fit command that reproduces these arguments (options left at their default omitted)."""
    words = ["python", "-m", "training", "fit"]
    for action in get_args_parser()._actions:
        if not action.option_strings or action.dest in ("help", "resume", "stop_after_epochs", "print_freq"):
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        words += [flag] if isinstance(action, argparse._StoreTrueAction) else [flag, str(value)]
    return shlex.join(words)


def pretrained_record(spec: str | None) -> str | dict[str, str]:
    """What the run started from; a local file is named by hash, since its path may later hold another model."""
    if not spec:
        return "none (trained from scratch)"
    if spec == "imagenet":
        return "torchvision ResNet18_Weights.IMAGENET1K_V1"
    path = Path(spec)
    return {"path_given": spec, "sha256": file_sha256(path)} if path.is_file() else spec


def dataset_fingerprint(source: Path) -> dict[str, Any]:
    """Name and hash of the training data, for the model card."""
    info: dict[str, Any] = {"path_given": str(source), "name": source.stem if source.is_file() else source.name}
    if source.is_file():
        info["sha256"] = file_sha256(source)
    return info


# --------------------------------------------------------------------------- main


def prepare_data(data_source: Path, args: argparse.Namespace) -> tuple[ImageSet, ImageSet, Preprocessing]:
    """Decode train, split off validation (seeded, stratified) and derive the normalisation."""
    started = time.perf_counter()
    full = load_split(data_source, "train", Preprocessing(), limit_per_class=args.limit_per_class)
    train_idx, val_idx = stratified_split(full.labels, full.sha256, args.val_fraction, args.seed)
    train_set, val_set = full.subset(train_idx), full.subset(val_idx)
    del full
    mean, std = channel_stats(train_set.images)
    pre = Preprocessing(mean=mean, std=std)
    log.info(
        "data: %d train / %d validation images from %s (decoded in %.0f s); mean %s std %s",
        len(train_set), len(val_set), data_source, time.perf_counter() - started, mean, std,
    )
    return train_set, val_set, pre


def main(args: argparse.Namespace) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    amp_dtype = autocast_dtype(args.amp, device)
    run_dir = Path(args.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data_source = Path(args.data)

    state: TrainingState | None = None
    resume_path: Path | None = None
    if args.resume:
        resume_path = resolve_checkpoint(run_dir if args.resume == "auto" else Path(args.resume))
        saved_args = json.loads(resume_path.read_text())["args"]
        # A resumed run keeps the schedule it started with; only how it runs may change.
        for key in ("epochs", "batch_size", "lr", "warmup_fraction", "momentum", "weight_decay", "label_smoothing",
                    "val_fraction", "seed", "limit_per_class", "variant", "no_archive_augment", "name",
                    "jpeg_prob", "rescale_prob", "blur_prob"):
            setattr(args, key, saved_args.get(key, getattr(args, key)))

    torch.manual_seed(args.seed)
    train_set, val_set, pre = prepare_data(data_source, args)

    net = build_network(args.variant).to(device).to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for name, param in net.named_parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, momentum=args.momentum, nesterov=True,
    )
    if resume_path is not None:
        state = load_checkpoint(resume_path, net, optimizer)
        log.info("resuming from %s after epoch %d (step %d)", resume_path, state.epochs_done, state.step)
    elif args.pretrained:
        skipped = load_pretrained(net, args.pretrained)
        log.info("starting from pretrained weights %s; not loaded (shape differs): %s", args.pretrained, ", ".join(skipped) or "none")
    else:
        log.info("starting from scratch: random initialisation, no pretrained weights")
    if state is None:
        state = TrainingState(0, 0, vars(args).copy(), [], {"seconds": 0.0})
        state.extra["command"] = command_line(args)
    state.extra["data_counts"] = {
        "train_images": len(train_set), "validation_images": len(val_set),
        "train_real": int((train_set.labels == 0).sum()), "train_ai": int((train_set.labels == 1).sum()),
    }
    state.args.update({k: v for k, v in vars(args).items() if k not in state.args})

    steps_per_epoch = math.ceil(len(train_set) / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    augment = augment_config(args)
    workers = args.workers if args.workers is not None else (min(8, usable_cpus()) if device.type == "cuda" else 0)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    # fp16 gradients underflow without loss scaling (bf16 has fp32's range and needs none);
    # disabled, the scaler passes everything through unchanged.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    if scaler.is_enabled() and "grad_scaler" in state.extra:
        # A scale that restarted at its initial value would skip steps a straight run took.
        scaler.load_state_dict(state.extra["grad_scaler"])
    log.info(
        "training %s for %d epochs (%d steps of %d) on %s, autocast %s, %d threads, %d augmenting workers",
        args.variant, args.epochs, total_steps, args.batch_size, device, amp_dtype, torch.get_num_threads(), workers,
    )

    epochs_this_call = 0
    while state.epochs_done < args.epochs:
        if args.stop_after_epochs is not None and epochs_this_call >= args.stop_after_epochs:
            log.info("stopping after %d epochs as asked; continue with --resume", epochs_this_call)
            return run_dir
        epoch = state.epochs_done
        epoch_start = time.perf_counter()
        net.train()
        # Seeds depend on the epoch and batch only, so a resumed run sees the same batches.
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed * 10_000 + epoch))
        batches = AugmentedBatches(train_set.images, train_set.labels, order, args.batch_size, augment,
                                   seed=args.seed * 10_000 + epoch + 5_000)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                             pin_memory=device.type == "cuda")
        # Summed on the device: reading the loss every step would make the host wait for the GPU.
        loss_sum, seen = torch.zeros((), device=device), 0
        for batch_number, (images, labels) in enumerate(loader):
            images = normalize(images.to(device, non_blocking=True), pre).contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            lr = one_cycle_lr(state.step, total_steps, args.lr, args.warmup_fraction)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast(device, amp_dtype):
                logits = net(images)
            loss = criterion(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            state.step += 1
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
            if args.print_freq and batch_number % args.print_freq == 0 and batch_number:
                rate = seen / (time.perf_counter() - epoch_start)
                log.info("  epoch %d batch %d/%d loss %.4f lr %.4f %.0f img/s", epoch + 1, batch_number, steps_per_epoch, loss_sum.item() / seen, lr, rate)
        train_loss = loss_sum.item() / seen
        train_seconds = time.perf_counter() - epoch_start
        val_logits = predict_logits(net, val_set.images, pre, device, amp_dtype)
        val_prob = torch.softmax(val_logits, dim=1)[:, 1].numpy()
        val = classification_metrics(val_prob, val_set.labels.numpy(), 0.5)
        epoch_seconds = time.perf_counter() - epoch_start
        state.epochs_done += 1
        state.extra["seconds"] = state.extra.get("seconds", 0.0) + epoch_seconds
        mean_epoch = state.extra["seconds"] / state.epochs_done
        row = {
            "epoch": state.epochs_done,
            "train_loss": round(train_loss, 5),
            "val_accuracy": round(val["accuracy"], 5),
            "val_auc": round(val["roc_auc"], 6),
            "lr_end": lr,
            "images_per_second": round(seen / train_seconds, 1),
            "epoch_seconds": round(epoch_seconds, 1),
        }
        state.history.append(row)
        if scaler.is_enabled():
            state.extra["grad_scaler"] = scaler.state_dict()
        save_checkpoint(run_dir, net, optimizer, state)
        write_history(run_dir, state.history)
        eta = mean_epoch * (args.epochs - state.epochs_done)
        log.info(
            "epoch %d/%d train_loss %.4f val_acc %.4f val_auc %.5f %.0f img/s epoch %.0fs ETA %s",
            state.epochs_done, args.epochs, row["train_loss"], row["val_accuracy"], row["val_auc"],
            row["images_per_second"], epoch_seconds, time.strftime("%H:%M:%S", time.gmtime(eta)),
        )
        epochs_this_call += 1

    model_path = export_model(net, pre, args, state, val_set, device, data_source, run_dir / args.name)
    log.info("exported %s", model_path)
    return model_path


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    import csv

    path = run_dir / "history.csv"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


def export_model(
    net: nn.Module, pre: Preprocessing, args: argparse.Namespace, state: TrainingState, val_set: ImageSet,
    device: torch.device, data_source: Path, model_path: Path,
) -> Path:
    """Calibrate on validation, choose the threshold there, and write NAME.safetensors + NAME.json."""
    val_logits = predict_logits(net, val_set.images, pre, device, None)
    labels = val_set.labels
    temperature = fit_temperature(val_logits, labels)
    prob_ai = torch.softmax(val_logits / temperature, dim=1)[:, 1].numpy()
    threshold, method = choose_threshold(prob_ai, labels.numpy())
    uncalibrated = torch.softmax(val_logits, dim=1)[:, 1].numpy()
    validation = {
        "calibrated": classification_metrics(prob_ai, labels.numpy(), threshold),
        "uncalibrated_ece": classification_metrics(uncalibrated, labels.numpy(), 0.5)["ece"],
    }
    seconds = state.extra.get("seconds", 0.0)
    card = ModelCard(
        name=args.name,
        variant=args.variant,
        class_names=CLASS_NAMES,
        preprocessing=pre,
        temperature=temperature,
        threshold=threshold,
        threshold_method=method,
        training={
            "data": {**dataset_fingerprint(data_source), **state.extra.get("data_counts", {})},
            "command": state.extra.get("command") or command_line(args),
            "seed": args.seed,
            "epochs": args.epochs,
            "epochs_done": state.epochs_done,
            "batch_size": args.batch_size,
            "optimizer": f"SGD nesterov momentum {args.momentum}, weight decay {args.weight_decay}, one-cycle peak lr {args.lr}",
            "augmentation": "none beyond crop and flip" if args.no_archive_augment else dataclasses.asdict(augment_config(args)),
            "validation": f"{args.val_fraction:.0%} of train, stratified, seed {args.seed}, duplicates kept together ({len(val_set)} images)",
            "pretrained": pretrained_record(args.pretrained),
            "mixed_precision": args.amp,
            "train_seconds": round(seconds, 1),
            "seconds_per_epoch": round(seconds / max(1, state.epochs_done), 1),
            "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}",
            "torch": torch.__version__,
            "history": state.history,
        },
        validation_metrics=validation,
        notes=([] if state.epochs_done >= args.epochs else [
            f"INTERIM: exported after epoch {state.epochs_done} of a {args.epochs}-epoch schedule; "
            "the learning rate had not yet annealed, so this is not the finished model.",
        ]) + [
            VARIANT_NOTES.get(args.variant, f"Variant {args.variant}."),
        ],
    )
    save_model(net, card, model_path)
    return model_path.with_name(model_path.name + ".json")
