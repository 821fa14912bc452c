"""Reading a run for the report: results.csv, summary.json and the model card -> the records
the page shows (counts, the model's facts, the all-results table).

Nothing is scored again: everything comes from the run's files. Archive strings are kept as
text; only the template (autoescape on) and the page's script put them on the page.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from audit.errors import UsageError
from audit.model import (
    LoadedModel,
    ModelCard,
    ModelError,
    ModelSummary,
    data_set_rows,
    gradcam_grid_of,
    input_description,
    load_model,
    read_card,
    summarize,
    training_rows,
)
from audit.review import review_state
from audit.rows import REVIEW_COLUMNS, unneutralise
from audit.summary import RunSummary, SummaryError, read_summary
from audit.verdicts import VERDICT_AI, VERDICT_REAL, VERDICT_UNCERTAIN

# The all-results table is data for the page's script; these columns, in this order.
TABLE_COLUMNS = ("path", "verdict", "prob_ai", "true_label", "status", "width", "height", "bytes", "sha256", "error", "note",
                 "verdict_reason", "evidence_source", "review")
# results.csv columns the report cannot do without (the others are filled in when absent).
REQUIRED_COLUMNS = ("path", "status", "verdict", "prob_ai", "threshold")
# A half-broken mount can make every file an error; listing 100,000 of them would stall the PDF
# renderer for no reader's benefit. results.csv holds them all.
MAX_ERRORS_LISTED = 500


class ReportError(UsageError):
    """The run folder cannot be reported on (no results.csv, broken summary.json)."""


# --------------------------------------------------------------------------- reading a run


def read_results(csv_path: Path) -> pd.DataFrame:
    """results.csv as a DataFrame: text columns un-neutralised, numbers as numbers.

    Missing optional columns (evidence, evidence_source, verdict_reason from the evidence
    stage, absent in older runs) are added empty so the rest of the report need not ask.
    """
    frame = _read_text_table(csv_path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ReportError(f"{csv_path} lacks the column(s) {', '.join(missing)}: not a results.csv of audit scan")
    for column in ("evidence", "evidence_source", "verdict_reason", "note", "error", "true_label", "sha256", "format", "root",
                   "model_id", *REVIEW_COLUMNS):
        if column not in frame.columns:
            frame[column] = ""
    for column in frame.columns:
        # Only the cells neutralise changed start with a quote: the others stay Arrow strings.
        quoted = frame[column].str.startswith("'")
        if quoted.any():
            frame[column] = frame[column].where(~quoted, frame[column][quoted].map(unneutralise))
    for column in ("prob_ai", "threshold", "bytes", "width", "height"):
        if column not in frame.columns:
            frame[column] = ""
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _read_text_table(csv_path: Path) -> pd.DataFrame:
    """Every cell of results.csv as text, read by pyarrow's CSV reader straight into Arrow
    strings, faster and with less memory than pandas' own reader (docs/performance.md). A file pyarrow refuses (a row of the wrong length, say) is read by
    pandas, which says what is wrong."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle), [])
        table = pa_csv.read_csv(csv_path, parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                                convert_options=pa_csv.ConvertOptions(
                                    column_types={name: pa.string() for name in header}, strings_can_be_null=False,
                                    quoted_strings_can_be_null=False))
        text = pd.StringDtype("pyarrow", na_value=float("nan"))
        frame = table.to_pandas(self_destruct=True, split_blocks=True, types_mapper={pa.string(): text}.get)
        del table
        pa.default_memory_pool().release_unused()  # the parse buffers, back to the system
        return frame
    except (pa.ArrowInvalid, UnicodeDecodeError, csv.Error):
        return pd.read_csv(csv_path, encoding="utf-8-sig", dtype=str, keep_default_na=False, na_filter=False)


@dataclass
class RunData:
    """What a run left on disk."""

    run_dir: Path
    results: pd.DataFrame
    summary: RunSummary

    @property
    def run_id(self) -> str:
        return self.run_dir.resolve().name

    @property
    def cwd(self) -> Path:
        """Where relative roots and model paths in the run's files start: the scan's working
        folder when summary.json records it, else this process's (run the report from there)."""
        return Path(self.summary.cwd or Path.cwd())

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
    summary = RunSummary(format_version="")
    if summary_path.is_file():
        try:
            summary = read_summary(summary_path)
        except SummaryError as exc:
            raise ReportError(str(exc)) from None
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
    candidate = run.summary.model.path
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


# --------------------------------------------------------------------------- counts


@dataclass(frozen=True)
class Counts:
    scanned: int
    ai_generated: int
    real: int
    errors: int
    # The flagged images by reviewers' decision (audit.review._decisions): not looked at or not settled,
    # confirmed as AI-generated, cleared as false positives (under this run's model).
    awaiting_review: int = 0
    confirmed: int = 0
    cleared: int = 0
    uncertain: int = 0  # the model cannot judge them: a person should look

    @classmethod
    def from_results(cls, frame: pd.DataFrame) -> "Counts":
        verdicts = frame["verdict"]
        # The four columns a state needs, not a sorted copy of every flagged row.
        flagged = frame.loc[(verdicts == VERDICT_AI) & (frame["status"] == "ok"),
                            ["verdict", "model_id", "review", "review_model_id"]]
        states = Counter(review_states(flagged))
        return cls(
            scanned=len(frame),
            ai_generated=int((verdicts == VERDICT_AI).sum()),
            real=int((verdicts == VERDICT_REAL).sum()),
            errors=int((frame["status"] != "ok").sum()),
            awaiting_review=states["awaiting"],
            confirmed=states["confirmed"],
            cleared=states["cleared"],
            uncertain=int((verdicts == VERDICT_UNCERTAIN).sum()),
        )


def review_states(frame: pd.DataFrame) -> list[str]:
    """Each row's place for the reviewers: awaiting, confirmed, cleared or not-flagged."""
    return [review_state(verdict, model_id, review, review_model)
            for verdict, model_id, review, review_model in
            zip(frame["verdict"], frame["model_id"], frame["review"], frame["review_model_id"])]


def flagged_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Every flagged image, most confident first (ties in discovery order)."""
    # The order from the one column, then one copy of the rows (not a copy filtered, then sorted).
    scores = frame.loc[(frame["verdict"] == VERDICT_AI) & (frame["status"] == "ok"), "prob_ai"]
    return frame.loc[scores.sort_values(ascending=False, kind="stable").index]


def uncertain_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Every uncertain image, the most likely AI-generated first (ties in discovery order)."""
    uncertain = frame[(frame["verdict"] == VERDICT_UNCERTAIN) & (frame["status"] == "ok")]
    return uncertain.sort_values("prob_ai", ascending=False, kind="stable")


def run_threshold(run: RunData, facts: "ModelFacts") -> float | None:
    """The threshold the run judged by: summary.json's, else the model's, else results.csv's."""
    threshold = run.summary.threshold if run.summary.threshold is not None else facts.threshold
    if threshold is None and run.results["threshold"].notna().any():
        threshold = float(run.results["threshold"].dropna().iloc[0])
    return threshold


def listed_errors(frame: pd.DataFrame) -> tuple[list[tuple[str, str]], int]:
    """The first MAX_ERRORS_LISTED unreadable files as (path, error), and how many there are."""
    errors = frame[frame["status"] != "ok"]
    listed = [(str(path), str(error) or "unknown error")
              for path, error in zip(errors["path"][:MAX_ERRORS_LISTED], errors["error"][:MAX_ERRORS_LISTED])]
    return listed, len(errors)


# --------------------------------------------------------------------------- the model and the table


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


def model_facts(summary: RunSummary, card: ModelCard | None, model: LoadedModel | None = None) -> ModelFacts:
    """The model as the run recorded it, completed from its card when that can be read."""
    recorded = summary.model
    official = (card.test_metrics.get("official_test") or {}) if card else {}
    return ModelFacts(
        name=str(recorded.name or (card.name if card else "unknown")),
        model_id=str(recorded.id or (card.model_id if card else "")),
        sha256=str(recorded.sha256 or (card.weights_sha256 if card else "")),
        variant=str(recorded.variant or (card.variant if card else "")),
        threshold=recorded.threshold if recorded.threshold is not None else (card.threshold if card else None),
        threshold_method=str(recorded.threshold_method or (card.threshold_method if card else "")),
        temperature=recorded.temperature if recorded.temperature is not None else (card.temperature if card else None),
        test_accuracy=official.get("accuracy"),
        test_metrics={k: v for k, v in (card.test_metrics if card else {}).items() if k != "robustness_official_test"},
        robustness=(card.test_metrics.get("robustness_official_test") or {}) if card else {},
        training=dict(card.training) if card else {},
        notes=tuple(card.notes) if card else (),
        input_size=card.preprocessing.input_size if card else None,
        gradcam_layer=card.gradcam_layer if card else "",
        gradcam_grid=_gradcam_grid(card, model),
        input_policy=input_description(card) if card else "",
        readable=summarize(card) if card else None,
        training_rows=training_rows(card.training) if card else [],
        data_sets=data_set_rows(card.training) if card else [],
    )


def _gradcam_grid(card: ModelCard | None, model: LoadedModel | None) -> tuple[int, int] | None:
    known = gradcam_grid_of(card) if card is not None else None
    if known is not None or model is None:
        return known
    from audit.report._explain import gradcam_grid

    return gradcam_grid(model)


# The page's table holds the rows a reviewer acts on (errors, uncertain, flagged; at most
# MAX_ACTED_TABLE_ROWS, in that order of priority) and at most MAX_OTHER_TABLE_ROWS others, so the
# page stays small enough to mail and open; results.csv/xlsx hold every row.
MAX_ACTED_TABLE_ROWS = 100_000
MAX_OTHER_TABLE_ROWS = 2_000
# Verdicts a reviewer acts on; "uncertain" matched as text (a verdict not every model gives).
_ACTED_VERDICTS = (VERDICT_AI, "uncertain")


@dataclass(frozen=True)
class TableRows:
    """The rows the page's table holds, and how many of the run's it left out."""

    records: list[list[Any]]
    total: int  # rows in results.csv

    @property
    def left_out(self) -> int:
        return self.total - len(self.records)


def table_rows(frame: pd.DataFrame, max_acted: int | None = None, max_others: int | None = None) -> TableRows:
    """The page's table, in discovery order: the rows a reviewer acts on (errors first, then
    uncertain, then flagged, most confident first, up to ``max_acted``) and the first
    ``max_others`` of the rest (by default the module's bounds, read at the call)."""
    max_acted = MAX_ACTED_TABLE_ROWS if max_acted is None else max_acted
    max_others = MAX_OTHER_TABLE_ROWS if max_others is None else max_others
    errors = frame["status"] != "ok"
    uncertain = ~errors & (frame["verdict"] == "uncertain")
    flagged = ~errors & (frame["verdict"] == VERDICT_AI)
    acted = errors | uncertain | flagged
    priority = pd.Series(3, index=frame.index).mask(flagged, 2).mask(uncertain, 1).mask(errors, 0)
    ordered = pd.DataFrame({"priority": priority[acted], "prob": -frame["prob_ai"][acted].fillna(0)})
    chosen = ordered.sort_values(["priority", "prob"], kind="stable").index[:max_acted]
    others = frame.index[~acted][:max_others]
    kept = frame.loc[frame.index.isin(chosen.union(others))]
    return TableRows(table_records(kept), len(frame))


def table_records(frame: pd.DataFrame) -> list[list[Any]]:
    """The rows of ``frame`` for the page's sortable table, as JSON-ready lists in TABLE_COLUMNS order."""
    # Column by column as Python lists: pyarrow-backed text cells read one row at a time (itertuples) are slow.
    columns = [_table_column(frame[column].tolist() if column in frame.columns else [""] * len(frame), column)
               for column in TABLE_COLUMNS]
    return [list(values) for values in zip(*columns)]


def _table_column(values: list[Any], column: str) -> list[Any]:
    if column == "sha256":
        return [str(value)[:16] for value in values]
    return [(None if math.isnan(value) else (round(value, 6) if column == "prob_ai" else int(value)))
            if isinstance(value, float) else value for value in values]
