"""What the click commands share: how an error reaches the user, and how a command finds and
opens the run store it means (audit.store._location's rule, the same as `audit scan`'s)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from audit.errors import EXIT_USAGE, UsageError

if TYPE_CHECKING:
    from audit.store import RunStore


def fail(error: UsageError | str) -> click.exceptions.Exit:
    """Say what the user must do, and exit with the error's code (2 for a message)."""
    advice = error.advice if isinstance(error, UsageError) else ""
    click.echo(f"audit: error: {error}{advice}", err=True)
    return click.exceptions.Exit(error.exit_code if isinstance(error, UsageError) else EXIT_USAGE)


def open_store(store_path: Path | None, archives: tuple[str, ...], **find: object) -> RunStore:
    """The existing run store of --store or ARCHIVE... (``find``: audit.store._location.find_store's
    options); a command that reads or records decisions never creates one."""
    from audit.store import find_store, open_existing_store

    try:
        return open_existing_store(find_store(store_path, archives, **find))  # type: ignore[arg-type]
    except UsageError as exc:
        raise fail(exc) from None
