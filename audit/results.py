"""The record stage: result rows -> results.csv, results.xlsx and summary.json.

The row schema is defined once, by :class:`ResultRow`; :data:`RESULT_COLUMNS` is derived from it.
New columns (the evidence stage's ``evidence``, ``evidence_source`` and ``verdict_reason``) are
appended as new fields with defaults at the end, so existing readers that go by column name keep
working. Every text cell, evidence included, goes through :func:`neutralise`.

Everything is written to ``NAME.tmp`` beside the final name and renamed when complete, so a
killed run leaves either a complete file or none under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUS_OK = "ok"
STATUS_ERROR = "error"
VERDICT_AI = "ai-generated"
VERDICT_REAL = "real"
VERDICT_ERROR = "error"
OUTPUT_NAMES = ("results.csv", "results.xlsx", "summary.json")


@dataclass
class ResultRow:
    """One row of results.csv: one discovered file. The field order is the column order."""

    path: str  # relative to its root, POSIX separators
    root: str
    sha256: str = ""
    bytes: int | None = None
    format: str = ""
    width: int | None = None
    height: int | None = None
    status: str = STATUS_OK  # ok | error
    error: str = ""
    prob_ai: float | None = None  # calibrated probability of "AI-generated"
    verdict: str = ""  # ai-generated | real | error
    threshold: float | None = None
    true_label: str = ""  # ai-generated | real | "" when unknown
    model_id: str = ""
    scanned_at: str = ""  # ISO 8601 UTC
    note: str = ""  # e.g. "animated: first of 12 frames scored"
    # The evidence stage (audit.provenance): findings one a line, strongest first; their sources;
    # and what decided the verdict ("model", or the declaration of AI generation that did).
    evidence: str = ""
    evidence_source: str = ""
    verdict_reason: str = ""

    def cells(self) -> list[Any]:
        return [getattr(self, name) for name in RESULT_COLUMNS]


RESULT_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ResultRow))

# Spreadsheets run a cell that starts with one of these as a formula (OWASP "CSV injection").
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
# Characters XML 1.0 (and so XLSX) cannot hold; file names can contain them.
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_XLSX_MAX_CELL_CHARS = 32767


def neutralise(value: Any) -> Any:
    """Prefix a text cell that a spreadsheet would evaluate with a single quote.

    A cell that already starts with a quote gets one more, so that :func:`unneutralise` can
    always strip exactly one (a file really named ``'=x.jpg`` survives the round trip).
    """
    if isinstance(value, str) and value.startswith((*_FORMULA_PREFIXES, "'")):
        return "'" + value
    return value


def unneutralise(text: str) -> str:
    """The cell's original text: undoes :func:`neutralise`."""
    return text[1:] if text.startswith(tuple("'" + prefix for prefix in (*_FORMULA_PREFIXES, "'"))) else text


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return neutralise(value)


def _xlsx_cell(value: Any) -> Any:
    if isinstance(value, str):
        text = _XML_ILLEGAL.sub(lambda m: f"\\x{ord(m.group()):02x}", neutralise(value))
        return text[:_XLSX_MAX_CELL_CHARS]
    return value


def _tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


class ResultWriter:
    """Streams rows to results.csv and results.xlsx (both under temporary names) in one pass.

    Memory stays bounded: the CSV goes straight to disk and openpyxl's write-only mode streams
    the sheet to a temporary file. ``close()`` renames both into place; ``abort()`` removes them.
    """

    def __init__(self, out_dir: Path, write_xlsx: bool = True) -> None:
        from openpyxl import Workbook

        self.csv_path = out_dir / "results.csv"
        self.xlsx_path = out_dir / "results.xlsx" if write_xlsx else None
        self.rows_written = 0
        # utf-8-sig writes the BOM, so Excel reads non-ASCII names correctly.
        self._csv_file = open(_tmp_path(self.csv_path), "w", encoding="utf-8-sig", newline="")
        # QUOTE_MINIMAL quotes any cell holding a comma, quote, CR or LF: newlines in names survive.
        self._csv = csv.writer(self._csv_file, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        self._csv.writerow(RESULT_COLUMNS)
        self._workbook = None
        if self.xlsx_path is not None:
            self._workbook = Workbook(write_only=True)
            self._sheet = self._workbook.create_sheet("results")
            self._sheet.freeze_panes = "A2"
            self._sheet.append(list(RESULT_COLUMNS))

    def write(self, row: ResultRow) -> None:
        cells = row.cells()
        self._csv.writerow([_csv_cell(value) for value in cells])
        if self._workbook is not None:
            self._sheet.append([_xlsx_cell(value) for value in cells])
        self.rows_written += 1

    def finish(self) -> list[tuple[Path, Path]]:
        """Complete both files under their temporary names; return the (tmp, final) renames.

        The caller renames them (:func:`commit`) together with the run's other outputs, so the
        final names appear only once everything is written.
        """
        self._csv_file.close()
        renames = [(_tmp_path(self.csv_path), self.csv_path)]
        if self._workbook is not None and self.xlsx_path is not None:
            last_column = _column_letter(len(RESULT_COLUMNS))
            self._sheet.auto_filter.ref = f"A1:{last_column}{self.rows_written + 1}"
            self._workbook.save(_tmp_path(self.xlsx_path))
            renames.append((_tmp_path(self.xlsx_path), self.xlsx_path))
        return renames

    def close(self) -> None:
        commit(self.finish())

    def abort(self) -> None:
        """Leave no partial file behind (a complete run's outputs or none)."""
        self._csv_file.close()
        if self._workbook is not None:
            # Ends openpyxl's streaming writer (its own temp file goes with it); after finish()
            # the sheet is already closed, and an abort must not fail on that.
            with contextlib.suppress(Exception):
                self._sheet.close()
        discard_partial_outputs(self.csv_path.parent)


def discard_partial_outputs(out_dir: Path) -> None:
    """Remove the temporary files of an unfinished run (also when the writer was never built:
    a signal can arrive between creating the first file and finishing the constructor)."""
    for name in OUTPUT_NAMES:
        _tmp_path(out_dir / name).unlink(missing_ok=True)


# What an earlier run may have left in a reused --out folder that would describe that run, not
# this one: its report (rendered again only when this run renders one) and an XLSX this run
# does not write.
STALE_OUTPUTS = ("results.xlsx", "report.html", "report.pdf", "heatmaps")


def remove_stale_outputs(out_dir: Path, replaced: set[str]) -> None:
    """Remove what an earlier run left in ``out_dir`` that this run does not replace (the names
    in ``replaced``), so that a folder never mixes two runs."""
    for name in STALE_OUTPUTS:
        stale = out_dir / name
        if name in replaced:
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def commit(renames: list[tuple[Path, Path]]) -> None:
    for tmp, final in renames:
        os.replace(tmp, final)


def _column_letter(index: int) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter(index)


def write_json_tmp(path: Path, data: dict[str, Any]) -> tuple[Path, Path]:
    """Write JSON under the temporary name; return the (tmp, final) rename for :func:`commit`."""
    tmp = _tmp_path(path)
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return tmp, path


def read_results_csv(path: Path) -> list[dict[str, str]]:
    """Read results.csv back (for tests and the report stage); cells stay as written."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))
