"""The report: a finished run folder -> metrics, charts, a gallery of flagged images with Grad-CAM,
and ``report.html`` / ``report.pdf``, re-renderable without rescoring.
"""

from __future__ import annotations

from audit import lazy_exports
from audit.report._metrics import compute_metrics, expected_calibration_error
from audit.report._page import render_page

# Imported when first asked for: these pull in torch, pandas or OpenCV.
_LAZY = {
    "MAX_ERRORS_LISTED": "audit.report._data",
    "ReportError": "audit.report._data",
    "read_results": "audit.report._data",
    "read_run": "audit.report._data",
    "ExplainFailure": "audit.report._explain",
    "Explanation": "audit.report._explain",
    "GradCamExplainer": "audit.report._explain",
    "explain_images": "audit.report._explain",
    "gradcam_grid": "audit.report._explain",
    "THUMBNAIL_SIZE": "audit.report._pictures",
    "make_thumbnail": "audit.report._pictures",
    "safe_stem": "audit.report._pictures",
    "save_png": "audit.report._pictures",
    "build_content": "audit.report._render",
    "render_report": "audit.report._render",
    "render_report_files": "audit.report._render",
    "run_files_fetcher": "audit.report._render",
    "write_pdf": "audit.report._render",
    "write_report": "audit.report._render",
}

__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = ["ExplainFailure", "Explanation", "GradCamExplainer", "MAX_ERRORS_LISTED", "ReportError", "THUMBNAIL_SIZE", "build_content", "compute_metrics", "expected_calibration_error", "explain_images", "gradcam_grid", "make_thumbnail", "read_results", "read_run", "render_page", "render_report", "render_report_files", "run_files_fetcher", "safe_stem", "save_png", "write_pdf", "write_report"]
