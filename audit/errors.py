"""Exit codes and the one error base the command line catches.

A run goes on past a bad file (its row says why); it stops with a ``UsageError`` when the user
must act: a missing model, an unusable option, a store that another run holds. Each error
carries the exit code the CLI returns for it, so the CLI catches this one type.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 2  # bad option, missing or invalid model, unusable --labels or evidence options
EXIT_ERRORS = 3  # some files could not be scored (their rows say why)
EXIT_FLAGGED = 4  # --fail-on-flagged and something was flagged, or --fail-on-uncertain and something uncertain (4 wins over 3)
EXIT_LOCKED = 5  # the run store is in use by another run (nothing was written)
EXIT_ENGINE_LOST = 6  # --engine ray: the cluster failed mid-run; committed batches stay in the store


class UsageError(Exception):
    """A run cannot start, or cannot go on, until the user acts. The message says what to do."""

    exit_code = EXIT_USAGE
    advice = ""  # said after the message by the CLI (not part of what a run records)


class EngineLost(UsageError):
    """The distributed scoring engine went away mid-run. Unlike most errors of this base, the
    run had started: what was committed stays in the run store and the next run resumes from it."""

    exit_code = EXIT_ENGINE_LOST
    advice = "; the batches committed so far are in the run store and the next run resumes from them"
