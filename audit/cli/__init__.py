"""The command line: thin click commands (scan, report, explain, models, runs, prune, review) that turn
options into calls and errors into one line on stderr and an exit code.
"""

from __future__ import annotations

from audit.cli._app import main, print_explanations

__all__ = ["main", "print_explanations"]
