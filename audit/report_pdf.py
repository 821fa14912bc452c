"""The report's PDF: the gallery laid out a page of cards at a time, each page kept while its
cards stay the same, and composed page by page into the rest of the report.

The gallery is most of the PDF's layout (200 cards: 34 of 48 pages and 8 of 12 s on a 20,000-file
rerun, 2 cores), and from one night to the next most of its cards are the same: the most
confident flagged images change little. So the print page is rendered in parts:

- the gallery, as one small document per page of cards (the print page between its
  ``<!-- gallery-pages -->`` markers, cut at its ``<!-- gallery-page-break -->`` markers every
  CARDS_PER_PAGE cards), with no page headers or footers. With the run store, each part's pages
  are kept in it by a fingerprint of its markup, the pictures it shows and the WeasyPrint
  version; a later night takes the parts whose cards are unchanged from there and lays out only
  the others (1% of files changed touches a few cards of 200);
- the rest of the report, where the gallery is as many blank pages as its parts have, each with
  its header and footer (run id, "page X of Y") and the gallery's bookmark.

Each blank page then draws its gallery page (a form XObject) over its own header and footer, so
the result reads as one document rendered tonight. If the blank pages do not land as one run of
exactly the gallery's pages, the print page is rendered whole instead.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.atomic import atomic_path

if TYPE_CHECKING:
    from audit.heatmap_cache import HeatmapCache

GALLERY_START, GALLERY_END = "<!-- gallery-pages -->", "<!-- /gallery-pages -->"
GALLERY_PAGE_BREAK = "<!-- gallery-page-break -->"
# A part after the first opens what the first part opened before its cards (the HTML parser
# closes what a part leaves open, and ignores the last part's closing tags of the first's).
_PART_OPENING = '<section class="gallery"><div class="cards">'
# Part of the fingerprint: a change to how the gallery's parts are made retires kept pages.
_GALLERY_FORMAT = "gallery-pages/2"
# The gallery alone: no page headers or footers (the blank pages it is drawn on carry them), and
# no bookmark (the blank pages' hidden heading has it).
_GALLERY_ALONE_CSS = ("<style>@page { @top-left { content: none; } @top-right { content: none; } "
                      "@bottom-right { content: none; } } section.gallery h2 { bookmark-level: none; }</style>")
_BLANK_PAGE = '<div style="break-before: page; height: 1px"></div>'
_PICTURE_SRC = re.compile(r'src="(heatmaps/[^"]+)"')
_STYLE = re.compile(r"<style>.*?</style>", re.S)


@dataclass(frozen=True)
class PdfFacts:
    front_pages: int | None  # pages before the charts (what an unchanged night renders again)
    gallery_pages: int | None  # None: the print page was rendered whole
    gallery_pages_kept: int = 0  # of them, those that came from the run store


def gallery_parts(print_page: str) -> tuple[list[str], int, int] | None:
    """(a page of its own for each part of the gallery, where the gallery's markup starts and ends
    in the print page), or None when the print page has no gallery markers."""
    start, end = print_page.find(GALLERY_START), print_page.find(GALLERY_END)
    style = _STYLE.search(print_page)
    if start < 0 or end < start or style is None:
        return None
    end += len(GALLERY_END)
    pieces = print_page[start:end].split(GALLERY_PAGE_BREAK)
    # Nothing of the night outside the markers (title, run id) enters a part: only the style.
    head = f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{style.group(0)}{_GALLERY_ALONE_CSS}</head>'
    parts = [f'{head}<body class="target-pdf">{"" if index == 0 else _PART_OPENING}{piece}</body></html>'
             for index, piece in enumerate(pieces)]
    return parts, start, end


def gallery_fingerprint(gallery_page: str, run_dir: Path) -> str:
    """What a gallery part's pages depend on: its markup, the bytes of the pictures it shows, the renderer."""
    import weasyprint

    digest = hashlib.sha256(f"{_GALLERY_FORMAT}\n{weasyprint.__version__}\n".encode())
    digest.update(gallery_page.encode("utf-8"))
    for src in _PICTURE_SRC.findall(gallery_page):
        picture = run_dir / src
        digest.update(f"\n{src}\n".encode())
        digest.update(picture.read_bytes() if picture.is_file() else b"(missing)")
    return digest.hexdigest()


def _blank_gallery(pages: int) -> str:
    return ('<section class="gallery" id="gallery"><h2 style="visibility: hidden; height: 0; margin: 0">'
            'Flagged images</h2>' + _BLANK_PAGE * (pages - 1) + "</section>")


def _render(page: str, run_dir: Path, fetcher: Any):
    from weasyprint import HTML

    return HTML(string=page, base_url=run_dir.resolve().as_uri() + "/", url_fetcher=fetcher).render()


def _front_pages(document: Any) -> int | None:
    return next((index for index, page in enumerate(document.pages) if "charts" in page.anchors), None)


def _blank_run(document: Any, pages: int) -> int | None:
    """The index of the first blank gallery page when exactly ``pages`` of them precede the next
    section, else None."""
    first = next((index for index, page in enumerate(document.pages) if "gallery" in page.anchors), None)
    if first is None or first + pages >= len(document.pages):
        return None
    blank = document.pages[first: first + pages]
    following = document.pages[first + pages].anchors
    if any(page.anchors.keys() - {"gallery"} for page in blank) or not ({"decided-section", "errors"} & following.keys()):
        return None
    return first


def compose(main_pdf: bytes, first_blank: int, gallery_pdfs: list[bytes]):
    """The main document with the gallery's pages, in order, each drawn on a blank page from
    ``first_blank`` on (a pypdf writer)."""
    from pypdf import PdfReader, PdfWriter
    from pypdf.generic import ArrayObject, DictionaryObject, FloatObject, NameObject, StreamObject

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(main_pdf)))

    def stream(data: bytes):
        content = StreamObject()
        content.set_data(data)
        return writer._add_object(content)

    # The blank page's own drawing (header, footer) may leave its coordinate system changed: it is
    # wrapped in q ... Q before the gallery page is drawn.
    opening, closing = stream(b"q\n"), stream(b"\nQ\nq /GalleryPage Do Q\n")
    sources = [page for pdf in gallery_pdfs for page in PdfReader(io.BytesIO(pdf)).pages]
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
        xobjects[NameObject("/GalleryPage")] = form.indirect_reference or writer._add_object(form)
        resources[NameObject("/XObject")] = xobjects
        target[NameObject("/Resources")] = resources
        own = target.raw_get("/Contents")
        own_parts = list(own.get_object()) if isinstance(own.get_object(), ArrayObject) else [own]
        target[NameObject("/Contents")] = ArrayObject([opening, *own_parts, closing])
    return writer


@dataclass
class _GalleryPart:
    fingerprint: str
    pdf: bytes
    pages: int
    kept: bool  # from the run store


def _gallery_part(page: str, run_dir: Path, fetcher: Any, cache: HeatmapCache | None) -> _GalleryPart:
    from pypdf import PdfReader

    fingerprint = gallery_fingerprint(page, run_dir)
    pdf = cache.get_gallery_pages(fingerprint) if cache is not None else None
    kept = pdf is not None
    if pdf is None:
        pdf = _render(page, run_dir, fetcher).write_pdf()
    return _GalleryPart(fingerprint, pdf, len(PdfReader(io.BytesIO(pdf)).pages), kept)


def write_report_pdf(print_page: str, run_dir: Path, pdf_path: Path, fetcher: Any,
                     cache: HeatmapCache | None = None) -> PdfFacts:
    """Render the print page to ``pdf_path`` (temporary name, then rename)."""
    found = gallery_parts(print_page)
    if found is not None:
        pages_of_parts, start, end = found
        parts = [_gallery_part(page, run_dir, fetcher, cache) for page in pages_of_parts]
        pages = sum(part.pages for part in parts)
        document = _render(print_page[:start] + _blank_gallery(pages) + print_page[end:], run_dir, fetcher)
        first_blank = _blank_run(document, pages)
        if first_blank is not None:
            writer = compose(document.write_pdf(), first_blank, [part.pdf for part in parts])
            with atomic_path(pdf_path) as temporary, open(temporary, "wb") as handle:
                writer.write(handle)
            if cache is not None:
                cache.keep_gallery_pages([(part.fingerprint, part.pdf) for part in parts if not part.kept],
                                         [part.fingerprint for part in parts])
            return PdfFacts(_front_pages(document), pages, sum(part.pages for part in parts if part.kept))
    document = _render(print_page, run_dir, fetcher)
    with atomic_path(pdf_path) as temporary:
        document.write_pdf(temporary)
    return PdfFacts(_front_pages(document), None)
