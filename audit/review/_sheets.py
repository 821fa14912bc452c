"""Reading a filled-in spreadsheet as text: the rows of an XLSX (streamed with lxml) or a CSV."""

from __future__ import annotations

import csv
import functools
import re
import sys
from pathlib import Path
from typing import Any

from audit.review._decisions import ReviewError

_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PACKAGE_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}"
# An XLSX part larger than this uncompressed is refused before it is parsed (a zip bomb).
MAX_XLSX_PART_BYTES = 1 << 30


# The sheets of results.xlsx an import reads: every row is on "results" (continued on "results-2",
# "results-3"... past Excel's row limit); "flagged" repeats the rows a reviewer acts on.
RESULTS_SHEET, FLAGGED_SHEET = "results", "flagged"
_CONTINUED = re.compile(r"(results|flagged)-([1-9][0-9]*)")


def is_results_sheet(name: str) -> bool:
    match = _CONTINUED.fullmatch(name)
    return name == RESULTS_SHEET or bool(match and match.group(1) == RESULTS_SHEET)


def is_flagged_sheet(name: str) -> bool:
    match = _CONTINUED.fullmatch(name)
    return name == FLAGGED_SHEET or bool(match and match.group(1) == FLAGGED_SHEET)


def xlsx_rows(path: Path, columns: set[str]) -> list[tuple[str, list[tuple[int, list[str]]]]]:
    """(sheet name, rows) of each sheet an import reads: ``flagged`` and every results sheet in
    order, or the first sheet of a workbook that has none of them. A sheet's rows are its header
    whole, then only the cells under ``columns``, streamed from its XML with lxml, which hands
    over one element per row.

    openpyxl is slow to read a row of results.xlsx, most of it on cells an import does not need
    (docs/performance.md, "Reviewer decisions"); this is what keeps an import of 20,000 decisions
    within seconds. A cell holding a formula is read as its text (``=...``), never as a value: a
    note typed as a formula stays what was typed.
    """
    import zipfile

    from lxml import etree as ElementTree

    try:
        with zipfile.ZipFile(path) as package:
            sheets = _sheet_parts(package)
            for part in (*(part for _, part in sheets), "xl/sharedStrings.xml"):
                if part in package.namelist() and package.getinfo(part).file_size > MAX_XLSX_PART_BYTES:
                    raise ReviewError(f"{path}: {part} is larger than {MAX_XLSX_PART_BYTES >> 20} MiB uncompressed")
            shared = _shared_strings(package)
            read = []
            for name, part in sheets:
                with package.open(part) as handle:
                    rows = ElementTree.iterparse(handle, events=("end",), tag=_MAIN + "row", resolve_entities=False,
                                                 no_network=True)
                    read.append((name, _sheet_rows(rows, shared, columns)))
            return read
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, OSError, ValueError, IndexError) as exc:
        raise ReviewError(f"{path} cannot be read as an XLSX workbook ({type(exc).__name__}: {exc})") from None


def _sheet_parts(package: Any) -> list[tuple[str, str]]:
    """(name, part) of the sheets to read: the flagged one first, then the results ones in order."""
    from lxml import etree as ElementTree

    workbook = ElementTree.fromstring(package.read("xl/workbook.xml"))
    sheets = [(sheet.get("name") or "", sheet.get(_REL + "id")) for sheet in workbook.iter(_MAIN + "sheet")]
    if not sheets:
        raise ValueError("the workbook has no sheet")
    relations = ElementTree.fromstring(package.read("xl/_rels/workbook.xml.rels"))
    targets = {rel.get("Id"): rel.get("Target") for rel in relations.iter(_PACKAGE_REL + "Relationship")}

    def part(rel_id: str | None) -> str:
        target = targets[rel_id]
        return target.lstrip("/") if target.startswith("/") else f"xl/{target}"

    wanted = sorted(((name, rel_id) for name, rel_id in sheets if is_flagged_sheet(name) or is_results_sheet(name)),
                    key=lambda sheet: _sheet_order(sheet[0]))
    return [(name, part(rel_id)) for name, rel_id in (wanted or sheets[:1])]


def _sheet_order(name: str) -> tuple[bool, int]:
    """The flagged sheets first, then the results sheets, each series in its order."""
    return is_results_sheet(name), int(name.rsplit("-", 1)[1]) if "-" in name else 1


def _shared_strings(package: Any) -> list[str]:
    from lxml import etree as ElementTree

    if "xl/sharedStrings.xml" not in package.namelist():
        return []
    strings = []
    with package.open("xl/sharedStrings.xml") as handle:
        for _, element in ElementTree.iterparse(handle, events=("end",), tag=_MAIN + "si", resolve_entities=False,
                                                no_network=True):
            strings.append(_inline_text(element))
            element.clear(keep_tail=True)
    return strings


def _inline_text(element: Any) -> str:
    """The text of a string item: its <t>, or its rich-text runs' <t>s (phonetic hints left out)."""
    parts = []
    for child in element:
        if child.tag == _MAIN + "t":
            parts.append(child.text or "")
        elif child.tag == _MAIN + "r":
            parts.extend(t.text or "" for t in child.iter(_MAIN + "t"))
    return "".join(parts)


@functools.lru_cache(maxsize=4096)
def _column_index(letters: str) -> int:
    """0-based column of a cell reference's letters (``AB`` of ``AB12``)."""
    index = 0
    for char in letters.upper():
        index = index * 26 + (ord(char) - 64)
    return index - 1


def _column_letters(index: int) -> str:
    letters, number = "", index + 1
    while number:
        number, remainder = divmod(number - 1, 26)
        letters = chr(65 + remainder) + letters
    return letters


def _sheet_rows(events: Any, shared: list[str], columns: set[str]) -> list[tuple[int, list[str]]]:
    rows: list[tuple[int, list[str]]] = []
    wanted: set[int] | None = None  # the header row is read whole; then only the wanted columns
    wanted_letters: set[str] = set()
    for _, element in events:
        number = int(element.get("r") or (rows[-1][0] + 1 if rows else 1))
        cells: list[str] = []
        for position, cell in enumerate(element.iterchildren(_MAIN + "c")):
            reference = cell.get("r")
            letters = reference.rstrip("0123456789") if reference else ""
            if wanted is not None and letters not in wanted_letters and (letters or position not in wanted):
                continue  # most cells: a string test, no parsing
            column = _column_index(letters) if letters else position
            cells.extend([""] * (column - len(cells)))
            cells.append(_cell_text(cell, shared))
        if any(cells):
            rows.append((number, cells))
            if wanted is None:
                wanted = {index for index, name in enumerate(cells) if name.strip() in columns}
                wanted_letters = {_column_letters(index) for index in wanted}
        element.clear(keep_tail=True)  # the rows read so far are not kept as XML
        while element.getprevious() is not None:
            del element.getparent()[0]
    return rows


def _cell_text(cell: Any, shared: list[str]) -> str:
    value = inline = None
    for child in cell:
        tag = child.tag
        if tag == _MAIN + "f" and child.text:
            return "=" + child.text
        if tag == _MAIN + "v":
            value = child
        elif tag == _MAIN + "is":
            inline = child
    kind = cell.get("t")
    if kind == "inlineStr":
        return _inline_text(inline) if inline is not None else ""
    text = value.text if value is not None and value.text else ""
    if kind == "s" and text:
        return shared[int(text)]
    if kind == "b":
        return "TRUE" if text == "1" else "FALSE"
    return text


def csv_rows(path: Path) -> list[list[str]]:
    # A note of many megabytes must be read to be refused with a reason, not crash the reader.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return list(csv.reader(handle))
    except UnicodeDecodeError as exc:
        raise ReviewError(f"{path} is not UTF-8 text ({exc}); save it as CSV UTF-8") from None
    except csv.Error as exc:
        raise ReviewError(f"{path} is not a readable CSV file ({exc})") from None
