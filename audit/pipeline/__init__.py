"""The run: options -> a plan (what to score, reuse or copy) -> its execution, streaming each file's
row in discovery order through the verdict rule into the sinks (CSV/XLSX, the store, the tally),
then summary.json, written last as the completion marker.
"""

from __future__ import annotations

from audit.pipeline._labels import Labeller, LabelsError
from audit.pipeline._outputs import ResultWriter, commit, write_json_tmp, write_xlsx_from_csv
from audit.pipeline._run import run_scan

__all__ = ["Labeller", "LabelsError", "ResultWriter", "commit", "run_scan", "write_json_tmp", "write_xlsx_from_csv"]
