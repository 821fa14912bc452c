"""``audit store check``: what SQLite finds in a run store, and setting a damaged one aside."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from audit.cli._support import fail
from audit.errors import EXIT_OK, EXIT_STORE_DAMAGED, UsageError


@click.group()
def store() -> None:
    """The run store: check it, set a damaged one aside."""


@store.command()
@click.argument("archives", nargs=-1, type=click.Path(path_type=str))
@click.option("--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The run store the scans used. Default: the one `audit scan ARCHIVE...` uses for these archives.")
@click.option("--set-aside", is_flag=True,
              help="When it is damaged, rename it (and its -wal/-shm) to NAME.damaged-<UTC time>, kept for "
              "inspection; the next scan starts a new store (every file is scored again).")
def check(archives: tuple[str, ...], store_path: Path | None, set_aside: bool) -> None:
    """Run SQLite's integrity_check on the run store of ARCHIVE... (or --store), without writing to it.

    Exit code 0 when it is sound (or was set aside), 8 when it is damaged.
    """
    from audit.store import StoreLock, find_store, store_findings
    from audit.store import set_aside as move_aside

    try:
        path = find_store(store_path, archives)
    except UsageError as exc:
        raise fail(exc) from None
    if not path.is_file():
        raise fail(f"no run store at {path} (pass --store PATH)")
    lock = StoreLock(path)
    try:
        lock.acquire()  # never judge nor move a store a scan is writing
    except UsageError as exc:
        raise fail(exc) from None
    try:
        findings = store_findings(path, full=True)
        if findings == ["ok"]:
            click.echo(f"{path}: sound (SQLite integrity_check: ok)")
            sys.exit(EXIT_OK)
        click.echo(f"{path}: damaged; SQLite integrity_check finds:")
        for finding in findings:
            click.echo(f"  {finding}")
        if not set_aside:
            click.echo(f"nothing was changed; `audit store check --store {path} --set-aside` moves it aside so the next "
                       f"scan starts a new store", err=True)
            sys.exit(EXIT_STORE_DAMAGED)
        moved = move_aside(path)
        click.echo(f"moved to {moved} (kept for inspection); the next scan starts a new run store at {path} "
                   f"and scores every file again")
    finally:
        lock.release()
