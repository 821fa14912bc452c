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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.atomic import atomic_path
from audit.input_policy import Preprocessing, combine_views, crop_boxes, flatten_views, normalize
from audit.model import (
    CLASS_NAMES,
    ModelCard,
    ModelError,
    refuse_pickle,
    build_network,
    file_sha256,
    save_model,
)
from training.augment import AugmentConfig, AugmentedBatches
from training.checkpoint import TrainingState, load_checkpoint, resolve_checkpoint, save_checkpoint
from training.data import (
    DataSpec, ImageSet, channel_stats, has_split, load_split, parse_data_spec, sampling_weights, stratified_split,
    typical_shorter_side,
)
from training.metrics import choose_threshold, choose_threshold_per_sets, classification_metrics, fit_temperature

log = logging.getLogger("training")

VARIANT_NOTES = {
    "resnet18-s1stem": "Variant resnet18-s1stem: 3x3 stride-1 stem, max-pool kept; at 32x32 input layer3 is 4x4 "
    "(the Grad-CAM layer) and layer4 2x2.",
    "resnet18": "Variant resnet18: torchvision's stock stem; at 32x32 input layer3 is 2x2 and layer4 1x1.",
}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the AI-generated image detector", add_help=add_help)
    parser.add_argument("--data", required=True, action="append",
                        help="folder or zip with train/REAL|FAKE (and val/, test/); repeat for several data sets. "
                        "PATH:share=F sets the set's share of each epoch's draws, PATH:balance draws its sources "
                        "(file-name prefix before '_') equally often. A set's val/ split validates it; without one, "
                        "--val-fraction of its train split is held out")
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
    parser.add_argument("--epoch-size", type=int, default=None, help="images drawn per epoch (default: all train images of all sets, once)")
    parser.add_argument("--input-size", type=int, default=32, help="network input side in pixels")
    parser.add_argument("--resize-policy", default="squash", choices=["squash", "center-crop", "crops"], help="the card's input policy (audit.model.RESIZE_POLICIES)")
    parser.add_argument("--scale-size", type=int, default=0, help="crops policy: shorter side before cropping")
    parser.add_argument("--crops", type=int, default=1, help="crops policy: crops scored an image (1, 5 or 9)")
    parser.add_argument("--crop-scale", type=float, default=None, help="random resized crop of this share of the side up to all of it (default: 4-pixel padded crop)")
    parser.add_argument("--threshold-max-fpr", type=float, default=None, help="choose the threshold among those whose false-positive rate on every validation set's real images is at most this")
    parser.add_argument("--epoch-val-limit", type=int, default=None, help="validate each epoch on at most N images of each set (the export uses all)")
    parser.add_argument("--select-on", default=None, help="export the epoch with the best validation AUC on this data set (its name), or 'mean' over the sets, instead of the last")
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


def augment_config(args: argparse.Namespace, stored_side: int | None = None) -> AugmentConfig:
    """The augmentation of images stored at ``stored_side`` (the input size by default)."""
    policy = policy_of(args)
    stored_side = stored_side or policy.input_size
    crop: dict[str, Any] = {}
    if stored_side > policy.input_size:
        # A crops policy's set stored as its central square: random crops of about one crop's
        # share of the side (+-25% with --crop-scale, for scale jitter), resized to the input.
        share = policy.input_size / stored_side
        low, high = (share * 0.75, min(1.0, share * 1.25)) if getattr(args, "crop_scale", None) is not None else (share, share)
        crop = {"crop_scale": (low, high), "output_size": policy.input_size}
    elif getattr(args, "crop_scale", None) is not None and policy.resize_policy != "crops":
        crop = {"crop_scale": (args.crop_scale, 1.0), "output_size": policy.input_size}
    if args.no_archive_augment:
        return AugmentConfig(jpeg_prob=0, rescale_prob=0, blur_prob=0, **crop)
    return AugmentConfig(jpeg_prob=args.jpeg_prob, rescale_prob=args.rescale_prob, blur_prob=args.blur_prob, **crop)


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
        if isinstance(action, argparse._StoreTrueAction):
            words += [flag]
        elif isinstance(value, list):
            words += [word for item in value for word in (flag, str(item))]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


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


@dataclass
class TrainingData:
    """Every data set's train images in one tensor (the storage view), what to draw each epoch,
    and each set's validation images in the policy's own view."""

    specs: list[DataSpec]
    train_parts: list[ImageSet]  # one per data set: a crops policy stores each at its own size
    draw_weights: torch.Tensor
    validation: dict[str, ImageSet]
    validation_origin: dict[str, str]
    pre: Preprocessing
    counts: dict[str, Any] = field(default_factory=dict)
    storage_sides: list[int] = field(default_factory=list)

    @property
    def train_size(self) -> int:
        return sum(len(part) for part in self.train_parts)

    @property
    def train_labels(self) -> torch.Tensor:
        return torch.cat([part.labels for part in self.train_parts])


def data_specs(args: argparse.Namespace) -> list[DataSpec]:
    given = args.data if isinstance(args.data, list) else [args.data]
    specs = [parse_data_spec(text) for text in given]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ModelError(f"--data: two data sets share a name ({', '.join(names)}); rename a folder or zip")
    return specs


def policy_of(args: argparse.Namespace) -> Preprocessing:
    """The input policy asked for (normalisation filled in later)."""
    policy = Preprocessing(
        input_size=getattr(args, "input_size", 32), resize_policy=getattr(args, "resize_policy", "squash"),
        scale_size=getattr(args, "scale_size", 0), crops=getattr(args, "crops", 1),
    )
    if policy.resize_policy != "crops":
        policy = dataclasses.replace(policy, scale_size=0, crops=1)
    card = ModelCard(name="policy", preprocessing=policy)
    card.validate()
    return policy


def pretrained_normalisation(spec: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """A fine-tune keeps the normalisation its starting model was trained with (its card's)."""
    if not spec or spec == "imagenet":
        return None
    card_path = Path(spec).with_suffix(".json")
    if not card_path.is_file():
        return None
    pre = ModelCard.from_json(card_path.read_text(encoding="utf-8")).preprocessing
    return pre.mean, pre.std


def views_from_storage(images: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """The policy's crops, taken from images stored as their central square (carved validation)."""
    if pre.views == 1 or images.shape[-1] == pre.input_size:
        # Squash and center-crop store exactly the policy's view; images no larger than one
        # crop have a single distinct view (their K copies would average to the same logits).
        return images
    boxes = crop_boxes((images.shape[-1], images.shape[-2]), pre.input_size, pre.crops)
    return torch.stack([images[:, :, top:bottom, left:right] for left, top, right, bottom in boxes], dim=1)


def prepare_data(args: argparse.Namespace) -> TrainingData:
    """Decode each set's train split, hold out validation, and weigh what each epoch draws."""
    started = time.perf_counter()
    specs = data_specs(args)
    policy = policy_of(args)
    train_parts: list[ImageSet] = []
    weights: list[torch.Tensor] = []
    validation: dict[str, ImageSet] = {}
    origin: dict[str, str] = {}
    counts: dict[str, Any] = {}
    total_share = sum(spec.share for spec in specs)
    sides: list[int] = []
    for spec in specs:
        side = storage_side(spec, policy)
        sides.append(side)
        full = load_split(spec.path, "train", policy.storage_view(side), limit_per_class=args.limit_per_class)
        if has_split(spec.path, "val"):
            train_set = full
            validation[spec.name] = load_split(spec.path, "val", policy)
            origin[spec.name] = f"its val/ split ({len(validation[spec.name])} images)"
        else:
            train_idx, val_idx = stratified_split(full.labels, full.sha256, args.val_fraction, args.seed)
            train_set, held_out = full.subset(train_idx), full.subset(val_idx)
            held_out.images = views_from_storage(held_out.images, policy)
            validation[spec.name] = held_out
            origin[spec.name] = (f"{args.val_fraction:.0%} of its train split, stratified, seed {args.seed}, "
                                 f"duplicates kept together ({len(held_out)} images)")
        del full
        train_parts.append(train_set)
        weights.append(sampling_weights(train_set.labels, train_set.sources, spec.balance) * (spec.share / total_share))
        counts[spec.name] = {
            "train_images": len(train_set), "validation_images": len(validation[spec.name]),
            "train_real": int((train_set.labels == 0).sum()), "train_ai": int((train_set.labels == 1).sum()),
            "train_sources": len(set(train_set.sources)),
        }
    normalisation = pretrained_normalisation(args.pretrained) or channel_stats(train_parts[0].images)
    pre = dataclasses.replace(policy, mean=tuple(normalisation[0]), std=tuple(normalisation[1]))
    log.info(
        "data: %d train images from %d sets (stored at %s px), validation %s (decoded in %.0f s); input %s; mean %s std %s",
        sum(len(part) for part in train_parts), len(specs), sides, {name: len(v) for name, v in validation.items()}, time.perf_counter() - started,
        pre.describe(), pre.mean, pre.std,
    )
    return TrainingData(specs, train_parts, torch.cat(weights), validation, origin, pre, counts, sides)


def storage_side(spec: DataSpec, policy: Preprocessing) -> int:
    """The side a crops policy stores a data set's images at: scale_size, or the set's own
    typical shorter side when smaller (CIFAKE's 32 px images are never enlarged)."""
    if policy.resize_policy != "crops":
        return policy.input_size
    typical = typical_shorter_side(spec.path, "train")
    return max(policy.input_size, min(policy.scale_size, typical))


def epoch_order(data: TrainingData, args: argparse.Namespace, epoch: int) -> torch.Tensor:
    """Which train images an epoch sees, in order; seeded by the epoch alone, so a resumed run
    sees the same. One set without balancing: each image once (as before several sets existed)."""
    generator = torch.Generator().manual_seed(args.seed * 10_000 + epoch)
    single = len(data.specs) == 1 and not data.specs[0].balance
    if single and args.epoch_size is None:
        return torch.randperm(data.train_size, generator=generator)
    draws = args.epoch_size or data.train_size
    return torch.multinomial(data.draw_weights, draws, replacement=True, generator=generator)


def validate(net: nn.Module, data: TrainingData, device: torch.device, dtype: torch.dtype | None,
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


RESUME_KEEPS = ("epochs", "batch_size", "lr", "warmup_fraction", "momentum", "weight_decay", "label_smoothing",
                "val_fraction", "seed", "limit_per_class", "variant", "no_archive_augment", "name",
                "jpeg_prob", "rescale_prob", "blur_prob", "epoch_size", "input_size", "resize_policy", "scale_size",
                "crops", "crop_scale", "threshold_max_fpr", "select_on")


def main(args: argparse.Namespace) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    amp_dtype = autocast_dtype(args.amp, device)
    run_dir = Path(args.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)

    state: TrainingState | None = None
    resume_path: Path | None = None
    if args.resume:
        resume_path = resolve_checkpoint(run_dir if args.resume == "auto" else Path(args.resume))
        saved_args = json.loads(resume_path.read_text())["args"]
        # A resumed run keeps the schedule it started with; only how it runs may change.
        for key in RESUME_KEEPS:
            setattr(args, key, saved_args.get(key, getattr(args, key, None)))

    torch.manual_seed(args.seed)
    data = prepare_data(args)
    if args.select_on is not None and args.select_on != "mean" and args.select_on not in data.validation:
        raise ModelError(f"--select-on {args.select_on}: no data set of that name ({', '.join(data.validation)})")

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
    state.extra["data_counts"] = data.counts
    state.args.update({k: v for k, v in vars(args).items() if k not in state.args})

    draws = len(epoch_order(data, args, 0))
    steps_per_epoch = math.ceil(draws / args.batch_size)
    total_steps = steps_per_epoch * args.epochs
    workers = args.workers if args.workers is not None else (min(8, usable_cpus()) if device.type == "cuda" else 0)
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
    run = EpochRunner(net, optimizer, scaler, data, args, device, amp_dtype, workers, total_steps)

    epochs_this_call = 0
    while state.epochs_done < args.epochs:
        if args.stop_after_epochs is not None and epochs_this_call >= args.stop_after_epochs:
            log.info("stopping after %d epochs as asked; continue with --resume", epochs_this_call)
            return run_dir
        epoch_start = time.perf_counter()
        train_loss, seen = run.train_one_epoch(state)
        train_seconds = time.perf_counter() - epoch_start
        val = validate(net, data, device, amp_dtype, limit=args.epoch_val_limit)
        epoch_seconds = time.perf_counter() - epoch_start
        state.epochs_done += 1
        state.extra["seconds"] = state.extra.get("seconds", 0.0) + epoch_seconds
        row = history_row(state.epochs_done, train_loss, val, run.last_lr, seen / train_seconds, epoch_seconds)
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
                 row["images_per_second"], epoch_seconds, time.strftime("%H:%M:%S", time.gmtime(eta)))
        epochs_this_call += 1

    if args.select_on is not None and "best" in state.extra:
        load_best(run_dir, net)
        log.info("exporting epoch %d, the best on %s validation (AUC %.5f)", state.extra["best"]["epoch"],
                 args.select_on, state.extra["best"]["roc_auc"])
    model_path = export_model(net, data, args, state, device, run_dir / args.name)
    log.info("exported %s", model_path)
    return model_path


BEST_NAME = "best.safetensors"


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


class EpochRunner:
    """One epoch of SGD over the draws of :func:`epoch_order`, augmented in DataLoader workers."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 data: TrainingData, args: argparse.Namespace, device: torch.device, amp_dtype: torch.dtype | None,
                 workers: int, total_steps: int) -> None:
        self.net, self.optimizer, self.scaler, self.data, self.args = net, optimizer, scaler, data, args
        self.device, self.amp_dtype, self.workers, self.total_steps = device, amp_dtype, workers, total_steps
        self.augment = [augment_config(args, side) for side in data.storage_sides]
        self.criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        self.last_lr = 0.0

    def train_one_epoch(self, state: TrainingState) -> tuple[float, int]:
        args, device, pre = self.args, self.device, self.data.pre
        epoch = state.epochs_done
        epoch_start = time.perf_counter()
        self.net.train()
        # Seeds depend on the epoch and batch only, so a resumed run sees the same batches.
        order = epoch_order(self.data, args, epoch)
        batches = AugmentedBatches([part.images for part in self.data.train_parts], self.data.train_labels, order,
                                   args.batch_size, self.augment,
                                   seed=args.seed * 10_000 + epoch + 5_000)
        loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=self.workers,
                                             pin_memory=device.type == "cuda")
        # Summed on the device: reading the loss every step would make the host wait for the GPU.
        loss_sum, seen = torch.zeros((), device=device), 0
        for batch_number, (images, labels) in enumerate(loader):
            images = normalize(images.to(device, non_blocking=True), pre).contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            lr = one_cycle_lr(state.step, self.total_steps, args.lr, args.warmup_fraction)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with autocast(device, self.amp_dtype):
                logits = self.net(images)
            loss = self.criterion(logits.float(), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            state.step += 1
            self.last_lr = lr
            loss_sum += loss.detach() * len(labels)
            seen += len(labels)
            if args.print_freq and batch_number % args.print_freq == 0 and batch_number:
                rate = seen / (time.perf_counter() - epoch_start)
                log.info("  epoch %d batch %d/%d loss %.4f lr %.4f %.0f img/s", epoch + 1, batch_number, len(batches),
                         loss_sum.item() / seen, lr, rate)
        return loss_sum.item() / seen, seen


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    import csv

    path = run_dir / "history.csv"
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def export_model(
    net: nn.Module, data: TrainingData, args: argparse.Namespace, state: TrainingState, device: torch.device,
    model_path: Path,
) -> Path:
    """Calibrate on validation, choose the threshold there, and write NAME.safetensors + NAME.json.

    With several data sets, each set's validation weighs the same in the temperature and the
    threshold, whatever its size (CIFAKE's 10,000 would otherwise drown wild's 489).
    """
    pre = data.pre
    names = list(data.validation)
    logits_by_set = {name: predict_logits(net, data.validation[name].images, pre, device, None) for name in names}
    labels_by_set = {name: data.validation[name].labels for name in names}
    val_logits = torch.cat([logits_by_set[name] for name in names])
    labels = torch.cat([labels_by_set[name] for name in names])
    groups = np.concatenate([np.full(len(labels_by_set[name]), index) for index, name in enumerate(names)])
    weights = torch.tensor([1.0 / len(labels_by_set[names[g]]) for g in groups], dtype=torch.float32)
    temperature = fit_temperature(val_logits, labels, weights=weights if len(names) > 1 else None)
    prob_ai = torch.softmax(val_logits / temperature, dim=1)[:, 1].numpy()
    if len(names) == 1 and args.threshold_max_fpr is None:
        threshold, method = choose_threshold(prob_ai, labels.numpy())
    else:
        threshold, method = choose_threshold_per_sets(prob_ai, labels.numpy(), groups, names, args.threshold_max_fpr)
    uncalibrated = torch.softmax(val_logits, dim=1)[:, 1].numpy()
    validation: dict[str, Any] = {
        "calibrated": classification_metrics(prob_ai, labels.numpy(), threshold),
        "uncalibrated_ece": classification_metrics(uncalibrated, labels.numpy(), 0.5)["ece"],
    }
    if len(names) > 1:
        validation["per_data_set"] = {
            name: classification_metrics(prob_ai[groups == index], labels_by_set[name].numpy(), threshold)
            for index, name in enumerate(names)
        }
    seconds = state.extra.get("seconds", 0.0)
    training = {
        "data": [{**dataset_fingerprint(spec), **data.counts.get(spec.name, {}), "validation": data.validation_origin[spec.name]}
                 for spec in data.specs],
        "command": state.extra.get("command") or command_line(args),
        "seed": args.seed,
        "epochs": args.epochs,
        "epochs_done": state.epochs_done,
        "epoch_size": len(epoch_order(data, args, 0)),
        "batch_size": args.batch_size,
        "optimizer": f"SGD nesterov momentum {args.momentum}, weight decay {args.weight_decay}, one-cycle peak lr {args.lr}",
        # One set: its augmentation; several: each set's (a crops policy crops each at its own size).
        "augmentation": (dataclasses.asdict(augment_config(args, data.storage_sides[0])) if len(data.specs) == 1 else
                         {name: dataclasses.asdict(augment_config(args, side))
                          for name, side in zip(data.counts, data.storage_sides)}),
        "validation": "; ".join(f"{name}: {origin}" for name, origin in data.validation_origin.items()),
        "pretrained": pretrained_record(args.pretrained),
        "mixed_precision": args.amp,
        "train_seconds": round(seconds, 1),
        "seconds_per_epoch": round(seconds / max(1, state.epochs_done), 1),
        "hardware": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {device}",
        "torch": torch.__version__,
        "history": state.history,
    }
    if "best" in state.extra and args.select_on is not None:
        training["selected_epoch"] = state.extra["best"]
    card = ModelCard(
        name=args.name,
        variant=args.variant,
        class_names=CLASS_NAMES,
        preprocessing=pre,
        temperature=temperature,
        threshold=threshold,
        threshold_method=method,
        training=training,
        validation_metrics=validation,
        notes=([] if state.epochs_done >= args.epochs else [
            f"INTERIM: exported after epoch {state.epochs_done} of a {args.epochs}-epoch schedule; "
            "the learning rate had not yet annealed, so this is not the finished model.",
        ]) + [
            VARIANT_NOTES.get(args.variant, f"Variant {args.variant}."),
            f"Input policy: {pre.describe()}.",
        ],
    )
    save_model(net, card, model_path)
    return model_path.with_name(model_path.name + ".json")
