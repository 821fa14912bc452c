"""``audit review``: record, import and list reviewers' decisions (the logic is in audit.review._decisions and audit.review._import).

Thin click commands, added to the ``audit`` group by audit.cli._app. Exit codes as for every audit
command: 0 done (an import that ignored some rows says which and why), 2 the user must act
(no run store, a file that is not a results file or the report's export, an unknown sha256 or
decision given to ``set``).
"""

from __future__ import annotations

from pathlib import Path

import click

from audit.cli._support import fail, open_store
from audit.errors import UsageError
from audit.store import RunStore, reviewed_sha256s_starting

_STORE_OPTION = click.option(
    "--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The run store the scans used. Default: the store of --archive (the rule `audit scan` follows), else the "
         "one a results file's summary.json names, else the only run store kept by default.")
_ARCHIVE_OPTION = click.option(
    "--archive", "archives", multiple=True, type=click.Path(path_type=str), metavar="ARCHIVE",
    help="An archive the scans used (repeat as given to `audit scan`): its default run store.")


def _review_store(store_path: Path | None, archives: tuple[str, ...], results_file: Path | None = None) -> RunStore:
    """The run store by the scan's rule, else the only run store kept by default."""
    return open_store(store_path, archives, results_file=results_file, only_store_if_one=True,
                      archives_hint=" with --archive")


_BY_OPTION = click.option(
    "--by", "by", default=None, metavar="NAME",
    help="Who decided. Default: a decided_by column (the report's export), else your login name ($USER).")


@click.group()
def review() -> None:
    """Reviewers' decisions on flagged images, kept by content (sha256) in the run store."""


@review.command("set")
@click.argument("target", metavar="SHA256|PATH")
@click.argument("decision", type=click.Choice(("confirmed-ai", "false-positive", "unsure")))
@click.option("--note", default="", help="Why (free text, at most 2000 characters).")
@_BY_OPTION
@_STORE_OPTION
@_ARCHIVE_OPTION
def set_command(target: str, decision: str, note: str, by: str | None, store_path: Path | None,
                archives: tuple[str, ...]) -> None:
    """Record DECISION for the image with this sha256, or for the bytes of the file at PATH."""
    from audit.review import set_decision

    store = _review_store(store_path, archives)
    try:
        made = set_decision(store, target, decision, note=note, by=by)
    except UsageError as exc:
        raise fail(exc) from None
    finally:
        store.close()
    click.echo(f"{made.sha256}: {made.decision} by {made.decided_by} at {made.decided_at}"
               f" (model {made.model_id or 'unknown'})")


@review.command("import")
@click.argument("file", type=click.Path(path_type=Path), metavar="FILE.xlsx|FILE.csv")
@_BY_OPTION
@_STORE_OPTION
@_ARCHIVE_OPTION
def import_command(file: Path, by: str | None, store_path: Path | None, archives: tuple[str, ...]) -> None:
    """Read the review and review_note columns of a results.xlsx/results.csv (or the CSV the HTML
    report exports) and record what is new or changed, all in one transaction."""
    from audit.review import import_decisions

    store = _review_store(store_path, archives, results_file=file)
    try:
        outcome = import_decisions(store, file, by=by)
    except UsageError as exc:
        raise fail(exc) from None
    finally:
        store.close()
    for line in outcome.lines():
        click.echo(line)


@review.command("list")
@click.option("--history", "history", default=None, metavar="SHA256",
              help="Every decision recorded for this sha256 (or a unique prefix of it), oldest first.")
@_STORE_OPTION
@_ARCHIVE_OPTION
def list_command(history: str | None, store_path: Path | None, archives: tuple[str, ...]) -> None:
    """The current decision of every reviewed image, newest first (or one image's history)."""
    from audit.review import LIST_HEADER, current_decisions, decision_history, describe_decision
    from audit.store import paths_by_sha256

    store = _review_store(store_path, archives)
    try:
        paths = paths_by_sha256(store)
        if history is None:
            decisions = sorted(current_decisions(store).values(), key=lambda d: (d.decided_at, d.id), reverse=True)
            table = [LIST_HEADER] + [describe_decision(d, paths.get(d.sha256, "")) for d in decisions]
        else:
            sha256 = _unique_sha256(store, history)
            table = [LIST_HEADER + ["source"]] + [describe_decision(d, paths.get(d.sha256, ""), with_source=True)
                                                   for d in decision_history(store, sha256)]
    finally:
        store.close()
    if len(table) == 1:
        click.echo("no decisions recorded" + (f" for {history}" if history else ""))
        return
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def _unique_sha256(store: RunStore, prefix: str) -> str:
    text = prefix.strip().lower()
    if len(text) < 8 or any(c not in "0123456789abcdef" for c in text):
        raise fail(f"{prefix!r}: give a sha256 or at least its first 8 hex digits")
    found = reviewed_sha256s_starting(store, text)
    if len(found) > 1:
        raise fail(f"{prefix!r} is the start of more than one reviewed sha256; give more digits")
    if not found:
        raise fail(f"no decision recorded for {prefix!r}")
    return found[0]
