"""Classification metrics, calibration (temperature scaling) and the choice of threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

# The card's ECE and the report's are one function: the same predictions give the same figure.
from audit.report import expected_calibration_error


def reliability_table(prob_ai: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Fraction of AI-generated images per bin of predicted probability (for a reliability diagram)."""
    prob_ai = np.asarray(prob_ai, dtype=np.float64)
    labels = np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(prob_ai, edges[1:-1], right=False), 0, bins - 1)
    rows = []
    for b in range(bins):
        in_bin = which == b
        rows.append(
            {
                "bin_low": float(edges[b]),
                "bin_high": float(edges[b + 1]),
                "count": int(in_bin.sum()),
                "mean_prob_ai": float(prob_ai[in_bin].mean()) if in_bin.any() else float("nan"),
                "fraction_ai": float(labels[in_bin].mean()) if in_bin.any() else float("nan"),
            }
        )
    return rows


def classification_metrics(prob_ai: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (AI-generated is the positive class), ROC AUC, confusion, ECE."""
    prob_ai = np.asarray(prob_ai, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    predicted = (prob_ai >= threshold).astype(int)
    matrix = confusion_matrix(labels, predicted, labels=[0, 1])
    both_classes = len(np.unique(labels)) == 2
    return {
        "count": int(len(labels)),
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "recall": float(recall_score(labels, predicted, zero_division=0)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(labels, prob_ai)) if both_classes else float("nan"),
        "ece": expected_calibration_error(prob_ai, labels),
        # rows: true real / true AI; columns: predicted real / predicted AI
        "confusion_matrix": matrix.tolist(),
    }


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200,
                    weights: torch.Tensor | None = None) -> float:
    """Temperature that minimises the (optionally weighted) negative log-likelihood on held-out
    logits (Guo et al., 2017)."""
    logits = logits.detach().float()
    labels = labels.detach().long()
    sample_weights = None if weights is None else (weights.detach().float() / weights.sum())
    log_temperature = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        if sample_weights is None:
            loss = torch.nn.functional.cross_entropy(logits / log_temperature.exp(), labels)
        else:
            losses = torch.nn.functional.cross_entropy(logits / log_temperature.exp(), labels, reduction="none")
            loss = (losses * sample_weights).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.exp().item())


def choose_threshold(prob_ai: np.ndarray, labels: np.ndarray) -> tuple[float, str]:
    """Threshold on the calibrated probability that maximises balanced accuracy on validation.

    Balanced accuracy rather than accuracy, so that an archive with a different mix of real and
    AI images is not judged by a threshold tuned to CIFAKE's 50/50 split.
    """
    prob_ai = np.asarray(prob_ai, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    order = np.argsort(prob_ai)
    sorted_probs = prob_ai[order]
    sorted_labels = labels[order]
    positives = sorted_labels.sum()
    negatives = len(sorted_labels) - positives
    # Threshold between consecutive scores: everything at index >= k is called AI.
    real_below = np.concatenate([[0], np.cumsum(1 - sorted_labels)])
    ai_below = np.concatenate([[0], np.cumsum(sorted_labels)])
    balanced = 0.5 * (real_below / max(negatives, 1) + (positives - ai_below) / max(positives, 1))
    best = int(np.argmax(balanced))
    if best == 0:
        threshold = float(sorted_probs[0])
    elif best == len(sorted_probs):
        threshold = float(np.nextafter(sorted_probs[-1], 1.0))
    else:
        threshold = float((sorted_probs[best - 1] + sorted_probs[best]) / 2)
    description = (
        f"maximises balanced accuracy of the calibrated probability on the validation split "
        f"({len(labels)} images; balanced accuracy {balanced[best]:.4f} there)"
    )
    return threshold, description


def choose_threshold_per_sets(prob_ai: np.ndarray, labels: np.ndarray, groups: np.ndarray, names: list[str],
                              max_fpr: float | None) -> tuple[float, str]:
    """Threshold that maximises the mean over validation sets of their balanced accuracy, among
    the thresholds that flag at most ``max_fpr`` of every set's real images (if given).

    Each set counts the same whatever its size, so CIFAKE's 10,000 validation images do not
    drown the few hundred wild photos the threshold must also hold on.
    """
    prob_ai = np.asarray(prob_ai, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    # "flagged" is prob_ai >= threshold: every distinct score, and one above the highest.
    candidates = np.unique(np.concatenate([prob_ai, [np.nextafter(prob_ai.max(), 2.0)]]))
    best: tuple[float, float, dict[str, float]] | None = None
    fallback: tuple[float, float, dict[str, float]] | None = None
    for threshold in candidates:
        flagged = prob_ai >= threshold
        balanced, fprs = [], {}
        for index, name in enumerate(names):
            member = groups == index
            real, ai = member & (labels == 0), member & (labels == 1)
            fpr = float(flagged[real].mean()) if real.any() else 0.0
            tpr = float(flagged[ai].mean()) if ai.any() else None
            fprs[name] = fpr
            if real.any() and tpr is not None:
                balanced.append(0.5 * (1 - fpr + tpr))
        score = float(np.mean(balanced)) if balanced else 0.0
        if max_fpr is None or max(fprs.values()) <= max_fpr:
            if best is None or score > best[1]:
                best = (float(threshold), score, fprs)
        elif fallback is None or max(fprs.values()) < max(fallback[2].values()):
            fallback = (float(threshold), score, fprs)
    chosen = best or fallback
    assert chosen is not None
    threshold, score, fprs = chosen
    rates = ", ".join(f"{name} {fpr:.2%}" for name, fpr in fprs.items())
    rule = (f"among thresholds flagging at most {max_fpr:.1%} of each validation set's real images, "
            if max_fpr is not None else "")
    description = (f"{rule}maximises the mean balanced accuracy over the validation sets ({', '.join(names)}; "
                   f"each weighted equally; mean balanced accuracy {score:.4f}); real images flagged there: {rates}")
    if best is None:
        description += f"; NO threshold met the {max_fpr:.1%} bound, so the one with the lowest worst-set rate was taken"
    return threshold, description
