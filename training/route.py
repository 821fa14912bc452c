"""Route small images to another model: ``python -m training route CARD --max-side 32 --to cifake-resnet18``.

One network rarely holds 32x32 thumbnails and photos at once. This writes the route into the
card (the other model pinned by its weights' sha256), so the scan, ``audit models`` and the
report all say which images that model judges.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from audit.atomic import write_text
from audit.model import load_model, model_paths, read_card, resolve_model


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Route images up to a size to another model", add_help=add_help)
    parser.add_argument("card", help="the routing model (NAME.json)")
    parser.add_argument("--max-side", type=int, required=True, help="images whose longer side is at most this many pixels")
    parser.add_argument("--to", required=True, dest="target",
                        help="the model that judges them: a shipped model's name, or a path beside the card")
    parser.add_argument("--reason", default="", help="why, in words, for the card and the report")
    return parser


def main(args: argparse.Namespace) -> Path:
    _, card_path = model_paths(resolve_model(args.card))
    card = read_card(card_path)
    target = load_model(resolve_model(args.target), lazy=True)
    route = {"max_side": args.max_side, "model": args.target, "weights_sha256": target.card.weights_sha256,
             "reason": args.reason}
    routes = [r for r in card.routes if r.get("max_side") != args.max_side] + [route]
    write_text(card_path, dataclasses.replace(card, routes=sorted(routes, key=lambda r: r["max_side"])).to_json())
    load_model(card_path, lazy=True)  # the routed card loads, its route's sha256 checked
    print(f"{card_path}: images of at most {args.max_side} px on their longer side go to {target.model_id}")
    return card_path
