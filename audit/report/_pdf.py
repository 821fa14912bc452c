"""The report's PDF: every page after the front laid out in parts, each part kept while it stays
the same, and drawn onto blank pages that carry tonight's headers and footers.

Laying out the PDF is most of a report's time (docs/performance.md, "Report"), and from one
night to the next most of it is the same: the most confident flagged images change little, and
the method does not change at all. So the print page is rendered in pieces:

- the parts: each section after the front (charts, gallery, decided images, errors, method)
  between the print page's ``<!-- report-part -->`` markers, the gallery cut further at its
  ``<!-- gallery-page-break -->`` markers (a page of cards each), each laid out as a small
  document of its own with no page headers or footers. With the run store, a part's pages are
  kept in it by a fingerprint of its markup, the pictures it shows and the WeasyPrint version,
  and a later night takes the parts that did not change from there (1% of files changed touches
  a few gallery pages and the charts);
- the main document: the front page, then as many blank pages as the parts have, each with its
  header and footer (run id, "page X of Y") and the bookmarks of the headings that part puts on
  it.

Each blank page then draws its part's page (a form XObject named /ReportPart) over its own
header and footer (:func:`compose`), so the result reads as one document rendered tonight. If
the blank pages do not come out as the parts' count, the print page is rendered whole instead.
"""

from __future__ import annotations

import functools
import hashlib
import html
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.atomic import atomic_path

if TYPE_CHECKING:
    from audit.store import ReportCache

PART, PARTS_END, GALLERY_PAGE_BREAK = "<!-- report-part -->", "<!-- /report-parts -->", "<!-- gallery-page-break -->"
FORM_NAME = "/ReportPart"
# A gallery part after the first opens what the first opened before its cards (the HTML parser
# closes what a part leaves open; the last part's closing tags close this opening).
_GALLERY_OPENING = '<section class="gallery"><div class="cards">'
# Part of the fingerprint: a change to how parts are made retires the kept ones.
_PART_FORMAT = "report-part/1"
# A part alone: no page headers or footers (the blank page it is drawn on carries them; its
# headings become the blank page's bookmarks).
_PART_ALONE_CSS = ("<style>@page { @top-left { content: none; } @top-right { content: none; } "
                   "@bottom-right { content: none; } }</style>")
_HIDDEN = "visibility: hidden; height: 0; margin: 0; padding: 0; border: 0; overflow: hidden"
_PICTURE_SRC = re.compile(r'src="(heatmaps/[^"]+)"')
_STYLE = re.compile(r"<style>.*?</style>", re.S)
_MARKERS = re.compile(f"({re.escape(PART)}|{re.escape(GALLERY_PAGE_BREAK)})")

# A heading as a bookmark: (level, label, page within its part or the body).
Bookmark = tuple[int, str, int]


@dataclass(frozen=True)
class PdfFacts:
    front_pages: int | None  # pages before the body
    body_pages: int | None = None  # None: the print page was rendered whole
    body_pages_kept: int = 0  # of them, those whose part came from the run store
    body_bookmarks: tuple[Bookmark, ...] = ()  # the body's headings, by page from the body's start
    gallery_pages: int = 0  # of the body, the gallery's


@dataclass
class Part:
    fingerprint: str
    pdf: bytes
    pages: list[Any]  # the PDF's pages (pypdf), parsed once
    bookmarks: list[Bookmark]
    gallery: bool
    kept: bool = False  # from the run store


def body_bounds(print_page: str) -> tuple[int, int] | None:
    """Where the body (the parts) starts and ends in the print page; None without part markers."""
    start, end = print_page.find(PART), print_page.find(PARTS_END)
    return (start, end + len(PARTS_END)) if 0 <= start <= end else None


def split_print_page(print_page: str) -> tuple[list[tuple[str, bool]], int, int] | None:
    """([(a part's own page, whether it is the gallery's)], where the body starts and ends in the
    print page), or None when the print page has no part markers."""
    bounds, style = body_bounds(print_page), _STYLE.search(print_page)
    if bounds is None or style is None:
        return None
    start, end = bounds
    # Nothing of the night outside the parts (title, run id) enters one: only the style.
    head = f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{style.group(0)}{_PART_ALONE_CSS}</head>'
    pieces = _MARKERS.split(print_page[start:end - len(PARTS_END)])[1:]  # [marker, piece, marker, piece, ...]
    parts = []
    for marker, piece in zip(pieces[::2], pieces[1::2]):
        gallery_continues = marker == GALLERY_PAGE_BREAK
        gallery = gallery_continues or '<section class="gallery"' in piece
        opening = _GALLERY_OPENING if gallery_continues else ""
        parts.append((f'{head}<body class="target-pdf">{opening}{piece}</body></html>', gallery))
    return parts, start, end


@functools.lru_cache(maxsize=1)
def renderer_versions() -> str:
    """WeasyPrint, pydyf and Pango: what lays a part out and writes it (a system upgrade of Pango
    or its fonts retires the kept parts)."""
    import pydyf
    import weasyprint
    from weasyprint.text.ffi import pango

    return f"weasyprint {weasyprint.__version__}, pydyf {pydyf.__version__}, pango {pango.pango_version()}"


def part_fingerprint(page: str, run_dir: Path) -> str:
    """What a part's pages depend on: its markup, the bytes of the pictures it shows, the renderer."""
    digest = hashlib.sha256(f"{_PART_FORMAT}\n{renderer_versions()}\n".encode())
    digest.update(page.encode("utf-8"))
    for src in _PICTURE_SRC.findall(page):
        picture = run_dir / src
        digest.update(f"\n{src}\n".encode())
        digest.update(picture.read_bytes() if picture.is_file() else b"(missing)")
    return digest.hexdigest()


def blank_pages(bookmarks: list[Bookmark] | tuple[Bookmark, ...], pages: int) -> str:
    """``pages`` blank pages for the body, each holding its bookmarks as hidden headings."""
    on_page: dict[int, list[str]] = {}
    for level, label, page in bookmarks:
        tag = f"h{min(max(level, 1), 6)}"
        on_page.setdefault(page, []).append(f'<{tag} style="{_HIDDEN}">{html.escape(label)}</{tag}>')
    # The first carries the anchor body_start looks for; each other one starts a page.
    openings = ['<div id="report-body" style="height: 1px">'] + ['<div style="break-before: page; height: 1px">'] * (pages - 1)
    blanks = [f'{opening}{"".join(on_page.get(index, []))}</div>' for index, opening in enumerate(openings[:pages])]
    return '<section style="break-before: page">' + "".join(blanks) + "</section>"


def render_document(page: str, run_dir: Path, fetcher: Any):
    from weasyprint import HTML

    return HTML(string=page, base_url=run_dir.resolve().as_uri() + "/", url_fetcher=fetcher).render()


def _bookmarks_of(document: Any) -> list[Bookmark]:
    return [(level, label, index) for index, page in enumerate(document.pages)
            for level, label, _position, _state in page.bookmarks]


def render_part(page: str, gallery: bool, run_dir: Path, fetcher: Any, cache: ReportCache | None) -> Part:
    fingerprint = part_fingerprint(page, run_dir)
    kept = cache.get_report_part(fingerprint) if cache is not None else None
    if kept is not None:
        pdf, bookmarks = kept
        try:
            return Part(fingerprint, pdf, _pages_of(pdf), [tuple(item) for item in bookmarks], gallery, kept=True)
        except Exception:  # noqa: BLE001 - a damaged cache entry is laid out again (and replaced)
            pass
    document = render_document(page, run_dir, fetcher)
    pdf = document.write_pdf()
    return Part(fingerprint, pdf, _pages_of(pdf), _bookmarks_of(document), gallery)


def _pages_of(pdf: bytes) -> list[Any]:
    from pypdf import PdfReader

    return list(PdfReader(io.BytesIO(pdf)).pages)


def body_start(document: Any, body_pages: int) -> int | None:
    """The index of the first blank body page when exactly ``body_pages`` of them end the main
    document, else None."""
    first = next((index for index, page in enumerate(document.pages) if "report-body" in page.anchors), None)
    return first if first is not None and len(document.pages) - first == body_pages else None


def compose(main_pdf: bytes, first_blank: int, sources: list[Any]):
    """The main document with each source (a page of a part's PDF) drawn as a form XObject on a
    blank page from ``first_blank`` on; returns a pypdf writer.

    The one place that uses pypdf's private ``PdfWriter._add_object``: a new stream must be an
    indirect object of the writer, and pypdf offers no public call for it (its public
    ``merge_page`` does the job at about 50x the time). tests/test_report.py checks the result.
    """
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import ArrayObject, DictionaryObject, FloatObject, NameObject, StreamObject

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(main_pdf)))

    def register(item: StreamObject):
        return writer._add_object(item)

    def stream(data: bytes):
        content = StreamObject()
        content.set_data(data)
        return register(content)

    # The blank page's own drawing (header, footer) may leave its coordinate system changed: it is
    # wrapped in q ... Q before the part's page is drawn.
    opening, closing = stream(b"q\n"), stream(b"\nQ\nq " + FORM_NAME.encode() + b" Do Q\n")
    for index, source in enumerate(sources):
        target = writer.pages[first_blank + index]
        contents = source["/Contents"].get_object()
        if isinstance(contents, ArrayObject):  # several content streams: one form draws them all
            form = StreamObject()
            form.set_data(b"\n".join(part.get_object().get_data() for part in contents))
        else:
            form = contents.clone(writer)
        form[NameObject("/Type")] = NameObject("/XObject")
        form[NameObject("/Subtype")] = NameObject("/Form")
        form[NameObject("/BBox")] = ArrayObject([FloatObject(value) for value in source.mediabox])
        form[NameObject("/Resources")] = source.raw_get("/Resources").clone(writer)
        # Pages may share one resource dictionary: this page gets its own, with its form in it.
        resources = DictionaryObject(target["/Resources"].get_object())
        xobjects = DictionaryObject(resources["/XObject"].get_object()) if "/XObject" in resources else DictionaryObject()
        xobjects[NameObject(FORM_NAME)] = form.indirect_reference or register(form)
        resources[NameObject("/XObject")] = xobjects
        target[NameObject("/Resources")] = resources
        own = target.raw_get("/Contents")
        own_parts = list(own.get_object()) if isinstance(own.get_object(), ArrayObject) else [own]
        target[NameObject("/Contents")] = ArrayObject([opening, *own_parts, closing])
    return writer


def write_composed(writer: Any, pdf_path: Path, title: str | None = None) -> None:
    if title is not None:
        writer.add_metadata({"/Title": title})
    with atomic_path(pdf_path) as temporary, open(temporary, "wb") as handle:
        writer.write(handle)


def write_report_pdf(print_page: str, run_dir: Path, pdf_path: Path, fetcher: Any,
                     cache: ReportCache | None = None) -> PdfFacts:
    """Render the print page to ``pdf_path`` (temporary name, then rename)."""
    found = split_print_page(print_page)
    if found is not None:
        pages_of_parts, start, end = found
        parts = [render_part(page, gallery, run_dir, fetcher, cache) for page, gallery in pages_of_parts]
        bookmarks, offset = [], 0
        for part in parts:
            bookmarks += [(level, label, offset + page) for level, label, page in part.bookmarks]
            offset += len(part.pages)
        document = render_document(print_page[:start] + blank_pages(bookmarks, offset) + print_page[end:], run_dir, fetcher)
        first = body_start(document, offset)
        if first is not None:
            write_composed(compose(document.write_pdf(), first, [page for part in parts for page in part.pages]), pdf_path)
            if cache is not None:
                cache.keep_report_parts([(part.fingerprint, part.pdf, json.dumps(part.bookmarks)) for part in parts
                                         if not part.kept], [part.fingerprint for part in parts])
            return PdfFacts(first, offset, sum(len(part.pages) for part in parts if part.kept), tuple(bookmarks),
                            sum(len(part.pages) for part in parts if part.gallery))
    document = render_document(print_page, run_dir, fetcher)
    with atomic_path(pdf_path) as temporary:
        document.write_pdf(temporary)
    return PdfFacts(next((index for index, page in enumerate(document.pages) if "charts" in page.anchors), None))
