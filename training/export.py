"""Export a model from a run's checkpoint: ``python -m training export RUN_DIR``.

``fit`` exports by itself when its schedule ends; this command exports any checkpoint (an
interrupted run, or an interim model while a long schedule is still going), calibrated and
thresholded on the same validation split as the run.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from audit.model import DEVICE_CHOICES, build_network, pick_device
from training.card import export_model
from training.checkpoint import load_checkpoint, resolve_checkpoint
from training.data import prepare_data
from training.options import fit_defaults

log = logging.getLogger("training")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a model from a training checkpoint", add_help=add_help)
    parser.add_argument("run_dir", help="run folder holding checkpoint.json (or the checkpoint.json itself)")
    parser.add_argument("--output", default=None, help="model path NAME (writes NAME.safetensors + NAME.json); default RUN_DIR/NAME")
    parser.add_argument("--data", default=None, action="append", help="the training data, if it moved since the run (repeat as in fit)")
    parser.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    parser.add_argument("--weights", default=None, help="a .safetensors of the run's network to export instead of the "
                        "checkpoint's tensors (e.g. best.safetensors, or weights brought back from a training machine)")
    return parser


def main(args: argparse.Namespace) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    state_path = resolve_checkpoint(Path(args.run_dir))
    run_args = argparse.Namespace(**json.loads(state_path.read_text(encoding="utf-8"))["args"])
    if args.data:
        run_args.data = [args.data] if isinstance(args.data, str) else args.data
    net = build_network(run_args.variant)
    if args.weights:
        from safetensors.torch import load_file

        state = load_checkpoint(state_path, None, optimizer=None)
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(args.weights).items()})
        log.info("weights from %s (the run's epoch %s)", args.weights, state.extra.get("best", {}).get("epoch", "?"))
    else:
        state = load_checkpoint(state_path, net, optimizer=None)
    device = pick_device(args.device)
    net.to(device)
    for key, value in vars(fit_defaults()).items():
        if not hasattr(run_args, key):
            setattr(run_args, key, value)  # a checkpoint from before the option existed
    data = prepare_data(run_args)
    target = Path(args.output) if args.output else state_path.parent / run_args.name
    card_path = export_model(net, data, run_args, state, device, target)
    log.info("exported %s (after epoch %d of %d)", card_path, state.epochs_done, run_args.epochs)
    return card_path
