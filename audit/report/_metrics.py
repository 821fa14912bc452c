"""The metrics of a labelled run: confusion, precision/recall, ROC/PR AUC and calibration.

One expected calibration error serves both the model card (training/metrics.py computes the
card's figures with it) and the report, so the two documents can never print two different
"ECE" for the same predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from audit.verdicts import VERDICT_AI, VERDICT_REAL

if TYPE_CHECKING:  # only a type here: training imports this module without pandas
    import pandas as pd

ECE_BINS = 15


def expected_calibration_error(prob_ai: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE with equal-width confidence bins.

    The confidence of a prediction is max(p, 1 - p) and it is right when the class with that
    probability is the true one; ECE is the bin-weighted gap between confidence and accuracy.
    """
    prob_ai = np.asarray(prob_ai, dtype=np.float64)
    labels = np.asarray(labels)
    predicted = (prob_ai >= 0.5).astype(int)
    confidence = np.where(predicted == 1, prob_ai, 1.0 - prob_ai)
    correct = (predicted == labels).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
    # Confidence lies in [0.5, 1]; the last bin is closed on the right.
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.mean() * abs(confidence[in_bin].mean() - correct[in_bin].mean())
    return float(total)


@dataclass(frozen=True)
class LabelledMetrics:
    """Metrics over the scored files whose true label is known; "ai-generated" is positive."""

    count: int
    true_negative: int  # real, judged real
    false_positive: int  # real, judged AI-generated
    false_negative: int  # AI-generated, judged real
    true_positive: int  # AI-generated, judged AI-generated
    accuracy: float
    precision: float
    recall: float
    f1: float
    roc_auc: float | None  # None when only one class is present
    average_precision: float | None
    expected_calibration_error: float

    @property
    def matrix(self) -> list[list[int]]:
        """Rows: true real, true AI-generated; columns: judged real, judged AI-generated."""
        return [[self.true_negative, self.false_positive], [self.false_negative, self.true_positive]]

    @property
    def rates(self) -> list[list[float | None]]:
        """Each row of the matrix divided by its total (None for an empty row)."""
        return [[cell / sum(row) if sum(row) else None for cell in row] for row in self.matrix]


def labelled_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows the metrics are over: scored, with a known true label."""
    known = frame["true_label"].isin([VERDICT_AI, VERDICT_REAL])
    scored = (frame["status"] == "ok") & frame["verdict"].isin([VERDICT_AI, VERDICT_REAL]) & frame["prob_ai"].notna()
    return frame[known & scored]


def compute_metrics(frame: pd.DataFrame) -> LabelledMetrics | None:
    """From results.csv's own columns: true_label against the scan's verdict (and prob_ai)."""
    rows = labelled_rows(frame)
    if rows.empty:  # before importing scikit-learn (slow to import): most archives have no labels
        return None
    from sklearn.metrics import (
        average_precision_score,
        confusion_matrix,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    is_ai = (rows["true_label"] == VERDICT_AI).to_numpy(dtype=int)
    judged_ai = (rows["verdict"] == VERDICT_AI).to_numpy(dtype=int)
    prob_ai = rows["prob_ai"].to_numpy(dtype=np.float64)
    (tn, fp), (fn, tp) = confusion_matrix(is_ai, judged_ai, labels=[0, 1])
    precision, recall, f1, _ = precision_recall_fscore_support(
        is_ai, judged_ai, labels=[1], average="binary", zero_division=0
    )
    both_classes = 0 < is_ai.sum() < len(is_ai)
    return LabelledMetrics(
        count=len(rows),
        true_negative=int(tn),
        false_positive=int(fp),
        false_negative=int(fn),
        true_positive=int(tp),
        accuracy=float((tp + tn) / len(rows)),
        precision=float(precision),
        recall=float(recall),
        f1=float(f1),
        roc_auc=float(roc_auc_score(is_ai, prob_ai)) if both_classes else None,
        average_precision=float(average_precision_score(is_ai, prob_ai)) if both_classes else None,
        expected_calibration_error=expected_calibration_error(prob_ai, is_ai),
    )
