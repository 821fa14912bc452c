"""The report's page: the jinja2 template environment and its filters, and the rendering of one
report content into the HTML page or the print (PDF) page.

Kept apart from audit.report._render, which computes the content (pandas, charts, Grad-CAM).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "templates"
# Files listed per kind of change on the printed front page (summary.json and the HTML page list
# up to 200): a 1% + 1% night on 20,000 files would print nine pages of names.
CHANGES_PRINTED = 50
# Gallery cards a printed page holds (three rows of two at their usual height): the unit in which
# the gallery's pages are laid out and kept (audit.report._pdf).
CARDS_PER_PAGE = 6


def _format_metric(value: float | None, digits: int = 4) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _format_percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _format_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def _compact(value: Any, limit: int = 300) -> str:
    """A card value as one bounded line: JSON for nested values, text otherwise."""
    text = json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, (dict, list, tuple)) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


PAGE_TEMPLATE = "report.html.j2"


@functools.lru_cache(maxsize=1)
def template_environment():
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        # Autoescape on for every template: archive strings are never trusted markup.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["metric"] = _format_metric
    environment.filters["percent"] = _format_percent
    environment.filters["filesize"] = _format_bytes
    environment.filters["compact"] = _compact
    return environment


def render_page(content: Any, target: str) -> str:
    """target "html": the interactive page; "pdf": the print version (no script, no table)."""
    environment = template_environment()
    template = environment.get_template(PAGE_TEMPLATE)
    script = (TEMPLATE_DIR / "report.js").read_text(encoding="utf-8") if target == "html" else ""
    # The page's Content-Security-Policy allows this one script by its hash and nothing else.
    script_hash = "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return template.render(
        report=content,
        target=target,
        css=(TEMPLATE_DIR / "report.css").read_text(encoding="utf-8"),
        script=script,
        script_hash=script_hash,
        changes_printed=CHANGES_PRINTED,
        cards_per_page=CARDS_PER_PAGE,
    )


def options_list(options: dict[str, Any]) -> list[tuple[str, str]]:
    """The scan's options (summary.json's ``options``) as (name, value) text pairs, for the front page."""
    shown = []
    for name, value in options.items():
        if name == "archives":
            continue
        text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else ("" if value is None else str(value))
        shown.append((name, text or "—"))
    return shown


def swap_in_folder(new_dir: Path, final_dir: Path) -> None:
    """Put new_dir in final_dir's place; stale files of an earlier render do not survive."""
    old = final_dir.with_name(final_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final_dir.exists():
        final_dir.rename(old)
    new_dir.rename(final_dir)
    shutil.rmtree(old, ignore_errors=True)
