"""What a command line asks for, apart from the loop that runs it: the ``fit`` options (``export``
rebuilds a run's arguments from them), the augmentation they ask for, and the compute options
``fit`` and ``evaluate`` share with ``audit scan``."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from audit.model import DEVICE_CHOICES, PRECISION_CHOICES
from training.augment import AugmentConfig
from training.data import policy_of

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


class AmpAlias(argparse.Action):
    """``--amp auto|bf16|fp16|off``, the old spelling of ``--precision`` (``off`` is fp32), kept
    because recorded commands (model cards, README) use it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, "fp32" if value == "off" else value)


def add_compute_options(parser: argparse.ArgumentParser, precision_default: str, precision_help: str) -> None:
    """``--device`` and ``--precision`` (with the hidden ``--amp`` alias), as ``audit scan`` spells them."""
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--precision", default=precision_default, choices=PRECISION_CHOICES, help=precision_help)
    parser.add_argument("--amp", dest="precision", action=AmpAlias, choices=AMP_CHOICES, help=argparse.SUPPRESS)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the AI-generated image detector", add_help=add_help)
    parser.add_argument("--data", required=True, action="append",
                        help="folder or zip with train/REAL|FAKE (and val/, test/); repeat for several data sets. "
                        "PATH:share=F sets the set's share of each epoch's draws, PATH:balance draws its sources "
                        "(file-name prefix before '_') equally often. A set's val/ split validates it; without one, "
                        "--val-fraction of its train split is held out")
    parser.add_argument("--output-dir", default="runs/detector", help="run folder: checkpoint, history, exported model")
    parser.add_argument("--name", default="detector", help="name of the exported model (NAME.safetensors + NAME.json)")
    parser.add_argument("--variant", default="resnet18-s1stem", help="network variant (audit.model._card.ARCHITECTURES)")
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
    parser.add_argument("--resize-policy", default="squash", choices=["squash", "center-crop", "crops"], help="the card's input policy (audit.model._input_policy.RESIZE_POLICIES)")
    parser.add_argument("--scale-size", type=int, default=0, help="crops policy: shorter side before cropping")
    parser.add_argument("--crops", type=int, default=1, help="crops policy: crops scored an image (1, 5 or 9)")
    parser.add_argument("--crop-scale", type=float, default=None, help="random resized crop of this share of the side up to all of it (default: 4-pixel padded crop)")
    parser.add_argument("--threshold-max-fpr", type=float, default=None, help="choose the threshold among those whose false-positive rate on every validation set's real images is at most this")
    parser.add_argument("--epoch-val-limit", type=int, default=None, help="validate each epoch on at most N images of each set (the export uses all)")
    parser.add_argument("--select-on", default=None, help="export the epoch with the best validation AUC on this data set (its name), or 'mean' over the sets, instead of the last")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-per-class", type=int, default=None, help="use at most N training images per class (smoke runs)")
    add_compute_options(parser, "auto", "autocast precision; auto: bf16 where native (CUDA with bf16, or CPUs with "
                        "avx512_bf16/amx_bf16), fp16 on CUDA without bf16, else fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--workers", type=int, default=None, help="processes that augment batches ahead (default: 0 on CPU; with CUDA cores - 1, at most 8)")
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


def fit_defaults() -> argparse.Namespace:
    """Every fit option at its default (filling in a checkpoint from before an option existed)."""
    return get_args_parser().parse_args(["--data", "unused"])


# Options that do not change what a run computes, left out of its recorded command.
NOT_RECORDED = ("help", "resume", "stop_after_epochs", "print_freq")


def command_line(args: argparse.Namespace) -> str:
    """The fit command that reproduces these arguments (options left at their default omitted)."""
    words = ["python", "-m", "training", "fit"]
    for action in get_args_parser()._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.dest in NOT_RECORDED:
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
