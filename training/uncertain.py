"""``python -m training calibrate-uncertain --model PATH.json --data DATA [--data DATA2 ...]``: fit the
card's rules for the ``uncertain`` verdict (audit.model._uncertainty) and write them into the card.

* **Novelty statistics**, from the pooled features of a random sample of each set's train split
  (``--train-sample`` images a set); the novelty threshold is their ``--novelty-quantile``.
* **The band** around the threshold, on each set's validation images (its val/ split, or the part
  of train that ``fit`` held out: same ``--val-fraction`` and ``--seed``): among the bands
  ``[low, high)`` that hold the threshold, the one that sends the fewest images to uncertain while
  catching at least ``--band-errors`` of the wrong verdicts (those the novelty test has not
  already caught), with at most ``--band-max-share`` of all images uncertain (the novel ones
  included). When no band meets both, the one that catches the most errors within the share.

The weights are unchanged; the card is rewritten atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audit.atomic import write_text
from audit.model import (
    NoveltyStatistics,
    Preprocessing,
    Uncertainty,
    autocast_dtype,
    load_model,
    model_paths,
    pick_device,
    resolve_precision,
)
from training.data import (
    DataError,
    ImageSet,
    data_specs,
    decode_to_input,
    has_split,
    iter_files,
    load_split,
    stratified_split,
)
from training.engine import predict_logits_and_features, single_view
from training.options import add_compute_options

log = logging.getLogger("training")
EDGE_CANDIDATES = 400  # band edges tried on each side of the threshold (quantiles of the probabilities)


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fit the uncertain band and the novelty statistics into a model card",
                                     add_help=add_help)
    parser.add_argument("--model", required=True, help="NAME.json or NAME.safetensors of an exported model")
    parser.add_argument("--data", required=True, action="append",
                        help="folder or zip with train/REAL|FAKE (and val/); repeat for several data sets (as for fit)")
    parser.add_argument("--train-sample", type=int, default=4000,
                        help="training images a set, drawn at random, for the novelty statistics")
    parser.add_argument("--novelty-quantile", type=float, default=0.99,
                        help="the novelty threshold: this quantile of the training sample's novelty")
    parser.add_argument("--novelty-components", type=int, default=8,
                        help="principal directions of the training features kept in the card")
    parser.add_argument("--band-errors", type=float, default=0.5,
                        help="share of the wrong validation verdicts the band should make uncertain")
    parser.add_argument("--band-max-share", type=float, default=0.2,
                        help="most of all validation images that may be uncertain (band and novelty together)")
    parser.add_argument("--no-novelty", action="store_true", help="fit the band only")
    parser.add_argument("--check-degraded", action="store_true",
                        help="make the card ask every scan for the degraded-copy check (audit scan --check-degraded)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="for a set without val/: the share of train that fit held out (fit's --val-fraction)")
    parser.add_argument("--seed", type=int, default=0, help="fit's --seed (the held-out part), and the training sample's")
    add_compute_options(parser, "fp32", "autocast precision (default fp32, as the scan on a CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    return parser


# --------------------------------------------------------------------------- data


@dataclass
class SplitPlan:
    """Which train files of one set to decode: the held-out validation, and a sample of the rest."""

    validation: set[int]
    sample: set[int]


def plan_split(source: Path, sample: int, val_fraction: float, seed: int, with_val_split: bool) -> SplitPlan:
    """One pass over the train split's bytes (hashes and labels only, nothing decoded)."""
    labels, hashes = [], []
    for _, label, data in iter_files(source, "train"):
        labels.append(label)
        hashes.append(hashlib.sha256(data).hexdigest())
    if not labels:
        raise DataError(f"no images under train/REAL or train/FAKE in {source}")
    held_out: set[int] = set()
    if not with_val_split:
        _, val_idx = stratified_split(torch.tensor(labels), hashes, val_fraction, seed)
        held_out = {int(i) for i in val_idx}
    rest = np.array([i for i in range(len(labels)) if i not in held_out])
    chosen = np.random.default_rng(seed).choice(rest, size=min(sample, len(rest)), replace=False)
    return SplitPlan(held_out, {int(i) for i in chosen})


def decode_indices(source: Path, indices: set[int], pre: Preprocessing) -> ImageSet:
    """The train files at ``indices`` (their order in the split), decoded as the scan decodes."""
    tensors, labels, names, hashes = [], [], [], []
    for index, (name, label, data) in enumerate(iter_files(source, "train")):
        if index not in indices:
            continue
        tensor, _ = decode_to_input(name, data, pre)
        if tensor is not None:
            tensors.append(tensor)
            labels.append(label)
            names.append(name)
            hashes.append(hashlib.sha256(data).hexdigest())
    if not tensors:
        raise DataError(f"none of the chosen train images of {source} could be decoded")
    return ImageSet(torch.stack(tensors), torch.tensor(labels), names, hashes)


# --------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class BandFit:
    low: float
    high: float
    errors_caught: float  # share of all wrong verdicts uncertain (band or novelty)
    share_uncertain: float  # share of all images uncertain (band or novelty)
    met_targets: bool


def uncertain_mask(prob_ai: np.ndarray, novelty: np.ndarray | None, rules: Uncertainty | None) -> np.ndarray:
    """Which images the card's rules send to uncertain (the degraded check aside)."""
    mask = np.zeros(len(prob_ai), dtype=bool)
    if rules is None:
        return mask
    if rules.has_band:
        mask |= (prob_ai >= rules.band_low) & (prob_ai < rules.band_high)
    if rules.novelty is not None and novelty is not None:
        mask |= novelty > rules.novelty.threshold
    return mask


def fit_band(prob_ai: np.ndarray, labels: np.ndarray, threshold: float, novel: np.ndarray, error_target: float,
             max_share: float) -> BandFit:
    """The band [low, high) around ``threshold`` (see the module's docstring)."""
    prob_ai = np.asarray(prob_ai, dtype=np.float64)
    wrong = (prob_ai >= threshold) != (np.asarray(labels) == 1)
    total, errors = len(prob_ai), max(1, int(wrong.sum()))
    below = np.quantile(prob_ai[prob_ai < threshold], np.linspace(0, 1, EDGE_CANDIDATES)) \
        if (prob_ai < threshold).any() else np.array([])
    above = np.quantile(prob_ai[prob_ai >= threshold], np.linspace(0, 1, EDGE_CANDIDATES)) \
        if (prob_ai >= threshold).any() else np.array([])
    lows = np.unique(np.concatenate([[threshold], below]))
    highs = np.unique(np.concatenate([[threshold], np.nextafter(above, 2.0)]))
    highs = highs[highs <= 1.0 + 1e-12]
    # Counts for every (low, high): images and errors in the band, not already novel.
    free = ~novel
    order = np.argsort(prob_ai)
    sorted_prob = prob_ai[order]
    cum_images = np.concatenate([[0], np.cumsum(free[order])])
    cum_errors = np.concatenate([[0], np.cumsum((free & wrong)[order])])
    at_low = np.searchsorted(sorted_prob, lows, side="left")
    at_high = np.searchsorted(sorted_prob, highs, side="left")
    in_band = cum_images[at_high][None, :] - cum_images[at_low][:, None]
    caught = cum_errors[at_high][None, :] - cum_errors[at_low][:, None]
    share = (in_band + novel.sum()) / total
    errors_share = (caught + (novel & wrong).sum()) / errors
    feasible = (share <= max_share) & (errors_share >= error_target)
    if feasible.any():
        score = np.where(feasible, share, np.inf)
        met = True
    else:
        score = np.where(share <= max_share, -errors_share, np.inf)
        met = False
    width = highs[None, :] - lows[:, None]  # ties go to the narrower band
    i, j = np.unravel_index(int(np.argmin(score + 1e-9 * width)), score.shape)
    return BandFit(float(lows[i]), float(min(highs[j], 1.0)), float(errors_share[i, j]), float(share[i, j]), met)


# --------------------------------------------------------------------------- the command


def main(args: argparse.Namespace) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    card, pre = model.card, model.card.preprocessing
    device = pick_device(args.device)
    dtype = autocast_dtype(resolve_precision(args.precision, device, for_training=True))
    net = model.network.to(device)
    train_features, val_prob, val_labels, val_features, described = [], [], [], [], []
    for spec in data_specs(args):
        with_val = has_split(spec.path, "val")
        plan = plan_split(spec.path, args.train_sample, args.val_fraction, args.seed, with_val)
        sample = decode_indices(spec.path, plan.sample, pre)
        validation = load_split(spec.path, "val", pre) if with_val else decode_indices(spec.path, plan.validation, pre)
        # CIFAKE's small images are K identical crops: one is the same features at a K-th of the cost.
        _, features = predict_logits_and_features(net, single_view(sample.images), pre, device, dtype)
        logits, v_features = predict_logits_and_features(net, single_view(validation.images), pre, device, dtype)
        train_features.append(features.numpy())
        val_prob.append(model.probabilities(logits).numpy())
        val_labels.append(validation.labels.numpy())
        val_features.append(v_features.numpy())
        where = "val/" if with_val else f"{args.val_fraction:.0%} of train held out (seed {args.seed})"
        described.append(f"{spec.name}: {len(sample)} train, {len(validation)} validation ({where})")
        log.info("%s", described[-1])
    prob, labels = np.concatenate(val_prob), np.concatenate(val_labels)
    novelty_stats = None
    novel = np.zeros(len(prob), dtype=bool)
    if not args.no_novelty:
        features = np.concatenate(train_features)
        novelty_stats = NoveltyStatistics.fit(
            features, components=args.novelty_components, quantile=args.novelty_quantile,
            fitted=f"features of {len(features)} training images ({'; '.join(d.split(',')[0] for d in described)}), "
                   f"{args.novelty_components} principal directions; threshold at their {args.novelty_quantile:.0%} "
                   "quantile")
        novel = novelty_stats.score(torch.from_numpy(np.concatenate(val_features))).numpy() > novelty_stats.threshold
    band = fit_band(prob, labels, card.threshold, novel, args.band_errors, args.band_max_share)
    band_text = (f"fitted on {len(prob)} validation images ({'; '.join(described)}): the narrowest band holding "
                 f"{band.errors_caught:.0%} of the {int(((prob >= card.threshold) != (labels == 1)).sum())} wrong "
                 f"verdicts with {band.share_uncertain:.0%} of the images uncertain (targets: at least "
                 f"{args.band_errors:.0%} of the errors, at most {args.band_max_share:.0%} of the images"
                 f"{'' if band.met_targets else '; the error target was not reached'})")
    # Six decimals, rounded outwards: the band must still hold the threshold.
    low, high = math.floor(band.low * 1e6) / 1e6, math.ceil(band.high * 1e6) / 1e6
    card.uncertainty = Uncertainty(band_low=low, band_high=high, band_fitted=band_text, novelty=novelty_stats,
                                   check_degraded=args.check_degraded)
    card.validate()
    _, card_path = model_paths(args.model)
    write_text(card_path, card.to_json())
    fitted = {"band": dataclasses.asdict(band), "validation_images": len(prob),
              "novelty_threshold": novelty_stats.threshold if novelty_stats else None,
              "validation_novel_share": float(novel.mean()), "card": str(card_path)}
    print(f"band {band.low:.4f}-{band.high:.4f} around threshold {card.threshold:.4f}: {band.errors_caught:.1%} of "
          f"the wrong validation verdicts uncertain, {band.share_uncertain:.1%} of all validation images uncertain"
          f"{'' if band.met_targets else ' (error target not reached)'}")
    if novelty_stats is not None:
        print(f"novelty threshold {novelty_stats.threshold:.3f} ({args.novelty_quantile:.0%} quantile of "
              f"{len(np.concatenate(train_features))} training images); {novel.mean():.1%} of validation images above it")
    print(f"wrote {card_path}")
    return fitted
