"""An unchanged night's report: the last run's pages, copied, behind a front page made for tonight.

Rendering the report is most of an unchanged rerun's time (Grad-CAM of the gallery, then a PDF of
some 40 pages). When tonight's rows are byte for byte last night's (the sha256 of results.csv),
with the same model card, gallery size, tool version and templates, everything after the front
page would come out the same: the charts, the metrics, the gallery and its heatmaps, the errors
and the method. So those pages are copied, as results.xlsx is, once their sha256 (recorded in
the earlier summary.json under "report") shows nobody edited them.

The front page is not copied: it names the run, its times, the run store and what changed since
the last run, and that must be tonight's truth. It is rendered again from the earlier front's
recorded content with tonight's run facts, and says that the pages after it were rendered for
run N and copied. The PDF is tonight's front page followed by blank pages that carry tonight's
headers, footers and the earlier body's bookmarks, each drawing the earlier page's part (its
/ReportPart form, audit.report._pdf), so the front may have more or fewer pages than last night's;
the HTML is the new head and front followed by the earlier page's rest. On any doubt (an earlier
report rendered whole, or one the blank pages do not fit) the report is rendered instead.

This module imports neither pandas nor torch (the report stage does): the point is seconds.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import shutil
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import audit
from audit.atomic import temporary_sibling, write_text
from audit.errors import DiskFull, is_disk_full
from audit.model import LoadedModel, file_sha256
from audit.report._page import (
    PAGE_TEMPLATE,
    TEMPLATE_DIR,
    options_list,
    render_page,
    swap_in_folder,
    template_environment,
)
from audit.report._pdf import (
    PdfFacts,
    blank_pages,
    body_bounds,
    body_start,
    compose,
    earlier_forms,
    render_document,
    write_composed,
)

if TYPE_CHECKING:
    from audit.store import RunStore

# The body starts here in the page; the front (with its head) is everything before.
BODY_MARKER = '<section class="charts"'
# Content fields too large or too specific to the body to keep for a later front page.
_BODY_FIELDS = ("charts", "gallery", "table", "errors")


@dataclass(frozen=True)
class ReportRecord:
    """What summary.json records about a rendered report (under "report")."""

    fingerprint: str  # of everything the pages after the front depend on
    html_sha256: str
    pdf_sha256: str
    heatmaps_sha256: str  # of the heatmaps/ listing (names and sizes)
    front_pages: int  # PDF pages before the body
    front_content: dict[str, Any]  # the content the front page was rendered from
    copied_from_run: int | None = None  # the store run whose pages were copied; None: rendered
    # The run the pages after the front were rendered for: this one, or the first of a chain of
    # unchanged nights. {"run": store run id, "run_id": its folder's name}
    body_from: dict[str, Any] | None = None
    # The body's pages (None: rendered whole), how many came from parts kept in the run store,
    # the gallery's share, and the body's bookmarks [level, label, page from the body's start]
    # (audit.report._pdf): what a copy draws them with.
    body_pages: int | None = None
    body_pages_kept: int = 0
    gallery_pages: int = 0
    body_bookmarks: list[Any] = dataclasses.field(default_factory=list)
    # "report process" (audit.report._process) or "scan": which process wrote this report
    made_by: str = "scan"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def report_fingerprint(summary: dict[str, Any], model: LoadedModel, max_gallery: int) -> str | None:
    """What the report's body depends on; None when the run recorded no results.csv hash."""
    try:
        rows = summary["output_sha256"]["results.csv"]
    except (KeyError, TypeError):
        return None
    templates = {path.name: file_sha256(path) for path in sorted(TEMPLATE_DIR.iterdir()) if path.is_file()}
    parts = {
        "results.csv": rows,
        "model_id": model.model_id,
        "card": json.dumps(dataclasses.asdict(model.card), sort_keys=True, default=str),
        "max_gallery": max_gallery,
        "tool": audit.__version__,
        "templates": templates,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def heatmaps_listing_sha256(run_dir: Path) -> str:
    folder = run_dir / "heatmaps"
    listing = sorted((p.name, p.stat().st_size) for p in folder.iterdir()) if folder.is_dir() else []
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def front_content_of(content: Any) -> dict[str, Any]:
    """The report content without its body's bulk, as JSON-ready data (for a later front page)."""
    # Field by field, leaving the body's out before converting: dataclasses.asdict of the whole
    # content deep-copied the 20,000-row table only to drop it (about 1 s).
    data = {field.name: _plain(getattr(content, field.name)) for field in dataclasses.fields(content)
            if field.name not in _BODY_FIELDS}
    return json.loads(json.dumps(data, default=str))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def record_rendered_report(run_dir: Path, fingerprint: str | None, front_pages: int | None, content: Any,
                           copied_from_run: int | None = None, body_from: dict[str, Any] | None = None,
                           pdf: PdfFacts | None = None, made_by: str = "scan") -> ReportRecord | None:
    """Add "report" to the run's summary.json (rewritten atomically), so the next unchanged run
    can copy these pages; nothing when there is nothing to go by."""
    if fingerprint is None or front_pages is None:
        return None
    front = content if isinstance(content, dict) else front_content_of(content)
    if body_from is None:  # rendered here
        run = (json.loads((run_dir / "summary.json").read_text(encoding="utf-8")).get("store") or {}).get("run_id")
        body_from = {"run": run, "run_id": run_dir.resolve().name}
    record = ReportRecord(fingerprint, file_sha256(run_dir / "report.html"), file_sha256(run_dir / "report.pdf"),
                          heatmaps_listing_sha256(run_dir), front_pages, front, copied_from_run, body_from,
                          *((pdf.body_pages, pdf.body_pages_kept, pdf.gallery_pages, [list(b) for b in pdf.body_bookmarks])
                            if pdf is not None else ()), made_by=made_by)
    _update_summary(run_dir, {"report": record.to_json()})
    return record


def _update_summary(run_dir: Path, fields: dict[str, Any]) -> None:
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary.update(fields)
    write_text(path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")


def _earlier_record(earlier_dir: Path) -> tuple[dict[str, Any], ReportRecord] | None:
    try:
        summary = json.loads((earlier_dir / "summary.json").read_text(encoding="utf-8"))
        return summary, ReportRecord(**summary["report"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tonight_front(front: dict[str, Any], run_dir: Path, summary: dict[str, Any], earlier_run: int | None,
                  body_from: dict[str, Any]) -> dict[str, Any]:
    """The earlier front's content with tonight's run facts (and empty body fields)."""
    tool = summary.get("tool") or {}
    return {
        **front,
        "run_id": run_dir.resolve().name,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "started_at": str(summary.get("started_at", "unknown")),
        "finished_at": str(summary.get("finished_at", "unknown")),
        "tool_version": str(tool.get("version", "unknown")),
        "report_tool_version": audit.__version__,
        "options": options_list(summary),
        "changes": summary.get("changes"),
        "store": summary.get("store"),
        "copied_from": {"run": earlier_run, "body_run": body_from.get("run"), "body_run_id": body_from.get("run_id")},
        "metrics": None,  # the body's (its properties are not kept)
        "charts": {"histogram": ""},
        "gallery": [],
        "table": [],
        "errors": [],
    }


def copy_unchanged_report(run_dir: Path, model: LoadedModel, max_gallery: int, earlier_dir: Path | None,
                          earlier_run: int | None, made_by: str = "scan") -> ReportRecord | None:
    """Tonight's report from the earlier run's when nothing its body shows has changed; None (and
    nothing written) when it cannot be: render the report instead."""
    if earlier_dir is None or earlier_dir.resolve() == run_dir.resolve():
        return None
    found = _earlier_record(earlier_dir)
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    fingerprint = report_fingerprint(summary, model, max_gallery)
    if found is None or fingerprint is None or found[1].fingerprint != fingerprint:
        return None
    earlier = found[1]
    html_path, pdf_path = earlier_dir / "report.html", earlier_dir / "report.pdf"
    try:  # nobody edited what is copied
        if (file_sha256(html_path), file_sha256(pdf_path), heatmaps_listing_sha256(earlier_dir)) != \
                (earlier.html_sha256, earlier.pdf_sha256, earlier.heatmaps_sha256):
            return None
    except OSError:
        return None
    forms = earlier_forms(pdf_path, earlier.front_pages)
    if forms is None or len(forms) != earlier.body_pages:
        return None  # rendered whole, or by an older version: render instead
    body_from = earlier.body_from or {"run": earlier_run, "run_id": earlier_dir.name}
    front = tonight_front(earlier.front_content, run_dir, summary, earlier_run, body_from)
    print_page = render_page(front, "pdf")
    bounds = body_bounds(print_page)
    if bounds is None:
        return None
    start, end = bounds
    main = print_page[:start] + blank_pages([tuple(b) for b in earlier.body_bookmarks], len(forms)) + print_page[end:]
    # The front holds no picture: it fetches nothing but data: URIs.
    from weasyprint.urls import URLFetcher

    document = render_document(main, run_dir, URLFetcher(allowed_protocols=("data",), allow_redirects=False, timeout=5))
    first = body_start(document, len(forms))
    if first is None:
        return None
    writer = compose(document.write_pdf(), first, forms)
    earlier_html = html_path.read_text(encoding="utf-8")
    page = render_page(front, "html")
    html = page[: page.index(BODY_MARKER)] + earlier_html[earlier_html.index(BODY_MARKER):]

    new_heatmaps = run_dir / "heatmaps.tmp"
    shutil.rmtree(new_heatmaps, ignore_errors=True)
    if (earlier_dir / "heatmaps").is_dir():
        shutil.copytree(earlier_dir / "heatmaps", new_heatmaps)
    else:
        new_heatmaps.mkdir()
    html_tmp = temporary_sibling(run_dir / "report.html")
    write_composed(writer, run_dir / "report.pdf", title=f"AI image audit: run {front['run_id']}")
    html_tmp.write_text(html, encoding="utf-8")
    swap_in_folder(new_heatmaps, run_dir / "heatmaps")
    html_tmp.replace(run_dir / "report.html")
    facts = PdfFacts(first, len(forms), len(forms), tuple(tuple(b) for b in earlier.body_bookmarks), earlier.gallery_pages)
    return record_rendered_report(run_dir, fingerprint, first, earlier.front_content, earlier_run, body_from, facts,
                                  made_by)


# What copying an unchanged night's report imports (the first of report_stage_imports).
COPY_STAGE_IMPORTS = ("audit.report._reuse", "weasyprint", "pypdf")


def report_stage_imports(labelled: bool) -> list[str]:
    """What rendering a report imports, in the order it needs it: the unchanged copy's first
    (WeasyPrint 0.6 s here, pypdf), then the renderer's (matplotlib and seaborn 0.6, pandas 0.35),
    scikit-learn 1.2 when rows have true labels (its metrics and curves), and pytorch-grad-cam
    2.5 s (it imports torchvision) for the Grad-CAM of images flagged tonight."""
    return [*COPY_STAGE_IMPORTS, "audit.report._charts", "audit.report._render", "seaborn",
            *(["sklearn.metrics"] if labelled else []), "audit.report._explain", "pytorch_grad_cam"]


def prepare_copy(earlier_dir: Path | None) -> None:
    """What copying can do before tonight's rows are known (a report process does it while the
    scan walks the archive): the page's template compiled, WeasyPrint's fonts loaded, and the
    earlier report's forms read (earlier_forms keeps them)."""
    from weasyprint import HTML

    template_environment().get_template(PAGE_TEMPLATE)
    HTML(string="<p>fonts</p>").render()
    found = _earlier_record(earlier_dir) if earlier_dir is not None else None
    if found is not None and earlier_dir is not None:
        earlier_forms(earlier_dir / "report.pdf", found[1].front_pages)


def import_report_module(name: str) -> None:
    module = importlib.import_module(name)
    if name == "audit.report._charts":  # matplotlib with its headless backend, before seaborn imports pyplot
        module._pyplot()


def discard_report(out_dir: Path) -> None:
    """Remove a report cut short (its files, finished or not, and heatmaps/): none is better than half."""
    for name in ("report.html", "report.pdf"):
        (out_dir / name).unlink(missing_ok=True)
        temporary_sibling(out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "heatmaps", ignore_errors=True)


def write_report(out_dir: Path, model: LoadedModel, max_gallery: int, quiet: bool = False, store: RunStore | None = None,
                 baseline: int | None = None, made_by: str = "scan") -> None:
    """report.html, report.pdf and heatmaps/ from the files just written (audit.report._render).

    The results are complete and committed before this runs, so a report that fails does not
    cost the run: the error is said on stderr (even with --quiet: it is a failure) and
    `audit report OUT_DIR` renders it again.
    """
    earlier = store.out_dir_of(baseline) if store is not None and baseline is not None else None
    try:
        copied = copy_unchanged_report(out_dir, model, max_gallery, earlier, baseline, made_by)
    except Exception as exc:  # noqa: BLE001 - a copy that fails is rendered instead
        copied = None
        print(f"audit scan: note: the unchanged report could not be copied ({type(exc).__name__}: {exc}); "
              "rendering it", file=sys.stderr, flush=True)
    if copied is not None:
        if not quiet:
            print(f"audit scan: nothing the report shows changed since run {baseline}: its pages were copied "
                  "behind a new front page", file=sys.stderr, flush=True)
        return
    from audit.report._render import render_report_files
    from audit.store import ReportCache

    try:
        # The store's lock is still held: its caches spare Grad-CAM, pictures and the layout of
        # parts that were made before (audit.store._report_cache).
        cache = ReportCache(store.db) if store is not None else None
        rendered = render_report_files(out_dir, model=model, max_gallery=max_gallery, report_cache=cache)
        summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
        record_rendered_report(out_dir, report_fingerprint(summary, model, max_gallery),
                               rendered.front_pages, rendered.content, pdf=rendered.pdf, made_by=made_by)
    except Exception as exc:  # noqa: BLE001 - the results stand; the report can be rendered again
        if is_disk_full(exc):  # a full disk stops the run: the user must act before the next night
            discard_report(out_dir)
            raise DiskFull("the report", out_dir, advice=f"; results.csv, results.xlsx and summary.json are complete; "
                           f"once there is space, `audit report {out_dir}` renders it") from exc
        print(f"audit scan: warning: the report was not rendered ({type(exc).__name__}: {exc}); "
              f"run `audit report {out_dir}` to try again", file=sys.stderr, flush=True)
