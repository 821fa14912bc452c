"""Per-source and per-generator tables: a pooled figure hides which kinds of image fail."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score


def source_table(prob_ai: np.ndarray, labels: np.ndarray, keys: list[str], threshold: float,
                 uncertain: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One row per key: how many images, how many flagged, and the AUC where both classes occur.

    ``flagged_rate`` is the share of the key's images at or above the threshold: for real photos
    that is the false-positive rate, for AI images the share caught. With ``uncertain`` (which
    images the card's rules send to a person), the rows also say which share is uncertain, and how
    many of the key's wrong verdicts are uncertain rather than wrong; ``flagged_rate`` then counts
    only the images flagged ``ai-generated`` (not uncertain), as a scan would.
    """
    prob_ai = np.asarray(prob_ai, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    keys_array = np.asarray(keys)
    rows = []
    for key in sorted(set(keys)):
        member = keys_array == key
        member_labels = labels[member]
        flagged = prob_ai[member] >= threshold
        both = 0 < member_labels.sum() < len(member_labels)
        row = {
            "source": key,
            "count": int(member.sum()),
            "real": int((member_labels == 0).sum()),
            "ai": int((member_labels == 1).sum()),
            "flagged_rate": round(float(flagged.mean()), 4),
            "mean_prob_ai": round(float(prob_ai[member].mean()), 4),
            "roc_auc": round(float(roc_auc_score(member_labels, prob_ai[member])), 4) if both else None,
        }
        if uncertain is not None:
            row.update(uncertain_figures(flagged, member_labels, np.asarray(uncertain)[member]))
        rows.append(row)
    return rows


def uncertain_figures(at_threshold: np.ndarray, labels: np.ndarray, uncertain: np.ndarray) -> dict[str, Any]:
    """What the uncertain verdict does to a group of images: the share uncertain, the share flagged
    ``ai-generated`` once uncertain rows are set apart, and the wrong verdicts it catches."""
    wrong = at_threshold != (labels == 1)
    count = max(1, len(labels))
    return {
        "flagged_rate": round(float((at_threshold & ~uncertain).sum() / count), 4),
        "uncertain_rate": round(float(uncertain.sum() / count), 4),
        "wrong": int(wrong.sum()),
        "wrong_uncertain": int((wrong & uncertain).sum()),
    }


def read_manifests(paths: list[str | Path]) -> dict[str, str]:
    """file (its path inside the data set) -> generator, from TSV manifests such as WILD-MANIFEST.tsv."""
    generators: dict[str, str] = {}
    for path in paths:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                if row.get("file") and row.get("generator"):
                    generators[row["file"]] = row["generator"]
    return generators


def generator_keys(names: list[str], labels: np.ndarray, generators: dict[str, str]) -> list[str]:
    """Each file's generator (or kind of real photo) from the manifest, prefixed by its class."""
    return [f"{'AI' if label else 'real'}: {generators.get(name, 'unknown')}" for name, label in zip(names, labels)]
