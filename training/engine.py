"""One epoch of training, one pass of validation, and the logits of a batch of images, as
functions (in the manner of torchvision's references/classification: ``train_one_epoch`` and
``evaluate``)."""

from __future__ import annotations

import argparse
import logging
import math
import time

import numpy as np
import torch
from torch import nn

from audit.model import Preprocessing, autocast, combine_views, features_and_logits, flatten_views, normalize
from training.augment import AugmentConfig, AugmentedBatches
from training.checkpoint import TrainingState
from training.data import TrainingData, epoch_order
from training.metrics import classification_metrics

log = logging.getLogger("training")


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


def epoch_loader(data: TrainingData, args: argparse.Namespace, epoch: int, augment: list[AugmentConfig],
                 workers: int, device: torch.device) -> torch.utils.data.DataLoader:
    """An epoch's augmented batches, made ahead by ``workers`` processes. Seeds depend on the
    epoch and batch only, so a resumed run (with any number of workers) sees the same batches."""
    batches = AugmentedBatches([part.images for part in data.train_parts], data.train_labels,
                               epoch_order(data, args, epoch), args.batch_size, augment,
                               seed=args.seed * 10_000 + epoch + 5_000)
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=workers,
                                       pin_memory=device.type == "cuda")


def train_one_epoch(net: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler, loader: torch.utils.data.DataLoader, pre: Preprocessing,
                    device: torch.device, dtype: torch.dtype | None, state: TrainingState,
                    args: argparse.Namespace, total_steps: int) -> tuple[float, int, float]:
    """One epoch of SGD, the learning rate set from ``state.step`` at every step; returns the
    mean training loss, the images seen and the last learning rate."""
    net.train()
    started = time.perf_counter()
    # Summed on the device: reading the loss every step would make the host wait for the GPU.
    loss_sum, seen, lr = torch.zeros((), device=device), 0, 0.0
    for batch_number, (images, labels) in enumerate(loader):
        images = normalize(images.to(device, non_blocking=True), pre).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device, non_blocking=True)
        lr = one_cycle_lr(state.step, total_steps, args.lr, args.warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, dtype):
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
            log.info("  epoch %d batch %d/%d loss %.4f lr %.4f %.0f img/s", state.epochs_done + 1, batch_number,
                     len(loader), loss_sum.item() / seen, lr, seen / (time.perf_counter() - started))
    return loss_sum.item() / seen, seen, lr


@torch.no_grad()
def predict_logits(
    net: nn.Module, images: torch.Tensor, pre: Preprocessing, device: torch.device, dtype: torch.dtype | None, batch_size: int = 500
) -> torch.Tensor:
    """Logits per image; a crops policy's images (NKCHW) get their crops' logits averaged."""
    net.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        inputs, views = flatten_views(normalize(batch, pre))
        with autocast(device, dtype):
            logits = net(inputs.contiguous(memory_format=torch.channels_last)).float()
        outputs.append(combine_views(logits, views).cpu())
    return torch.cat(outputs)


def single_view(images: torch.Tensor) -> torch.Tensor:
    """A crops policy's K identical views of small images (CIFAKE) -> one, so the tensor-level
    damage applies to the picture the network judges; other images keep their K views."""
    if images.ndim == 5 and bool((images == images[:, :1]).all()):
        return images[:, 0].contiguous()
    return images


def predict_logits_and_features(
    net: nn.Module, images: torch.Tensor, pre: Preprocessing, device: torch.device, dtype: torch.dtype | None,
    batch_size: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and pooled penultimate features per image, each averaged over a crops policy's
    crops, as the scan computes them (audit.engines.Scorer)."""
    net.eval()
    logits_out, features_out = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            inputs, views = flatten_views(normalize(batch, pre))
            with autocast(device, dtype):
                features, logits = features_and_logits(net, inputs.contiguous(memory_format=torch.channels_last))
            logits_out.append(combine_views(logits.float(), views).cpu())
            features_out.append(combine_views(features.float(), views).cpu())
    return torch.cat(logits_out), torch.cat(features_out)


def evaluate(net: nn.Module, data: TrainingData, device: torch.device, dtype: torch.dtype | None,
             limit: int | None = None) -> dict[str, dict[str, float]]:
    """Accuracy at 0.5 and AUC on each set's validation images (at most ``limit`` of each, a
    fixed seeded pick, so that a slow machine's epochs are not spent validating)."""
    results = {}
    for name, images in data.validation.items():
        if limit is not None and len(images) > limit:
            images = images.subset(np.sort(np.random.default_rng(0).choice(len(images), limit, replace=False)))
        prob = torch.softmax(predict_logits(net, images.images, data.pre, device, dtype), dim=1)[:, 1].numpy()
        metrics = classification_metrics(prob, images.labels.numpy(), 0.5)
        results[name] = {"accuracy": metrics["accuracy"], "roc_auc": metrics["roc_auc"]}
    return results
