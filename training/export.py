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

from audit.model import build_network
from training.checkpoint import load_checkpoint, resolve_checkpoint
from training.train import export_model, pick_device, prepare_data

log = logging.getLogger("training")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a model from a training checkpoint", add_help=add_help)
    parser.add_argument("run_dir", help="run folder holding checkpoint.json (or the checkpoint.json itself)")
    parser.add_argument("--output", default=None, help="model path NAME (writes NAME.safetensors + NAME.json); default RUN_DIR/NAME")
    parser.add_argument("--data", default=None, help="the training data, if it moved since the run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser


def main(args: argparse.Namespace) -> Path:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    state_path = resolve_checkpoint(Path(args.run_dir))
    run_args = argparse.Namespace(**json.loads(state_path.read_text(encoding="utf-8"))["args"])
    if args.data:
        run_args.data = args.data
    net = build_network(run_args.variant)
    state = load_checkpoint(state_path, net, optimizer=None)
    device = pick_device(args.device)
    net.to(device)
    _, val_set, pre = prepare_data(Path(run_args.data), run_args)
    target = Path(args.output) if args.output else state_path.parent / run_args.name
    card_path = export_model(net, pre, run_args, state, val_set, device, Path(run_args.data), target)
    log.info("exported %s (after epoch %d of %d)", card_path, state.epochs_done, run_args.epochs)
    return card_path
