"""The ``audit`` command line: thin click commands that parse options and call the stages.

Exit codes (also in README.md): 0 clean run; 2 usage error (bad option, missing or invalid
model, unusable --labels); 3 some files could not be scored (their rows say why); 4 with
--fail-on-flagged, something was flagged as AI-generated (4 wins over 3); 5 the run store is
in use by another run (nothing was written); 6 with --engine ray, the cluster failed mid-run
(committed batches stay in the run store; the next run resumes); 7 no space left on the device
(nothing replaced; committed batches stay); 8 the run store is damaged (nothing written to it);
9 an archive root is gone or empty while the store knows files under it (an unmounted disk).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import click

from audit import __version__
from audit.cli._support import fail, open_store
from audit.config import ENGINE_CHOICES, ScanOptions
from audit.errors import UsageError
from audit.intake import DEFAULT_MAX_PIXELS
from audit.model import DEFAULT_BATCH_SIZE, DEFAULT_MODEL_PATH, DEVICE_CHOICES, PRECISION_CHOICES
from audit.pipeline import run_scan
from audit.stopping import stop_on_signals


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="audit")
def main() -> None:
    """Audit image archives for AI-generated images."""


@main.command()
@click.argument("archives", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder. Default: reports/<run-id>/ (run id = UTC start time).")
@click.option("--model", "model_path", type=click.Path(path_type=str), default=None,
              help=f"A shipped model's NAME (see `audit models`) or a model file (NAME.json / NAME.safetensors). Default: {DEFAULT_MODEL_PATH.stem}.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
              help="auto takes CUDA when a GPU is present.")
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
              help="auto: fp16 autocast on CUDA; on the CPU fp32, or bf16 when the model card was validated in bf16 and the CPU has native bf16.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decode worker processes (0: decode in the main process). Default: half the cores (at most 4) on CPU, cores-1 (at most 8) on CUDA.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--include", multiple=True, metavar="GLOB",
              help="Only files matching GLOB (repeatable). Without '/' a glob matches the file name, with '/' the path relative to the root.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files and folders matching GLOB (repeatable).")
@click.option("--include-hidden", is_flag=True, help="Also scan hidden files and folders (names starting with '.').")
@click.option("--labels", default=None, metavar="folders|CSV",
              help="Ground truth: 'folders' (REAL/FAKE folder names) or a CSV file of path,label.")
@click.option("--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True,
              help="Refuse images with more pixels than this before decoding them (decompression bombs).")
@click.option("--fail-on-flagged", is_flag=True,
              help="Exit with 4 when any image is flagged as AI-generated (uncertain images do not count).")
@click.option("--fail-on-uncertain", is_flag=True,
              help="Exit with 4 when any image is uncertain (the model cannot judge it) and no reviewer has decided it.")
@click.option("--check-degraded", is_flag=True,
              help="Also score a degraded copy of each image (0.5x, JPEG q75); a verdict that flips is uncertain. "
              "Costs about one more decode and scoring pass (docs/performance.md).")
@click.option("--quiet", "-q", is_flag=True, help="No progress and no closing line on stderr.")
@click.option("--no-report", is_flag=True, help="Skip report.html/report.pdf (render later with `audit report OUT`).")
@click.option("--max-gallery", type=click.IntRange(min=0), default=200, show_default=True,
              help="Flagged images shown in the report, most confident first; results.csv lists them all.")
@click.option("--no-evidence", is_flag=True,
              help="Do not read provenance metadata (C2PA, generator text, EXIF/XMP); the model alone decides.")
@click.option("--trust-anchors", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
              metavar="FILE.pem", help="PEM root certificates a C2PA signer may chain to. Default: no trust list "
              "(nothing is downloaded; signers are reported as not checked against a trust list).")
@click.option("--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Run store (SQLite) for incremental scans, resume and run history. Default: one per set of "
              "archives, under $AUDIT_STATE_DIR (else ~/.local/state/ai-image-audit)/stores/; printed at the start.")
@click.option("--full", is_flag=True, help="Score every file again, even those the run store already has results for.")
@click.option("--allow-empty-root", is_flag=True,
              help="An archive folder with no image file, while the run store knows files under it, is taken as "
              "emptied (its files are reported deleted) instead of stopping the run as an unmounted disk (exit 9).")
@click.option("--no-xlsx", is_flag=True, help="Write results.csv but not results.xlsx (an unchanged rerun copies the last run's XLSX).")
@click.option("--engine", type=click.Choice(ENGINE_CHOICES), default="local", show_default=True,
              help="Where images are decoded and scored: this machine, or a Ray cluster (pip install 'ai-image-audit[ray]'; docs/scale-out.md).")
@click.option("--ray-address", default="auto", show_default=True, metavar="auto|HOST:PORT|local",
              help="--engine ray: the running cluster (auto), a head's GCS address, or a private one-machine cluster (local).")
@click.option("--ray-actors", type=click.IntRange(min=1), default=None,
              help="--engine ray: scoring actors. Default: one per --ray-gpus-per-actor GPUs, else one per node.")
@click.option("--ray-gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="--engine ray: GPUs each scoring actor reserves (0: score on CPUs).")
@click.option("--ray-decode-cpus", type=click.IntRange(min=1), default=None,
              help="--engine ray: decode tasks running at once (one CPU each). Default: as many as the cluster's CPUs allow.")
def scan(archives: tuple[str, ...], out_dir: Path | None, model_path: str | None, device: str, precision: str,
         workers: int | None, batch_size: int, include: tuple[str, ...], exclude: tuple[str, ...],
         include_hidden: bool, labels: str | None, max_pixels: int, fail_on_flagged: bool, fail_on_uncertain: bool,
         check_degraded: bool, quiet: bool,
         no_report: bool, max_gallery: int, no_evidence: bool, trust_anchors: str | None, store_path: Path | None,
         full: bool, allow_empty_root: bool, no_xlsx: bool, engine: str, ray_address: str, ray_actors: int | None,
         ray_gpus_per_actor: float, ray_decode_cpus: int | None) -> None:
    """Score every image under ARCHIVE... and write results.csv, results.xlsx and summary.json."""
    options = ScanOptions(
        archives=archives, out_dir=out_dir, model_path=model_path, device=device, precision=precision,
        workers=workers, batch_size=batch_size, include=include, exclude=exclude,
        include_hidden=include_hidden, labels=labels, max_pixels=max_pixels,
        fail_on_flagged=fail_on_flagged, fail_on_uncertain=fail_on_uncertain, check_degraded=check_degraded,
        progress="none" if quiet else "auto",
        report=not no_report, max_gallery=max_gallery, evidence=not no_evidence, trust_anchors=trust_anchors,
        store=store_path, full=full, allow_empty_root=allow_empty_root, write_xlsx=not no_xlsx, engine=engine,
        ray_address=ray_address,
        ray_actors=ray_actors, ray_gpus_per_actor=ray_gpus_per_actor, ray_decode_cpus=ray_decode_cpus,
    )
    with stop_on_signals():  # SIGTERM/SIGINT: partial outputs removed, run marked partial, exit 128 + signal
        try:
            outcome = run_scan(options)
        except UsageError as exc:
            raise fail(exc) from None
    sys.exit(outcome.exit_code)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=str), default=None,
              help="Model for the Grad-CAM heatmaps. Default: the one named in RUN_DIR/summary.json.")
@click.option("--max-gallery", type=click.IntRange(min=0), default=200, show_default=True,
              help="Show at most N flagged images (most confident first); results.csv lists them all.")
def report(run_dir: Path, model_path: str | None, max_gallery: int) -> None:
    """Render RUN_DIR/report.html and report.pdf again from its results (nothing is rescored)."""
    from audit.report import render_report

    try:
        html_path, pdf_path = render_report(run_dir, model=model_path, max_gallery=max_gallery)
    except UsageError as exc:
        raise fail(exc) from None
    click.echo(f"wrote {html_path}")
    click.echo(f"wrote {pdf_path}")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "model_path", type=click.Path(path_type=str), default=None,
              help=f"A shipped model's NAME or a model file. Default: {DEFAULT_MODEL_PATH.stem}.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/explain"),
              show_default=True, help="Folder for the Grad-CAM overlay PNGs.")
def explain(images: tuple[Path, ...], model_path: str | None, out_dir: Path) -> None:
    """Print the probability and verdict of each IMAGE and write its Grad-CAM overlay PNG.

    Exit code 0, or 3 when some image could not be read.
    """
    try:
        code = print_explanations(images, model_path, out_dir, echo=click.echo)
    except UsageError as exc:
        raise fail(exc) from None
    sys.exit(code)


def print_explanations(images: Sequence[str | Path], model_path: str | Path | None, out_dir: str | Path,
                       echo: Callable[[str], None] = print) -> int:
    """`audit explain`: print prob_ai and verdict per image, write its overlay PNG; return the
    exit code: EXIT_OK when every image was explained, EXIT_ERRORS when some could not be read
    (as the scan's)."""
    from audit.errors import EXIT_ERRORS, EXIT_OK
    from audit.model import load_model, uncertain_reason
    from audit.report import ExplainFailure, explain_images, safe_stem, save_png
    from audit.verdicts import judge

    model = load_model(model_path)
    threshold = model.card.threshold
    failures = 0
    echo(f"model {model.model_id}, threshold {threshold:.3f}, Grad-CAM layer {model.card.gradcam_layer}")
    for index, result in enumerate(explain_images(images, model)):
        if isinstance(result, ExplainFailure):
            failures += 1
            echo(f"{result.path}\terror\t{result.error}")
            continue
        # The scan's verdict rule: a declaration of AI generation in the metadata flags the image
        # whatever the model says (README, "Provenance evidence and the verdict").
        # The band applies here too; novelty and the degraded check are the scan's (results.csv).
        decision = judge(result.prob_ai, threshold, result.evidence,
                         uncertain_reason(result.prob_ai, threshold, model.card.uncertainty))
        overlay_path = save_png(result.overlay, Path(out_dir) / f"{safe_stem(result.path, index)}-gradcam.png")
        reason = "" if decision.reason == "model" else f"\t{decision.reason}"
        echo(f"{result.path}\tprob_ai={result.prob_ai:.4f}\t{decision.verdict}\t{overlay_path}{reason}")
    return EXIT_ERRORS if failures else EXIT_OK


_STORE_OPTION = click.option(
    "--store", "store_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="The run store the scans used. Default: the one `audit scan ARCHIVE...` uses for these archives.")
_ARCHIVES_ARGUMENT = click.argument("archives", nargs=-1, type=click.Path(path_type=str))


@main.command()
def models() -> None:
    """List the models shipped with the tool (use one with --model NAME)."""
    from audit.model import format_summary, read_card, shipped_models, summarize

    found = shipped_models()
    if not found:
        raise fail("no models are installed with this package")
    for card_path in found:
        try:
            click.echo(format_summary(summarize(read_card(card_path), card_path)))
        except UsageError as exc:
            click.echo(f"{card_path.stem}: unusable card: {exc}")


@main.command()
@_ARCHIVES_ARGUMENT
@_STORE_OPTION
@click.option("--changes", "changes_of", type=int, default=None, metavar="RUN",
              help="List every file run RUN found new, changed, deleted or newly flagged (summary.json lists "
                   "the first few of each).")
def runs(archives: tuple[str, ...], store_path: Path | None, changes_of: int | None) -> None:
    """List the runs recorded in the run store of ARCHIVE... (or --store), oldest first."""
    if store_path is None and archives:
        from audit.store import default_store_path

        click.echo(f"run store {default_store_path(archives).absolute()}", err=True)
    store = open_store(store_path, archives)
    try:
        if changes_of is not None:
            if changes_of not in {run.id for run in store.runs()}:
                raise fail(f"the run store records no run {changes_of} (`audit runs` lists them)")
            listed = {kind: store.changes_of(changes_of, kind) for kind in CHANGE_KINDS}
        else:
            table = [RUN_TABLE_HEADER] + [describe_run(run) for run in store.runs()]
    finally:
        store.close()
    if changes_of is not None:
        for kind, files in listed.items():
            click.echo(f"{kind}: {len(files)}")
            for file in files:
                click.echo(f"  {file['verdict'] or '-'}  {file['root']}/{file['path']}  {file['sha256'] or '-'}")
        return
    widths = [max(len(row[i]) for row in table) for i in range(len(RUN_TABLE_HEADER) - 1)]
    for row in table:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


CHANGE_KINDS = ("new", "changed", "deleted", "newly_flagged")
RUN_TABLE_HEADER = ["id", "started", "finished", "files", "scored", "reused", "flagged", "errors", "exit", "partial", "out dir"]


def describe_run(run) -> list[str]:
    """One `audit runs` table row (an audit.store._store.RunRecord)."""

    def cell(value: object) -> str:
        return "-" if value is None else str(value)

    return [str(run.id), run.started_at, cell(run.finished_at), cell(run.files), cell(run.files_scored),
            cell(run.files_reused), cell(run.flagged), cell(run.errors), cell(run.exit_code),
            "yes" if run.partial else "no", run.out_dir + (f" ({run.note})" if run.note else "")]


@main.command()
@_ARCHIVES_ARGUMENT
@_STORE_OPTION
@click.option("--keep", type=click.IntRange(min=1), required=True, help="How many of the newest runs to keep.")
def prune(archives: tuple[str, ...], store_path: Path | None, keep: int) -> None:
    """Remove all but the KEEP newest runs of the run store of ARCHIVE... (or --store): their
    records, and their folders when a run made them. Cached heatmaps and gallery pictures of
    images no file in the store has now are dropped too.

    Only folders the store records as created by its own runs are removed; a folder that existed
    before its run (an --out given twice, say) is left in place.
    """
    from audit.store import StoreLock, find_store, open_existing_store

    try:
        store_path = find_store(store_path, archives)
        if not store_path.is_file():  # before the lock, which would make the store's folder
            raise fail(f"no run store at {store_path} (pass --store PATH)")
        lock = StoreLock(store_path)
        lock.acquire()  # never prune under a running scan
    except UsageError as exc:
        raise fail(exc) from None
    try:
        try:
            store = open_existing_store(store_path)
        except UsageError as exc:
            raise fail(exc) from None
        try:
            store.close_abandoned_runs()
            removed = store.prune(keep)
            forgotten = store.report_cache().forget_images_no_file_has()
        finally:
            store.close()
    finally:
        lock.release()
    for run, what in removed:
        click.echo(f"run {run.id} ({run.started_at}): {what}")
    click.echo(f"pruned {len(removed)} run(s), kept the newest {keep}; "
               f"forgot {forgotten} cached heatmap(s) and picture(s) of images no file has now")


def _add_review_commands() -> None:
    from audit.cli._review import review

    main.add_command(review)  # audit review set|import|list (reviewers' decisions)
    from audit.cli._store import store

    main.add_command(store)  # audit store check


_add_review_commands()

