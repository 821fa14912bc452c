"""The report's four charts (matplotlib/seaborn), each as an embedded PNG data URI.

The distribution of prob_ai comes from every scored row; the confusion matrix, the ROC and
precision-recall curves and the reliability diagram only from the rows with a known true label
(audit.report._metrics). Embedded, not linked: the page stays one offline file and the PDF fetches nothing.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

from audit.report._metrics import LabelledMetrics, labelled_rows
from audit.verdicts import VERDICT_AI, VERDICT_REAL, VERDICT_UNCERTAIN


def report_charts(frame: pd.DataFrame, threshold: float | None, metrics: LabelledMetrics | None) -> dict[str, str]:
    """The charts the page shows, by name: the histogram always; the others with true labels
    (the ROC and PR curves only when both classes are present)."""
    charts = {"histogram": histogram_chart(frame, threshold)}
    if metrics is not None:
        charts["confusion"] = confusion_chart(metrics)
        charts["reliability"] = reliability_chart(frame)
        if metrics.roc_auc is not None:
            charts["roc_pr"] = roc_pr_chart(frame, metrics)
    return charts


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display, no GUI toolkit: the scan runs under cron
    import matplotlib.pyplot as plt

    return plt


def _figure_data_uri(figure) -> str:
    """A figure as an embedded PNG: the page stays one offline file, the PDF needs no fetch."""
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def histogram_chart(frame: pd.DataFrame, threshold: float | None) -> str:
    import seaborn as sns

    plt = _pyplot()
    scored = frame[frame["prob_ai"].notna() & frame["verdict"].isin([VERDICT_AI, VERDICT_REAL, VERDICT_UNCERTAIN])]
    verdicts = [v for v in (VERDICT_REAL, VERDICT_UNCERTAIN, VERDICT_AI)
                if v != VERDICT_UNCERTAIN or (scored["verdict"] == VERDICT_UNCERTAIN).any()]
    figure, axes = plt.subplots(figsize=(7.0, 2.8))
    if scored.empty:
        axes.text(0.5, 0.5, "no scored images", ha="center", va="center")
    else:
        sns.histplot(
            data=scored, x="prob_ai", hue="verdict", hue_order=verdicts,
            palette={VERDICT_REAL: "#4c72b0", VERDICT_UNCERTAIN: "#d4a017", VERDICT_AI: "#c44e52"}, bins=np.linspace(0, 1, 21),
            multiple="stack", ax=axes,
        )
        # A fixed place: matplotlib's "best" searches the bars for a free spot at every draw,
        # over a second on a large run. The middle top is where a detector's scores are fewest.
        sns.move_legend(axes, "upper center", fontsize=8, title_fontsize=8)
    if threshold is not None:
        axes.axvline(threshold, color="black", linestyle="--", linewidth=1)
        axes.annotate(f"threshold {threshold:.3f}", (threshold, 1), xycoords=("data", "axes fraction"),
                      xytext=(4, -12), textcoords="offset points", fontsize=8)
    axes.set_xlim(0, 1)
    axes.set_xlabel("probability of AI-generated (calibrated)")
    axes.set_ylabel("images")
    return _figure_data_uri(figure)


def confusion_chart(metrics: LabelledMetrics) -> str:
    import seaborn as sns

    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(7.0, 2.9))
    names = ["real", "AI-generated"]
    counts = np.array(metrics.matrix)
    rates = np.array([[np.nan if v is None else v for v in row] for row in metrics.rates], dtype=float)
    sns.heatmap(counts, annot=True, fmt="d", cmap="Blues", cbar=False, ax=left, xticklabels=names, yticklabels=names)
    sns.heatmap(rates, annot=True, fmt=".1%", cmap="Blues", vmin=0, vmax=1, cbar=False, ax=right,
                xticklabels=names, yticklabels=names)
    for axes, title in ((left, "counts"), (right, "rates (per true class)")):
        axes.set_xlabel("judged")
        axes.set_ylabel("true")
        axes.set_title(title)
    figure.tight_layout()
    return _figure_data_uri(figure)


def roc_pr_chart(frame: pd.DataFrame, metrics: LabelledMetrics) -> str:
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _pyplot()
    rows = labelled_rows(frame)
    is_ai = (rows["true_label"] == VERDICT_AI).to_numpy(dtype=int)
    prob_ai = rows["prob_ai"].to_numpy(dtype=np.float64)
    figure, (left, right) = plt.subplots(1, 2, figsize=(7.0, 3.2))
    false_positive_rate, true_positive_rate, _ = roc_curve(is_ai, prob_ai)
    left.plot(false_positive_rate, true_positive_rate, color="#c44e52", label=f"AUC {metrics.roc_auc:.4f}")
    left.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    left.set_xlabel("false positive rate")
    left.set_ylabel("true positive rate")
    left.set_title("ROC")
    left.legend(loc="lower right", fontsize=8)
    precision, recall, _ = precision_recall_curve(is_ai, prob_ai)
    right.plot(recall, precision, color="#4c72b0", label=f"AP (PR AUC) {metrics.average_precision:.4f}")
    right.axhline(is_ai.mean(), linestyle="--", color="grey", linewidth=1, label="chance")
    right.set_xlabel("recall")
    right.set_ylabel("precision")
    right.set_title("Precision-recall")
    right.set_ylim(0, 1.02)
    right.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    return _figure_data_uri(figure)


def reliability_chart(frame: pd.DataFrame, bins: int = 10) -> str:
    plt = _pyplot()
    rows = labelled_rows(frame)
    is_ai = (rows["true_label"] == VERDICT_AI).to_numpy(dtype=float)
    prob_ai = rows["prob_ai"].to_numpy(dtype=np.float64)
    which = np.clip((prob_ai * bins).astype(int), 0, bins - 1)
    mean_prob, fraction_ai, counts = [], [], []
    for b in range(bins):
        in_bin = which == b
        counts.append(int(in_bin.sum()))
        if in_bin.any():
            mean_prob.append(prob_ai[in_bin].mean())
            fraction_ai.append(is_ai[in_bin].mean())
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(4.2, 4.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    top.plot(mean_prob, fraction_ai, marker="o", color="#c44e52", label="this run")
    top.set_ylabel("fraction truly AI-generated")
    top.set_title("Reliability diagram")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar((np.arange(bins) + 0.5) / bins, counts, width=0.9 / bins, color="#8c8c8c")
    bottom.set_xlabel("predicted probability of AI-generated")
    bottom.set_ylabel("images")
    bottom.set_xlim(0, 1)
    figure.tight_layout()
    return _figure_data_uri(figure)
