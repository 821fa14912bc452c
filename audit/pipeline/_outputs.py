"""The record stage's files: result rows -> results.csv and results.xlsx, then every output
renamed into place together.

Everything is written to ``NAME.tmp`` beside the final name and renamed when complete, so a
killed run leaves either a complete file or none under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.atomic import temporary_sibling
from audit.errors import raise_if_disk_full
from audit.model import file_sha256
from audit.rows import RESULT_COLUMNS, REVIEW_DECISIONS, ResultRow, neutralise
from audit.verdicts import VERDICT_AI

OUTPUT_NAMES = ("results.csv", "results.xlsx", "summary.json")
# Characters XML 1.0 (and so XLSX) cannot hold; file names can contain them.
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_XLSX_MAX_CELL_CHARS = 32767
# Excel's row limit on a sheet, the header row included.
EXCEL_MAX_ROWS = 1_048_576
RESULTS_SHEET, FLAGGED_SHEET = "results", "flagged"
# The rows a reviewer acts on, copied to the first sheet. "uncertain" is matched as text: a verdict
# the rule may give (the model cannot judge), not one every model gives.
FLAGGED_VERDICTS = frozenset({VERDICT_AI, "uncertain"})


def _csv_cells(values: tuple[Any, ...]) -> list[Any]:
    """A row's CSV cells: None empty, floats to 6 decimals, text neutralised."""
    return ["" if value is None else f"{value:.6f}" if isinstance(value, float) else neutralise(value)
            for value in values]


def _xlsx_text(csv_text: str) -> str:
    """A results.csv text cell as an XLSX cell: already neutralised (the CSV's rule is the
    spreadsheet's), with what XML cannot hold escaped and cut to Excel's cell limit."""
    if _XML_ILLEGAL.search(csv_text):
        csv_text = _XML_ILLEGAL.sub(lambda m: f"\\x{ord(m.group()):02x}", csv_text)
    return csv_text[:_XLSX_MAX_CELL_CHARS]


@dataclass(frozen=True)
class EarlierOutputs:
    """An earlier run's results and what that run recorded of them in its summary.json: the
    sha256 of its results.csv and results.xlsx as written, its rows' fingerprint
    (audit.pipeline._reuse.RowsFingerprint; "" when it recorded none) and its id in the run store."""

    folder: Path
    csv_sha256: str
    xlsx_sha256: str | None
    rows_fingerprint: str = ""
    run_id: int | None = None

    @property
    def csv_path(self) -> Path:
        return self.folder / "results.csv"

    @property
    def xlsx_path(self) -> Path:
        return self.folder / "results.xlsx"


class ResultWriter:
    """Streams rows to results.csv, then makes results.xlsx from that CSV.

    Memory stays bounded: the CSV goes straight to disk, and XlsxWriter's constant-memory mode
    streams the sheet to a temporary file. The XLSX is made from the finished CSV rather than row
    by row because writing it is much of a nightly rerun's time (docs/performance.md, "Results files"): when the
    CSV comes out byte for byte the same as the one an earlier run's XLSX was made from, and that
    XLSX is unchanged on disk, it is copied instead. The XLSX therefore holds
    the CSV's values, probabilities to six decimals. Both files are written under temporary names;
    ``finish()`` returns the renames, ``close()`` does them and ``abort()`` removes the files.
    """

    def __init__(self, out_dir: Path, write_xlsx: bool = True, earlier: EarlierOutputs | None = None,
                 max_sheet_rows: int = EXCEL_MAX_ROWS) -> None:
        self.max_sheet_rows = max_sheet_rows
        self.csv_path = out_dir / "results.csv"
        self.xlsx_path = out_dir / "results.xlsx" if write_xlsx else None
        self.earlier = earlier
        self.sha256: dict[str, str] = {}  # of each finished file, by name (for summary.json)
        self.rows_taken = False  # results.csv copied whole from an earlier run (take_rows_from)
        self.xlsx_seconds = 0.0  # making (or copying) results.xlsx
        self._open_csv()

    def _open_csv(self) -> None:
        # utf-8-sig writes the BOM, so Excel reads non-ASCII names correctly.
        self._csv_file = open(self.csv_tmp, "w", encoding="utf-8-sig", newline="")
        # QUOTE_MINIMAL quotes any cell holding a comma, quote, CR or LF: newlines in names survive.
        self._csv = csv.writer(self._csv_file, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        self._csv.writerow(RESULT_COLUMNS)

    def write(self, row: ResultRow) -> None:
        if self.rows_taken:
            raise RuntimeError("rows written to a results.csv taken whole from an earlier run")
        self._csv.writerow(_csv_cells(row.cells()))

    @property
    def csv_tmp(self) -> Path:
        """results.csv under its temporary name, until the run commits it."""
        return temporary_sibling(self.csv_path)

    def take_rows_from(self, earlier: EarlierOutputs) -> bool:
        """results.csv as the earlier run's, byte for byte, when that file is still as that run
        wrote it; False (the CSV left as it was, its header only) otherwise. For a caller that
        has proved tonight's rows would come out the same (audit.pipeline._reuse.RowsFingerprint): copying
        is far cheaper than writing them again (docs/performance.md, "Results files")."""
        self._csv_file.close()
        self.rows_taken = copy_verified(earlier.csv_path, earlier.csv_sha256, self.csv_tmp)
        if not self.rows_taken:
            self._open_csv()
        return self.rows_taken

    def finish(self) -> list[tuple[Path, Path]]:
        """Complete both files under their temporary names; return the (tmp, final) renames.

        The caller renames them (:func:`commit`) together with the run's other outputs, so the
        final names appear only once everything is written.
        """
        csv_tmp = self.csv_tmp
        try:
            self._csv_file.close()
            self.sha256["results.csv"] = file_sha256(csv_tmp)
        except OSError as exc:
            raise_if_disk_full(exc, "results.csv", self.csv_path.parent)
            raise
        renames = [(csv_tmp, self.csv_path)]
        if self.xlsx_path is not None:
            started = time.perf_counter()
            xlsx_tmp = temporary_sibling(self.xlsx_path)
            try:
                if not copy_if_unchanged(self.earlier, self.sha256["results.csv"], xlsx_tmp):
                    write_xlsx_from_csv(csv_tmp, xlsx_tmp, self.max_sheet_rows)
            except OSError as exc:
                raise_if_disk_full(exc, "results.xlsx", self.xlsx_path.parent)
                raise
            self.sha256["results.xlsx"] = file_sha256(xlsx_tmp)
            renames.append((xlsx_tmp, self.xlsx_path))
            self.xlsx_seconds = time.perf_counter() - started
        return renames

    def close(self) -> None:
        commit(self.finish())

    def abort(self) -> None:
        """Leave no partial file behind (a complete run's outputs or none)."""
        with contextlib.suppress(OSError):  # a full disk fails the flush again; the file goes anyway
            self._csv_file.close()
        discard_partial_outputs(self.csv_path.parent)


def copy_if_unchanged(earlier: EarlierOutputs | None, csv_sha256: str, target: Path) -> bool:
    """Copy the earlier XLSX to ``target`` when it was made from these very CSV bytes and nobody
    has edited it since (analysts open these files); False: make a new one."""
    if earlier is None or earlier.xlsx_sha256 is None or earlier.csv_sha256 != csv_sha256:
        return False
    return copy_verified(earlier.xlsx_path, earlier.xlsx_sha256, target)


def copy_verified(source: Path, sha256: str, target: Path) -> bool:
    """``source`` copied to ``target`` when the copy's sha256 is ``sha256``; False (and no
    ``target``) when it is not, or cannot be read."""
    try:
        shutil.copyfile(source, target)
        if file_sha256(target) == sha256:
            return True
    except OSError:
        pass
    target.unlink(missing_ok=True)
    return False


# Columns that hold numbers; the CSV holds them as text, the XLSX as numbers (empty: no value).
_NUMBER_COLUMNS: dict[str, type] = {"bytes": int, "width": int, "height": int, "prob_ai": float, "threshold": float,
                                    "novelty": float}


def sheet_name(base: str, index: int) -> str:
    """``results``, ``results-2``, ``results-3``...: the sheets one series of rows fills in turn."""
    return base if index == 0 else f"{base}-{index + 1}"


class _SheetSeries:
    """Rows written to ``base``, continued on ``base-2``, ``base-3``... when a sheet is full; each
    sheet with the header, a frozen header row, an autofilter and the review drop-down."""

    def __init__(self, workbook: Any, base: str, header: list[str], max_rows: int) -> None:
        if max_rows < 2:
            raise ValueError("a sheet must hold the header and at least one row")
        self.workbook, self.base, self.header, self.max_rows = workbook, base, header, max_rows
        self.sheets: list[Any] = []
        self.rows = 0  # data rows on the current sheet
        self.total = 0
        self._open()

    def _open(self) -> None:
        sheet = self.workbook.add_worksheet(sheet_name(self.base, len(self.sheets)))
        sheet.freeze_panes(1, 0)
        _checked(sheet.write_row(0, 0, self.header), sheet, 0)
        self.sheets.append(sheet)
        self.rows = 0

    def _seal(self) -> None:
        sheet = self.sheets[-1]
        sheet.autofilter(0, 0, max(self.rows, 1), len(self.header) - 1)
        _add_review_drop_down(sheet, self.rows)

    def append(self, values: list[Any]) -> None:
        if self.rows + 1 >= self.max_rows:
            self._seal()
            self._open()
        self.rows += 1
        self.total += 1
        _checked(self.sheets[-1].write_row(self.rows, 0, values), self.sheets[-1], self.rows)

    def close(self) -> None:
        self._seal()


def _checked(status: int, sheet: Any, row: int) -> None:
    """XlsxWriter returns an error code instead of raising (-1: past the sheet's limits), and
    leaves the rest of the row unwritten: a silent loss, refused here."""
    if status not in (0, None):
        raise RuntimeError(f"results.xlsx: row {row + 1} of sheet {sheet.name} was not written (XlsxWriter {status})")


def write_xlsx_from_csv(csv_path: Path, xlsx_path: Path, max_sheet_rows: int = EXCEL_MAX_ROWS) -> dict[str, int]:
    """results.xlsx with the cells of results.csv: a first sheet ``flagged`` (the rows whose
    verdict a reviewer acts on), then every row on ``results``, continued on ``results-2``... past
    ``max_sheet_rows`` (Excel's limit, the header included); on each sheet a frozen header, an
    autofilter over every column and the review drop-down; numbers as numbers, and text
    neutralised the same way (see :func:`neutralise`). Returns the data rows by sheet kind.

    XlsxWriter in constant-memory mode: rows go to disk as they are written (inline strings, no
    shared-string table kept in memory), faster than openpyxl's write-only mode (docs/performance.md,
    "Results files").
    Its conversions of text that looks like a number, formula or URL are off: a cell holds
    exactly the CSV's text.
    """
    import xlsxwriter
    import xlsxwriter.exceptions

    converters = [_NUMBER_COLUMNS.get(name) for name in RESULT_COLUMNS]
    verdict_column = RESULT_COLUMNS.index("verdict")
    workbook = xlsxwriter.Workbook(str(xlsx_path), {
        "constant_memory": True, "strings_to_numbers": False, "strings_to_formulas": False, "strings_to_urls": False,
        "nan_inf_to_errors": True,  # a NaN probability (a broken model) is a #NUM! cell, not a failed run
    })
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            # Added first, so the first sheet an analyst opens is the short one.
            flagged = _SheetSeries(workbook, FLAGGED_SHEET, header, max_sheet_rows)
            results = _SheetSeries(workbook, RESULTS_SHEET, header, max_sheet_rows)
            for cells in reader:
                values = [None if not text else number(text) if number else _xlsx_text(text)
                          for number, text in zip(converters, cells)]
                results.append(values)
                if len(cells) > verdict_column and cells[verdict_column] in FLAGGED_VERDICTS:
                    flagged.append(values)
        flagged.close()
        results.close()
    except BaseException:
        with contextlib.suppress(Exception):  # its temporary files go; the caller removes the XLSX
            workbook.close()
        raise
    try:
        workbook.close()
    except xlsxwriter.exceptions.FileCreateError as exc:  # XlsxWriter's wrapper of the OSError
        if isinstance(exc.args[0], OSError):
            raise exc.args[0] from exc
        raise
    return {FLAGGED_SHEET: flagged.total, RESULTS_SHEET: results.total}


def _add_review_drop_down(sheet: Any, rows: int) -> None:
    """A drop-down of the decisions on the ``review`` column (audit review import reads it back).
    A typed value outside the list is refused by the spreadsheet; the import checks again."""
    column = RESULT_COLUMNS.index("review")
    sheet.data_validation(1, column, max(rows, 1), column, {
        "validate": "list", "source": list(REVIEW_DECISIONS), "ignore_blank": True,
        "error_title": "review", "error_message": "Pick confirmed-ai, false-positive or unsure (or leave it empty).",
    })


def discard_partial_outputs(out_dir: Path) -> None:
    """Remove the temporary files of an unfinished run (also when the writer was never built:
    a signal can arrive between creating the first file and finishing the constructor)."""
    for name in OUTPUT_NAMES:
        temporary_sibling(out_dir / name).unlink(missing_ok=True)


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


def write_json_tmp(path: Path, data: dict[str, Any]) -> tuple[Path, Path]:
    """Write JSON under the temporary name; return the (tmp, final) rename for :func:`commit`."""
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, path.name, path.parent)
        raise
    return tmp, path
