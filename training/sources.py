"""Per-source and per-generator tables: a pooled figure hides which kinds of image fail."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score


def source_table(prob_ai: np.ndarray, labels: np.ndarray, keys: list[str], threshold: float) -> list[dict[str, Any]]:
    """One row per key: how many images, how many flagged, and the AUC where both classes occur.

    ``flagged_rate`` is the share of the key's images at or above the threshold: for real photos
    that is the false-positive rate, for AI images the share caught.
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
        rows.append({
            "source": key,
            "count": int(member.sum()),
            "real": int((member_labels == 0).sum()),
            "ai": int((member_labels == 1).sum()),
            "flagged_rate": round(float(flagged.mean()), 4),
            "mean_prob_ai": round(float(prob_ai[member].mean()), 4),
            "roc_auc": round(float(roc_auc_score(member_labels, prob_ai[member])), 4) if both else None,
        })
    return rows


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
