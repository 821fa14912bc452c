"""The report stage: a run's results.csv + summary.json (+ the model card) -> report.html, report.pdf.

Nothing is scored again: the counts, metrics and charts come from the run's files. Only the
Grad-CAM of the flagged images shown in the gallery needs the model and the image files, and an
image that has gone or changed since the scan is said so in its gallery card.

Security: every string from the archive (file names, errors, metadata evidence) reaches the page
only through jinja2 with autoescape on, or through ``textContent`` in the page's script; file
names on disk are never derived from archive strings; WeasyPrint's fetcher refuses every URL
except ``data:`` and ``file:`` under the run folder, so the PDF renderer fetches nothing else.
"""

from __future__ import annotations

import base64
import io
import json
import math
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import numpy as np
import pandas as pd

import audit
from audit.errors import UsageError
from audit.atomic import atomic_path, write_text
from audit.explain import GradCamExplainer, Explanation, gradcam_grid
from audit.pictures import THUMBNAIL_SIZE, save_image
from audit.heatmap_cache import HeatmapCache
from audit.metrics import LabelledMetrics, compute_metrics, labelled_rows
from audit.model import LoadedModel, ModelCard, ModelError, load_model, read_card
from audit.model_summary import ModelSummary, data_set_rows, summarize, training_rows
from audit.report_page import TEMPLATE_DIR, options_list, render_page, swap_in_folder, template_environment  # noqa: F401 - the report's interface
from audit.results import REVIEW_COLUMNS, unneutralise
from audit.review import cleared_under_other_model, review_state
from audit.verdicts import VERDICT_AI, VERDICT_REAL

DEFAULT_MAX_GALLERY = 200
# The all-results table is data for the page's script; these columns, in this order.
TABLE_COLUMNS = ("path", "verdict", "prob_ai", "true_label", "status", "width", "height", "bytes", "sha256", "error", "note",
                 "verdict_reason", "evidence_source", "review")
# results.csv columns the report cannot do without (the others are filled in when absent).
REQUIRED_COLUMNS = ("path", "status", "verdict", "prob_ai", "threshold")
# Evidence text comes from file metadata: bounded before it reaches the page.
MAX_EVIDENCE_LINES = 8
MAX_EVIDENCE_CHARS = 300
# The scan neutralises cells that a spreadsheet would run (see audit/results.py).


class ReportError(UsageError):
    """The run folder cannot be reported on (no results.csv, broken summary.json)."""


# --------------------------------------------------------------------------- reading a run


def read_results(csv_path: Path) -> pd.DataFrame:
    """results.csv as a DataFrame: text columns un-neutralised, numbers as numbers.

    Missing optional columns (evidence, evidence_source, verdict_reason from the evidence
    stage, absent in older runs) are added empty so the rest of the report need not ask.
    """
    frame = pd.read_csv(csv_path, encoding="utf-8-sig", dtype=str, keep_default_na=False, na_filter=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ReportError(f"{csv_path} lacks the column(s) {', '.join(missing)}: not a results.csv of audit scan")
    for column in ("evidence", "evidence_source", "verdict_reason", "note", "error", "true_label", "sha256", "format", "root",
                   "model_id", *REVIEW_COLUMNS):
        if column not in frame.columns:
            frame[column] = ""
    for column in frame.columns:
        frame[column] = frame[column].map(unneutralise)
    for column in ("prob_ai", "threshold", "bytes", "width", "height"):
        if column not in frame.columns:
            frame[column] = ""
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


@dataclass
class RunData:
    """What a run left on disk."""

    run_dir: Path
    results: pd.DataFrame
    summary: dict[str, Any]

    @property
    def run_id(self) -> str:
        return self.run_dir.resolve().name

    @property
    def cwd(self) -> Path:
        """Where relative roots and model paths in the run's files start: the scan's working
        folder when summary.json records it, else this process's (run the report from there)."""
        return Path(self.summary.get("cwd") or Path.cwd())

    def image_path(self, row: pd.Series) -> Path | None:
        """root/path of a row; None for a path that climbs out of its root (a tampered CSV)."""
        root = Path(str(row.get("root", "")))
        if not root.is_absolute():
            root = self.cwd / root
        relative = Path(str(row["path"]))
        if relative.is_absolute() or ".." in relative.parts:
            return None
        return root / relative


def read_run(run_dir: Path) -> RunData:
    csv_path = run_dir / "results.csv"
    if not csv_path.is_file():
        raise ReportError(f"{run_dir} holds no results.csv: not a finished run folder")
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] = {}
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ReportError(f"{summary_path} is not valid JSON: {exc}") from None
    return RunData(run_dir=run_dir, results=read_results(csv_path), summary=summary)


def resolve_model(run: RunData, model: LoadedModel | str | Path | None) -> tuple[LoadedModel | None, ModelCard | None, str]:
    """The run's model (for Grad-CAM and its card), or why it is not available.

    A model given by the caller wins, and must load (ModelError otherwise). Else the path in
    summary.json: if that one is gone, the report still renders; the gallery then shows the
    images without heatmaps and says why.
    """
    if isinstance(model, LoadedModel):
        return model, model.card, ""
    if model is not None:
        loaded = load_model(model)
        return loaded, loaded.card, ""
    candidate = (run.summary.get("model") or {}).get("path")
    if not candidate:
        return None, None, "summary.json names no model file"
    path = Path(candidate)
    if not path.is_absolute():
        path = run.cwd / path
    try:
        loaded = load_model(path)
    except ModelError as exc:
        try:
            card = read_card(path)
        except ModelError:
            card = None
        return None, card, str(exc)
    return loaded, loaded.card, ""


# --------------------------------------------------------------------------- numbers


@dataclass(frozen=True)
class Counts:
    scanned: int
    ai_generated: int
    real: int
    errors: int
    # The flagged images by reviewers' decision (audit.review): not looked at or not settled,
    # confirmed as AI-generated, cleared as false positives (under this run's model).
    awaiting_review: int = 0
    confirmed: int = 0
    cleared: int = 0

    @classmethod
    def from_results(cls, frame: pd.DataFrame) -> "Counts":
        verdicts = frame["verdict"]
        states = Counter(review_states(flagged_rows(frame)))
        return cls(
            scanned=len(frame),
            ai_generated=int((verdicts == VERDICT_AI).sum()),
            real=int((verdicts == VERDICT_REAL).sum()),
            errors=int((frame["status"] != "ok").sum()),
            awaiting_review=states["awaiting"],
            confirmed=states["confirmed"],
            cleared=states["cleared"],
        )


def review_states(frame: pd.DataFrame) -> list[str]:
    """Each row's place for the reviewers: awaiting, confirmed, cleared or not-flagged."""
    return [review_state(verdict, model_id, review, review_model)
            for verdict, model_id, review, review_model in
            zip(frame["verdict"], frame["model_id"], frame["review"], frame["review_model_id"])]


# --------------------------------------------------------------------------- charts


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
    scored = frame[frame["prob_ai"].notna() & frame["verdict"].isin([VERDICT_AI, VERDICT_REAL])]
    figure, axes = plt.subplots(figsize=(7.0, 2.8))
    if scored.empty:
        axes.text(0.5, 0.5, "no scored images", ha="center", va="center")
    else:
        sns.histplot(
            data=scored, x="prob_ai", hue="verdict", hue_order=[VERDICT_REAL, VERDICT_AI],
            palette={VERDICT_REAL: "#4c72b0", VERDICT_AI: "#c44e52"}, bins=np.linspace(0, 1, 21),
            multiple="stack", ax=axes,
        )
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


# --------------------------------------------------------------------------- gallery


@dataclass(frozen=True)
class GalleryItem:
    rank: int
    path: str  # as in results.csv (relative to its root); shown escaped
    root: str
    prob_ai: float
    width: int | None
    height: int | None
    n_bytes: int | None
    sha256_prefix: str
    true_label: str
    evidence_lines: tuple[str, ...]
    evidence_source: str
    threshold: float | None  # the model's threshold, shown beside its score
    verdict_reason: str  # "model", or the declaration of AI generation that flagged the image
    original_src: str | None  # relative URL under heatmaps/, None when not available
    overlay_src: str | None
    problem: str = ""  # why there is no heatmap, or that the file changed since the scan
    review: ReviewFacts | None = None  # the decision recorded on these bytes, if any


@dataclass(frozen=True)
class ReviewFacts:
    """A reviewer's decision as the page shows it, and what its buttons export."""

    sha256: str
    model_id: str  # the model of this run (what the reviewer sees now)
    prob_ai: float | None
    decision: str = ""  # confirmed-ai | false-positive | unsure | "" (none yet)
    note: str = ""
    by: str = ""
    at: str = ""
    cleared_under: str = ""  # the other model under which it was cleared; this one flags it again


@dataclass(frozen=True)
class DecidedItem:
    """A flagged image that reviewers confirmed or cleared: one line, after the cards."""

    path: str
    prob_ai: float
    review: ReviewFacts


def review_facts(row: pd.Series) -> ReviewFacts:
    verdict, model_id = str(row.get("verdict", "")), str(row.get("model_id", ""))
    decision, decided_model = str(row.get("review", "")), str(row.get("review_model_id", ""))
    return ReviewFacts(
        sha256=str(row.get("sha256", "")), model_id=model_id, prob_ai=_float_or_none(row.get("prob_ai")),
        decision=decision, note=str(row.get("review_note", "")), by=str(row.get("reviewed_by", "")),
        at=str(row.get("reviewed_at", "")),
        cleared_under=decided_model if cleared_under_other_model(verdict, model_id, decision, decided_model) else "",
    )


# The decided images listed after the cards; results.csv (and `audit review list`) has them all.
MAX_DECIDED_LISTED = 500


def decided_items(frame: pd.DataFrame) -> tuple[list[DecidedItem], int]:
    """The flagged images reviewers confirmed or cleared, confirmed first, most confident first."""
    flagged = flagged_rows(frame)
    states = pd.Series(review_states(flagged), index=flagged.index, dtype=object)
    decided = pd.concat([flagged[states == "confirmed"], flagged[states == "cleared"]])
    items = [DecidedItem(path=str(row["path"]), prob_ai=float(row["prob_ai"]), review=review_facts(row))
             for _, row in decided.head(MAX_DECIDED_LISTED).iterrows()]
    return items, len(decided)


def evidence_lines(text: str) -> tuple[str, ...]:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    kept = [line if len(line) <= MAX_EVIDENCE_CHARS else line[: MAX_EVIDENCE_CHARS - 1] + "…" for line in lines]
    if len(kept) > MAX_EVIDENCE_LINES:
        kept = kept[:MAX_EVIDENCE_LINES] + [f"(+{len(kept) - MAX_EVIDENCE_LINES} more lines in results.csv)"]
    return tuple(kept)


def flagged_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Every flagged image, most confident first (ties in discovery order)."""
    flagged = frame[(frame["verdict"] == VERDICT_AI) & (frame["status"] == "ok")]
    return flagged.sort_values("prob_ai", ascending=False, kind="stable")


def _float_or_none(value: Any) -> float | None:
    return None if value is None or value == "" or (isinstance(value, float) and math.isnan(value)) else float(value)


def _int_or_none(value: Any) -> int | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else int(value)


def write_gallery_images(result: Explanation, heatmap_dir: Path, stem: str) -> tuple[str, str]:
    """Write the thumbnail and the overlay; return their URLs relative to the report.

    A small image enlarged to the thumbnail is blocks of repeated pixels: PNG keeps them exact
    and small. A reduced photo, and every overlay (smooth colours), are JPEG: a third of the
    PNG's size, which is what keeps a 200-image PDF at a few MB.
    """
    original_format, original_suffix = ("PNG", "png") if result.enlarged else ("JPEG", "jpg")
    original = save_image(result.thumbnail, heatmap_dir / f"{stem}-original.{original_suffix}", original_format)
    overlay = save_image(result.overlay, heatmap_dir / f"{stem}-gradcam.jpg", "JPEG")
    return f"heatmaps/{original.name}", f"heatmaps/{overlay.name}"


def build_gallery(
    run: RunData, model: LoadedModel | None, model_problem: str, heatmap_dir: Path, max_gallery: int,
    heatmap_cache: HeatmapCache | None = None,
) -> tuple[list[GalleryItem], int]:
    """Write thumbnails and Grad-CAM overlays of the flagged images; return the gallery items.

    Images are explained in batches as they stream by, so memory does not grow with the
    gallery. Output names are the rank only: nothing from the archive names a file on disk.
    """
    flagged = flagged_rows(run.results)
    # Cards for the images that still need a reviewer; decided ones are listed compactly after.
    awaiting = flagged[[state == "awaiting" for state in review_states(flagged)]]
    shown = awaiting.head(max(0, max_gallery))
    rows = list(shown.iterrows())
    paths = {index: run.image_path(row) for index, (_, row) in enumerate(rows)}
    # index -> (sha256, original URL, overlay URL), or why there is no picture
    explained: dict[int, tuple[str, str, str] | str] = {
        index: "its path leads outside its archive root" for index, path in paths.items() if path is None
    }
    readable = [(index, path) for index, path in paths.items() if path is not None]
    if model is not None and readable:
        with GradCamExplainer(model) as explainer:
            results = explainer.explain_paths([path for _, path in readable], THUMBNAIL_SIZE, heatmap_cache)
            for (index, _), result in zip(readable, results):
                if isinstance(result, Explanation):
                    explained[index] = (result.sha256, *write_gallery_images(result, heatmap_dir, f"g{index + 1:04d}"))
                else:
                    explained[index] = result.error
    items = []
    for index, (_, row) in enumerate(rows):
        sha256 = str(row.get("sha256", ""))
        outcome = explained.get(index)
        original = overlay = None
        if model is None:
            problem = f"no Grad-CAM: the model is not available ({model_problem})"
        elif isinstance(outcome, str):
            problem = f"no Grad-CAM: the file cannot be read now ({outcome})"
        else:
            judged_sha256, original, overlay = outcome
            problem = "" if judged_sha256 == sha256 or not sha256 else "the file has changed since the scan (sha256 differs)"
        items.append(
            GalleryItem(
                rank=index + 1,
                path=str(row["path"]),
                root=str(row.get("root", "")),
                prob_ai=float(row["prob_ai"]),
                width=_int_or_none(row.get("width")),
                height=_int_or_none(row.get("height")),
                n_bytes=_int_or_none(row.get("bytes")),
                sha256_prefix=sha256[:16],
                true_label=str(row.get("true_label", "")),
                evidence_lines=evidence_lines(row.get("evidence", "")),
                evidence_source=str(row.get("evidence_source", "")),
                threshold=_float_or_none(row.get("threshold")),
                verdict_reason=str(row.get("verdict_reason", "")),
                original_src=original,
                overlay_src=overlay,
                problem=problem,
                review=review_facts(row),
            )
        )
    return items, len(flagged)


# --------------------------------------------------------------------------- the page


@dataclass(frozen=True)
class ModelFacts:
    name: str
    model_id: str
    sha256: str
    variant: str
    threshold: float | None
    threshold_method: str
    temperature: float | None
    test_accuracy: float | None  # None: "not yet evaluated"
    test_metrics: dict[str, Any] = field(default_factory=dict)
    robustness: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    input_size: int | None = None
    gradcam_layer: str = ""
    gradcam_grid: tuple[int, int] | None = None  # (rows, columns) of the map, when the model loads
    input_policy: str = ""
    readable: ModelSummary | None = None  # the card's figures per data set, and the weak sources
    training_rows: list[tuple[str, str]] = field(default_factory=list)
    data_sets: list[dict[str, Any]] = field(default_factory=list)


def model_facts(summary: dict[str, Any], card: ModelCard | None, model: LoadedModel | None = None) -> ModelFacts:
    """The model as the run recorded it, completed from its card when that can be read."""
    recorded = summary.get("model") or {}
    official = (card.test_metrics.get("official_test") or {}) if card else {}
    return ModelFacts(
        name=str(recorded.get("name") or (card.name if card else "unknown")),
        model_id=str(recorded.get("id") or (card.model_id if card else "")),
        sha256=str(recorded.get("sha256") or (card.weights_sha256 if card else "")),
        variant=str(recorded.get("variant") or (card.variant if card else "")),
        threshold=recorded.get("threshold", card.threshold if card else None),
        threshold_method=str(recorded.get("threshold_method") or (card.threshold_method if card else "")),
        temperature=recorded.get("temperature", card.temperature if card else None),
        test_accuracy=official.get("accuracy"),
        test_metrics={k: v for k, v in (card.test_metrics if card else {}).items() if k != "robustness_official_test"},
        robustness=(card.test_metrics.get("robustness_official_test") or {}) if card else {},
        training=dict(card.training) if card else {},
        notes=tuple(card.notes) if card else (),
        input_size=card.preprocessing.input_size if card else None,
        gradcam_layer=card.gradcam_layer if card else "",
        gradcam_grid=gradcam_grid(model) if model is not None else None,
        input_policy=card.preprocessing.describe() if card else "",
        readable=summarize(card) if card else None,
        training_rows=training_rows(card.training) if card else [],
        data_sets=data_set_rows(card.training) if card else [],
    )


def table_records(frame: pd.DataFrame) -> list[list[Any]]:
    """All rows for the page's sortable table, as JSON-ready lists in TABLE_COLUMNS order."""
    records = []
    for row in frame.itertuples(index=False):
        values = row._asdict()
        record = []
        for column in TABLE_COLUMNS:
            value = values.get(column, "")
            if column == "sha256":
                value = str(value)[:16]
            if isinstance(value, float):
                value = None if math.isnan(value) else (round(value, 6) if column == "prob_ai" else int(value))
            record.append(value)
        records.append(record)
    return records


@dataclass
class ReportContent:
    """Everything the template shows; built once, rendered for the page and for the PDF."""

    run_id: str
    generated_at: str
    started_at: str
    finished_at: str
    roots: list[str]
    counts: Counts
    flagged_total: int
    model: ModelFacts
    threshold: float | None
    tool_version: str
    report_tool_version: str
    options: list[tuple[str, str]]
    labelled: int
    metrics: LabelledMetrics | None
    charts: dict[str, str]
    gallery: list[GalleryItem]
    max_gallery: int
    errors: list[tuple[str, str]]  # the first MAX_ERRORS_LISTED
    errors_total: int
    table: list[list[Any]]
    table_columns: tuple[str, ...] = TABLE_COLUMNS
    # summary.json's "changes" (audit.store): what is new since the last run on the store; None
    # for a run folder written before the run store existed.
    changes: dict[str, Any] | None = None
    # summary.json's "store": the run store's path, this run's id in it and how it was chosen.
    store: dict[str, Any] | None = None
    # An unchanged night (audit.report_reuse): the run whose pages follow this front, copied.
    copied_from: dict[str, Any] | None = None
    decided: list[DecidedItem] = field(default_factory=list)  # the first MAX_DECIDED_LISTED
    decided_total: int = 0


# A half-broken mount can make every file an error; listing 100,000 of them would stall the PDF
# renderer for no reader's benefit. results.csv holds them all.
MAX_ERRORS_LISTED = 500


def build_content(run: RunData, model: LoadedModel | None, card: ModelCard | None, model_problem: str,
                  heatmap_dir: Path, max_gallery: int, seconds: dict[str, float] | None = None,
                  heatmap_cache: HeatmapCache | None = None) -> ReportContent:
    """Compute everything the page shows; ``seconds`` receives the time of the costly parts."""
    seconds = {} if seconds is None else seconds
    started = time.perf_counter()
    frame = run.results
    summary = run.summary
    facts = model_facts(summary, card, model)
    threshold = summary.get("threshold", facts.threshold)
    if threshold is None and frame["threshold"].notna().any():
        threshold = float(frame["threshold"].dropna().iloc[0])
    metrics = compute_metrics(frame)
    charts = {"histogram": histogram_chart(frame, threshold)}
    if metrics is not None:
        charts["confusion"] = confusion_chart(metrics)
        charts["reliability"] = reliability_chart(frame)
        if metrics.roc_auc is not None:
            charts["roc_pr"] = roc_pr_chart(frame, metrics)
    seconds["metrics_and_charts"] = time.perf_counter() - started
    started = time.perf_counter()
    gallery, flagged_total = build_gallery(run, model, model_problem, heatmap_dir, max_gallery, heatmap_cache)
    seconds["gallery_gradcam"] = time.perf_counter() - started
    decided, decided_total = decided_items(frame)
    errors = frame[frame["status"] != "ok"]
    roots = list((summary.get("options") or {}).get("archives") or sorted(set(frame["root"])))
    tool = summary.get("tool") or {}
    return ReportContent(
        run_id=run.run_id,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        started_at=str(summary.get("started_at", "unknown")),
        finished_at=str(summary.get("finished_at", "unknown")),
        roots=[str(root) for root in roots],
        counts=Counts.from_results(frame),
        flagged_total=flagged_total,
        model=facts,
        threshold=threshold,
        tool_version=str(tool.get("version", "unknown")),
        report_tool_version=audit.__version__,
        options=options_list(summary),
        labelled=metrics.count if metrics else 0,
        metrics=metrics,
        charts=charts,
        gallery=gallery,
        max_gallery=max_gallery,
        errors=[
            (str(path), str(error) or "unknown error")
            for path, error in zip(errors["path"][:MAX_ERRORS_LISTED], errors["error"][:MAX_ERRORS_LISTED])
        ],
        errors_total=len(errors),
        table=table_records(frame),
        changes=summary.get("changes"),
        store=summary.get("store"),
        decided=decided,
        decided_total=decided_total,
    )


# --------------------------------------------------------------------------- PDF


def run_files_fetcher(run_dir: Path):
    """A WeasyPrint URL fetcher that serves data: URIs and files under ``run_dir``, nothing else.

    Refused URLs are kept in ``.refused`` (the tests read it). Symlinks are resolved first, so
    a link inside the run folder cannot point the renderer at another file.
    """
    from weasyprint.urls import URLFetcher

    allowed_root = run_dir.resolve()

    class RunFilesFetcher(URLFetcher):
        def __init__(self) -> None:
            super().__init__(allowed_protocols=("data", "file"), allow_redirects=False, timeout=5)
            self.refused: list[str] = []
            self.fetched: list[str] = []

        def fetch(self, url: str, headers: Any = None):
            scheme = urlsplit(url).scheme.lower()
            if scheme == "data":
                return super().fetch(url, headers)
            if scheme == "file":
                parts = urlsplit(url)
                local = Path(url2pathname(unquote(parts.path))).resolve()
                if parts.netloc in ("", "localhost") and local.is_relative_to(allowed_root) and local.is_file():
                    self.fetched.append(url)
                    return super().fetch(local.as_uri(), headers)
            self.refused.append(url)
            raise ValueError(f"refused to fetch {url!r}: the report only reads its own run folder")

    return RunFilesFetcher()


def write_pdf(html: str, run_dir: Path, pdf_path: Path, fetcher: Any = None) -> Any:
    """Render the print page to ``pdf_path`` (temporary name, then rename); return the fetcher."""
    from weasyprint import HTML

    fetcher = fetcher or run_files_fetcher(run_dir)
    document = HTML(string=html, base_url=run_dir.resolve().as_uri() + "/", url_fetcher=fetcher).render()
    # Pages before the body (the charts section starts a page): what an unchanged night renders
    # again (audit.report_reuse).
    fetcher.front_pages = next((index for index, page in enumerate(document.pages) if "charts" in page.anchors), None)
    with atomic_path(pdf_path) as temporary:
        document.write_pdf(temporary)
    return fetcher


# --------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class RenderedReport:
    html_path: Path
    pdf_path: Path
    refused_urls: tuple[str, ...]  # URLs the PDF renderer asked for and was refused
    seconds: dict[str, float]  # read, metrics_and_charts, gallery_gradcam, html, pdf, total
    front_pages: int | None = None  # PDF pages before the charts
    content: ReportContent | None = None


def render_report_files(
    run_dir: str | Path, model: LoadedModel | str | Path | None = None, max_gallery: int = DEFAULT_MAX_GALLERY,
    heatmap_cache: HeatmapCache | None = None,
) -> RenderedReport:
    """Render report.html, report.pdf and heatmaps/ into the run folder from its results. With
    ``heatmap_cache`` (the run store's), Grad-CAM runs only for images it has no map of yet."""
    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    loaded, card, model_problem = resolve_model(run, model)
    seconds["read"] = time.perf_counter() - clock
    new_heatmaps = run_dir / "heatmaps.tmp"
    shutil.rmtree(new_heatmaps, ignore_errors=True)
    new_heatmaps.mkdir(parents=True)
    try:
        content = build_content(run, loaded, card, model_problem, new_heatmaps, max_gallery, seconds, heatmap_cache)
        swap_in_folder(new_heatmaps, run_dir / "heatmaps")
    except BaseException:
        shutil.rmtree(new_heatmaps, ignore_errors=True)
        raise
    html_path, pdf_path = run_dir / "report.html", run_dir / "report.pdf"
    started = time.perf_counter()
    write_text(html_path, render_page(content, "html"))
    seconds["html"] = time.perf_counter() - started
    started = time.perf_counter()
    fetcher = write_pdf(render_page(content, "pdf"), run_dir, pdf_path)
    seconds["pdf"] = time.perf_counter() - started
    seconds["total"] = time.perf_counter() - clock
    return RenderedReport(html_path, pdf_path, tuple(fetcher.refused), {k: round(v, 3) for k, v in seconds.items()},
                          getattr(fetcher, "front_pages", None), content)


def render_report(
    run_dir: str | Path, model: LoadedModel | str | Path | None = None, max_gallery: int = DEFAULT_MAX_GALLERY,
    heatmap_cache: HeatmapCache | None = None,
) -> tuple[Path, Path]:
    """The report stage's interface: (report.html, report.pdf) written into ``run_dir``."""
    rendered = render_report_files(run_dir, model, max_gallery, heatmap_cache)
    return rendered.html_path, rendered.pdf_path
