"""The report stage: a run's results.csv + summary.json (+ the model card) -> report.html, report.pdf.

Nothing is scored again: the counts, metrics and charts come from the run's files. Only the
Grad-CAM of the flagged images shown in the gallery needs the model and the image files, and an
image that has gone or changed since the scan is said so in its gallery card.

The stages, in the order build_content runs them: audit.report._data reads the run (results.csv,
summary.json, the model card); audit.report._metrics computes the labelled metrics; audit.report._charts draws
the charts; audit.report._gallery explains the flagged images. This module puts their records together
and renders them (audit.report._page) into report.html and, through a restricted fetcher,
report.pdf.

Security: every string from the archive (file names, errors, metadata evidence) reaches the page
only through jinja2 with autoescape on, or through ``textContent`` in the page's script; file
names on disk are never derived from archive strings; WeasyPrint's fetcher refuses every URL
except ``data:`` and ``file:`` under the run folder, so the PDF renderer fetches nothing else.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import audit
from audit.atomic import temporary_sibling, write_text
from audit.errors import DiskFull, is_disk_full
from audit.model import LoadedModel, ModelCard
from audit.report._charts import report_charts
from audit.report._data import (
    TABLE_COLUMNS,
    Counts,
    ModelFacts,
    RunData,
    listed_errors,
    model_facts,
    read_run,
    resolve_model,
    run_threshold,
    table_rows,
)
from audit.report._gallery import (
    DEFAULT_MAX_GALLERY,
    MAX_UNCERTAIN_CARDS,
    DecidedItem,
    GalleryItem,
    build_gallery,
    build_uncertain_gallery,
    decided_items,
)
from audit.report._metrics import LabelledMetrics, compute_metrics
from audit.report._page import options_list, render_page, swap_in_folder
from audit.report._pdf import PdfFacts
from audit.store import ReportCache, RunStore
from audit.summary import ChangesRecord, StoreRecord

# --------------------------------------------------------------------------- the content


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
    table_total: int = 0  # rows in results.csv; the table holds a bounded part (audit.report._data.table_rows)
    # What is new since the last run on the store; None for a run folder written before the store existed.
    changes: ChangesRecord | None = None
    # The run store's path, this run's id in it and how it was chosen.
    store: StoreRecord | None = None
    decided: list[DecidedItem] = field(default_factory=list)  # the first MAX_DECIDED_LISTED
    decided_total: int = 0
    # The uncertain images no reviewer has decided, as cards (the first MAX_UNCERTAIN_CARDS), and
    # how many images are uncertain in all.
    uncertain_gallery: list[GalleryItem] = field(default_factory=list)
    uncertain_total: int = 0


def build_content(run: RunData, model: LoadedModel | None, card: ModelCard | None, model_problem: str,
                  heatmap_dir: Path, max_gallery: int, seconds: dict[str, float] | None = None,
                  report_cache: ReportCache | None = None) -> ReportContent:
    """Compute everything the page shows; ``seconds`` receives the time of the costly parts."""
    seconds = {} if seconds is None else seconds
    started = time.perf_counter()
    frame, summary = run.results, run.summary
    facts = model_facts(summary, card, model)
    threshold = run_threshold(run, facts)
    metrics = compute_metrics(frame)
    charts = report_charts(frame, threshold, metrics)
    seconds["metrics_and_charts"] = time.perf_counter() - started
    started = time.perf_counter()
    gallery, flagged_total = build_gallery(run, model, model_problem, heatmap_dir, max_gallery, report_cache)
    uncertain_gallery, uncertain_total = build_uncertain_gallery(
        run, model, model_problem, heatmap_dir, min(max_gallery, MAX_UNCERTAIN_CARDS), report_cache)
    seconds["gallery_gradcam"] = time.perf_counter() - started
    decided, decided_total = decided_items(frame)
    table = table_rows(frame)
    errors, errors_total = listed_errors(frame)
    roots = list(summary.options.get("archives") or sorted(set(frame["root"])))
    return ReportContent(
        run_id=run.run_id,
        generated_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        started_at=summary.started_at or "unknown",
        finished_at=summary.finished_at or "unknown",
        roots=[str(root) for root in roots],
        counts=Counts.from_results(frame),
        flagged_total=flagged_total,
        model=facts,
        threshold=threshold,
        tool_version=summary.tool.version,
        report_tool_version=audit.__version__,
        options=options_list(summary.options),
        labelled=metrics.count if metrics else 0,
        metrics=metrics,
        charts=charts,
        gallery=gallery,
        max_gallery=max_gallery,
        errors=errors,
        errors_total=errors_total,
        table=table.records,
        table_total=table.total,
        changes=summary.changes,
        store=summary.store,
        decided=decided,
        decided_total=decided_total,
        uncertain_gallery=uncertain_gallery,
        uncertain_total=uncertain_total,
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


def write_pdf(html: str, run_dir: Path, pdf_path: Path, fetcher: Any = None, cache: ReportCache | None = None) -> Any:
    """Render the print page to ``pdf_path`` (audit.report._pdf); return the fetcher, its ``facts``
    set to what the PDF is made of."""
    from audit.report._pdf import write_report_pdf

    fetcher = fetcher or run_files_fetcher(run_dir)
    fetcher.facts = write_report_pdf(html, run_dir, pdf_path, fetcher, cache)
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
    pdf: PdfFacts | None = None  # how the PDF was made of parts (audit.report._pdf)


def render_report_files(
    run_dir: str | Path, model: LoadedModel | str | Path | None = None, max_gallery: int = DEFAULT_MAX_GALLERY,
    report_cache: ReportCache | None = None,
) -> RenderedReport:
    """Render report.html, report.pdf and heatmaps/ into the run folder from its results. With
    ``report_cache`` (the run store's), Grad-CAM runs only for images it has no map of yet, a
    card shown before takes its pictures from there, and so do the PDF's unchanged parts."""
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
        content = build_content(run, loaded, card, model_problem, new_heatmaps, max_gallery, seconds, report_cache)
        swap_in_folder(new_heatmaps, run_dir / "heatmaps")
    except BaseException:
        shutil.rmtree(new_heatmaps, ignore_errors=True)
        raise
    html_path, pdf_path = run_dir / "report.html", run_dir / "report.pdf"
    started = time.perf_counter()
    write_text(html_path, render_page(content, "html"))
    seconds["html"] = time.perf_counter() - started
    started = time.perf_counter()
    fetcher = write_pdf(render_page(content, "pdf"), run_dir, pdf_path, cache=report_cache)
    seconds["pdf"] = time.perf_counter() - started
    seconds["total"] = time.perf_counter() - clock
    return RenderedReport(html_path, pdf_path, tuple(fetcher.refused), {k: round(v, 3) for k, v in seconds.items()},
                          fetcher.facts.front_pages, content, fetcher.facts)


def render_report(
    run_dir: str | Path, model: LoadedModel | str | Path | None = None, max_gallery: int = DEFAULT_MAX_GALLERY,
    report_cache: ReportCache | None = None,
) -> tuple[Path, Path]:
    """The report stage's interface: (report.html, report.pdf) written into ``run_dir``."""
    rendered = render_report_files(run_dir, model, max_gallery, report_cache)
    return rendered.html_path, rendered.pdf_path


def discard_report(out_dir: Path) -> None:
    """Remove a report cut short (its files, finished or not, and heatmaps/): none is better than half."""
    for name in ("report.html", "report.pdf"):
        (out_dir / name).unlink(missing_ok=True)
        temporary_sibling(out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "heatmaps", ignore_errors=True)


def write_report(out_dir: Path, model: LoadedModel, max_gallery: int, store: RunStore | None = None) -> None:
    """report.html, report.pdf and heatmaps/ for a scan that has just written its results.

    The results are complete and committed before this runs, so a report that fails does not
    cost the run: the error is said on stderr (even with --quiet: it is a failure) and
    `audit report OUT_DIR` renders it again. The store's lock is still held: its caches spare
    Grad-CAM, the gallery's pictures and the layout of unchanged PDF parts.
    """
    try:
        render_report_files(out_dir, model=model, max_gallery=max_gallery,
                            report_cache=store.report_cache() if store is not None else None)
    except Exception as exc:  # noqa: BLE001 - the results stand; the report can be rendered again
        if is_disk_full(exc):  # a full disk stops the run: the user must act before the next night
            discard_report(out_dir)
            raise DiskFull("the report", out_dir, advice=f"; results.csv, results.xlsx and summary.json are complete; "
                           f"once there is space, `audit report {out_dir}` renders it") from exc
        print(f"audit scan: warning: the report was not rendered ({type(exc).__name__}: {exc}); "
              f"run `audit report {out_dir}` to try again", file=sys.stderr, flush=True)
