"""``audit scan``: one run of discover -> load -> score -> verdict -> record (-> report).

:func:`run_scan` is what the CLI calls; it returns a :class:`ScanOutcome` holding the summary
(also written to summary.json) and the exit code. It raises only errors the user must act on
(:class:`audit.errors.UsageError`: a missing or invalid model, an unusable --labels file, an
unavailable device, a store in use); anything wrong with a file in the archive becomes that
file's row.

A :class:`ScanRun` holds what one run needs (options, model, store, output folder). Its rows
stream, in discovery order, from the scorer or from the run store (audit.reuse) through the
verdict rule (audit.verdicts) into the sinks (audit.sinks): results files, store, tally, progress.
Outputs are written under temporary names and renamed together at the end, summary.json last:
its presence means the run completed.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Sequence

from audit.compute import DEFAULT_BATCH_SIZE, ComputePlan, default_workers, plan_compute
from audit.discover import DiscoverOptions, FileRecord, discover, printable_name
from audit.errors import EXIT_ENGINE_LOST, EXIT_ERRORS, EXIT_FLAGGED, EXIT_OK, UsageError
from audit.labels import Labeller
from audit.loading import DEFAULT_MAX_PIXELS, LoadOptions
from audit.model import LoadedModel, load_model
from audit.provenance_c2pa import EvidenceOptions, check_options, load_trust_anchors
from audit.provenance_findings import evidence_cell, evidence_sources
from audit.report_process import ReportJob, ReportProcess, worth_a_process
from audit.report_reuse import write_report
from audit.results import STATUS_ERROR, STATUS_OK, ResultRow, ResultWriter, commit, discard_partial_outputs, \
    remove_stale_outputs, write_json_tmp
from audit.reuse import BatchCommitter, RowsFingerprint, StoredRows, earlier_outputs, planned_rows_fingerprint, \
    prefetched, reuse_plan, scoring_key
from audit.review import ReviewTally
from audit.run_summary import build_summary, iso_utc, store_summary, utc_now
from audit.scoring import Scored, Scorer, score_records
from audit.sinks import Progress, ResultFiles, ScannedFile, Sinks, Tally
from audit.stopping import raise_if_stop_requested
from audit.store import RunCounts, RunStore, open_locked
from audit.store_location import LEGACY_STORE_FILE_NAME, default_store_path
from audit.store_lock import StoreLock
from audit.verdicts import VERDICT_AI, VERDICT_ERROR, judge

ENGINE_CHOICES = ("local", "ray")


class EngineLost(UsageError):
    """The distributed scoring engine went away mid-run. Unlike most errors of this base, the
    run had started: what was committed stays in the run store and the next run resumes from it."""

    exit_code = EXIT_ENGINE_LOST
    advice = "; the batches committed so far are in the run store and the next run resumes from them"


@dataclass
class ScanOptions:
    archives: tuple[str, ...]
    out_dir: Path | None = None  # default: reports/<run-id>/
    model_path: str | None = None  # default: audit.model.DEFAULT_MODEL_PATH
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None  # default: compute.default_workers
    batch_size: int = DEFAULT_BATCH_SIZE
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    labels: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    fail_on_flagged: bool = False
    progress: str = "auto"  # auto: a bar on a terminal, log lines otherwise; none: quiet
    draft: bool = True  # JPEG draft decoding (the benchmark turns it off to compare)
    write_xlsx: bool = True
    report: bool = True  # render report.html / report.pdf (audit.report) after the results
    max_gallery: int = 200  # flagged images shown in the report (most confident first)
    evidence: bool = True  # read provenance metadata (audit.provenance); off: the model alone decides
    trust_anchors: str | None = None  # PEM file of C2PA trust anchors; None: no trust list
    store: Path | None = None  # the run store (audit.store); default: beside the run folder
    full: bool = False  # score every file again instead of reusing the store's results
    engine: str = "local"  # local: this process and its DataLoader; ray: a Ray cluster (audit.ray_engine)
    ray_address: str = "auto"  # auto | HOST:PORT | local
    ray_actors: int | None = None
    ray_gpus_per_actor: float = 0.0
    ray_decode_cpus: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out_dir"] = str(self.out_dir) if self.out_dir else None
        data["store"] = str(self.store) if self.store else None
        data["archives"] = list(self.archives)
        data["include"], data["exclude"] = list(self.include), list(self.exclude)
        return data


@dataclass
class ScanOutcome:
    out_dir: Path
    summary: dict[str, Any]
    exit_code: int
    tally: Tally | None = None


def say(options: ScanOptions, text: str) -> None:
    """A line on stderr, unless the run is quiet."""
    if options.progress != "none":
        print(text, file=sys.stderr, flush=True)


def default_out_dir(started: datetime, base: Path = Path("reports")) -> Path:
    """reports/<run-id>/, the run id being the UTC start time; never an existing folder."""
    run_id = started.strftime("%Y%m%dT%H%M%SZ")
    candidate, n = base / run_id, 1
    while candidate.exists():
        n += 1
        candidate = base / f"{run_id}-{n}"
    return candidate


def exit_code_for(errors: int, flagged: int, fail_on_flagged: bool) -> int:
    """4 (flagged, with --fail-on-flagged) wins over 3 (errors): a caller who asked to fail on
    flagged images is told about them first; summary.json has both counts."""
    if fail_on_flagged and flagged:
        return EXIT_FLAGGED
    if errors:
        return EXIT_ERRORS
    return EXIT_OK


def make_row(scored: Scored, true_label: str, model: LoadedModel, scanned_at: str) -> ResultRow:
    result, record = scored.result, scored.result.record
    threshold = model.card.threshold
    row = ResultRow(
        path=record.rel_path,
        root=record.root,
        sha256=result.sha256,
        bytes=result.n_bytes,
        format=result.format,
        width=result.width,
        height=result.height,
        threshold=threshold,
        true_label=true_label,
        model_id=model.model_id,
        scanned_at=scanned_at,
        note=result.note,
    )
    if scored.prob_ai is None:
        row.status, row.error, row.verdict = STATUS_ERROR, result.error or "not scored", VERDICT_ERROR
    else:
        row.status, row.prob_ai = STATUS_OK, scored.prob_ai
        # prob_ai stays the model's; a declaration of AI generation can still flag the image.
        decision = judge(scored.prob_ai, threshold, result.evidence)
        row.verdict = decision.verdict
        row.verdict_reason = decision.reason
    row.evidence, row.evidence_source = evidence_cell(result.evidence), evidence_sources(result.evidence)
    return row


# --------------------------------------------------------------------------- the run


def run_scan(options: ScanOptions, model: LoadedModel | None = None) -> ScanOutcome:
    """Scan the archives and write results.csv, results.xlsx and summary.json."""
    started, clock = utc_now(), time.perf_counter()
    # Lazy: the network is built (and torch imported) only when some file needs scoring.
    model = model or load_model(options.model_path, lazy=True)
    # --device cuda without a GPU is a usage error before anything is written; otherwise the
    # device is chosen when there is something to score.
    # (With --engine ray the scoring actors' GPUs are --ray-gpus-per-actor; the driver needs none.)
    plan = (plan_compute(options.device, options.precision, model.card.compute_dtype)
            if options.device == "cuda" and options.engine == "local" else None)
    if options.engine == "ray":  # Ray installed and its options sane, before anything is written
        from audit.ray_engine import check_settings, engine_settings

        check_settings(engine_settings(options))
    labeller = Labeller(options.labels)
    evidence_options = None
    if options.evidence:
        evidence_options = EvidenceOptions(trust_anchors_pem=load_trust_anchors(options.trust_anchors))
        check_options(evidence_options)  # bad trust anchors are a usage error: no output folder yet
    out_dir = options.out_dir or default_out_dir(started)
    # The lock comes after every usage check (a usage error writes nothing) and before the output
    # folder: a second run on the same store leaves at once (StoreLocked) and touches nothing.
    store_path = options.store or default_store_path(options.archives)
    store, lock = open_locked(store_path)
    try:
        _say_where_the_store_is(options, store_path, lock, out_dir)
        run = ScanRun(options, model, store, out_dir, labeller, evidence_options, started, clock, plan,
                      lock.takeover.message(lock.path) if lock.takeover else None)
        return run.execute()
    finally:
        store.close()
        lock.release()


@dataclass
class ScanRun:
    """One run: what it was asked (options), what it judges with (model), where it remembers
    (store) and where it writes (out_dir); the rest is learnt on the way."""

    options: ScanOptions
    model: LoadedModel
    store: RunStore
    out_dir: Path
    labeller: Labeller
    evidence: EvidenceOptions | None
    started: datetime
    clock: float
    plan: ComputePlan | None = None  # chosen when something needs scoring (or --device cuda)
    takeover: str | None = None  # a killed run's lock taken over, in words
    baseline: int | None = None  # the last completed run: what "changed since" refers to
    run_id: int = 0
    key: str = ""  # audit.reuse.scoring_key
    load_options: LoadOptions | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    engine: Any = None  # audit.ray_engine.RayEngine with --engine ray
    scorer: Scorer | None = None
    workers: int = 0
    rows_fingerprint: str | None = None  # of the rows written (audit.reuse.RowsFingerprint)
    rows_copied_from: int | None = None  # the run whose results.csv was copied, rows unchanged

    def execute(self) -> ScanOutcome:
        out_dir_created = not self.out_dir.exists()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.baseline = self.store.baseline_run()
        self.run_id = self.store.start_run(iso_utc(self.started), self.options.to_json(), self.out_dir, out_dir_created)
        # Started first: its imports are made on the other core while this one walks and scores.
        report_process = ReportProcess.start() if self.options.report and worth_a_process() else None
        try:
            try:
                records, reuse = self._discover_and_plan()
                to_score = [record for record, stored in zip(records, reuse) if stored is None]
                if report_process is not None:
                    earlier = self.store.out_dir_of(self.baseline) if self.baseline is not None else None
                    report_process.hint(self.options.labels is not None, bool(to_score),
                                        earlier if earlier is not None and earlier.resolve() != self.out_dir.resolve() else None)
                self._prepare_scoring(to_score)
            except BaseException as exc:  # a stop before the row loop (discovery, lookups): no counts yet
                _record_stop(self.store, self.run_id, exc)
                raise
            try:
                outcome = self._record(records, reuse, to_score)
            finally:
                if self.engine is not None:
                    self.engine.close()
            if self.options.report:
                self._write_report(report_process)
        finally:
            if report_process is not None:
                report_process.close()
        say(self.options, outcome.tally.closing_line(self.out_dir))
        return outcome

    def _write_report(self, report_process: ReportProcess | None) -> None:
        """By the report process when there is one and it does the job; here otherwise, and
        when the network is on a GPU (its Grad-CAM runs there; the child's would not)."""
        quiet = self.options.progress == "none"
        on_gpu = self.plan is not None and self.plan.device.type != "cpu"
        if report_process is not None and not on_gpu and report_process.run(ReportJob(
                out_dir=str(self.out_dir.resolve()), cwd=os.getcwd(), card=self.model.card.to_json(),
                weights=str(self.model.weights_path.resolve()), max_gallery=self.options.max_gallery, quiet=quiet,
                store=str(self.store.path.resolve()), baseline=self.baseline)):
            return
        write_report(self.out_dir, self.model, self.options.max_gallery, quiet, self.store, self.baseline)

    def _discover_and_plan(self) -> tuple[list[FileRecord], list[str | None]]:
        """The archive's files in order, and per file the sha256 of its stored row (None: score it)."""
        options = self.options
        t0 = time.perf_counter()
        discover_options = DiscoverOptions(tuple(options.include), tuple(options.exclude), options.include_hidden)
        records = list(discover(options.archives, discover_options))
        self.seconds["discover"] = time.perf_counter() - t0
        self.load_options = LoadOptions(preprocessing=self.model.card.preprocessing, max_pixels=options.max_pixels,
                                        draft=options.draft, evidence=self.evidence)
        self.key = scoring_key(self.model, self.load_options)
        t0 = time.perf_counter()
        # Decided before scoring starts, so the DataLoader gets exactly the files to decode, in
        # discovery order.
        reuse = [None] * len(records) if options.full else reuse_plan(self.store, records, self.key)
        self.seconds["store_lookup"] = time.perf_counter() - t0
        if not records:
            say(options, "audit scan: warning: no image files found under the given archive(s)")
        return records, reuse

    def _prepare_scoring(self, to_score: Sequence[FileRecord]) -> None:
        """The engine or the local scorer; a rerun with nothing new never builds the network."""
        options = self.options
        if to_score and options.engine == "ray":  # the hook: only files to score go to the cluster
            from audit.ray_engine import RayEngine, engine_settings

            self.engine = RayEngine(engine_settings(options), self.model, self.load_options, options.batch_size,
                                    options.device, options.precision)
        elif to_score:
            self.plan = self.plan or plan_compute(options.device, options.precision, self.model.card.compute_dtype)
            self.workers = options.workers if options.workers is not None else default_workers(self.plan.device)
            self.scorer = Scorer(self.model, self.plan)

    def _scored(self, to_score: Sequence[FileRecord]) -> Iterator[Scored]:
        if self.engine is not None:
            return iter(self.engine.score(to_score))
        if self.scorer is None:
            return iter(())
        return iter(score_records(to_score, self.scorer, self.load_options, self.options.batch_size, self.workers))

    def _rows(self, records: Sequence[FileRecord], reuse: Sequence[str | None], labels: Sequence[str] | None,
              scored: Iterator[Scored], committer: BatchCommitter, review: ReviewTally) -> Iterator[ScannedFile]:
        """Every file's row in discovery order: scored now, or re-emitted from the store; the
        reviewers' decisions filled in."""
        stored_rows = StoredRows(self.store, self.key, reuse)
        for index, (record, reuse_sha256) in enumerate(zip(records, reuse)):
            label = labels[index] if labels is not None else self.labeller.label_for(record)
            if reuse_sha256 is None:
                item = committer.resolve(record, make_row(next(scored), label, self.model, iso_utc(utc_now())))
            else:
                item = stored_rows.next_item(record, label)
            review.apply(item.row)
            yield item
            raise_if_stop_requested()

    def _record(self, records: list[FileRecord], reuse: list[str | None], to_score: list[FileRecord]) -> ScanOutcome:
        options = self.options
        tally = Tally()
        sinks = Sinks(tally)
        t0 = time.perf_counter()
        try:
            progress = Progress(len(records), options.progress)
            # Reviewers' decisions by sha256, read once: one taken while the run goes shows the next night.
            review = ReviewTally.from_store(self.store)
            committer = BatchCommitter(self.store, self.run_id, self.key, options.batch_size, full=options.full)
            sinks = Sinks(committer, tally, progress)
            if self.engine is not None:
                self.engine.start(to_score)
            earlier = earlier_outputs(self.store, self.baseline)
            results = ResultFiles(ResultWriter(self.out_dir, write_xlsx=options.write_xlsx, earlier=earlier))
            fingerprint = RowsFingerprint(self.key, review.decisions_up_to)
            # Labels made once (the labeller counts what it could not match): for the plan's
            # fingerprint when nothing is to be scored, else as the rows go.
            labels = None if to_score else [self.labeller.label_for(record) for record in records]
            if (labels is not None and earlier is not None and earlier.rows_fingerprint
                    and planned_rows_fingerprint(self.store, self.key, review.decisions_up_to, records, reuse, labels)
                    == earlier.rows_fingerprint and results.writer.take_rows_from(earlier)):
                # The rows are still made (for the counts, the store, the reviews), not written;
                # they are last night's, fingerprint included.
                self.rows_copied_from, self.rows_fingerprint = earlier.run_id, earlier.rows_fingerprint
                sinks = Sinks(committer, tally, progress)
            else:
                # The store first: a batch is committed before its last row is written, and the
                # last batch before the XLSX is made (the slow step a stop may interrupt).
                sinks = Sinks(committer, results, fingerprint, tally, progress)
            scored = prefetched(self._scored(to_score), committer, options.batch_size)
            for item in self._rows(records, reuse, labels, scored, committer, review):
                sinks.add(item)
            sinks.close()
            if results.writer.rows_taken:
                results.close()
            else:
                self.rows_fingerprint = fingerprint.hexdigest(self.store)  # with what this run stored
            self.seconds["load_and_score"] = time.perf_counter() - t0 - results.seconds
            self.seconds["write"] = results.seconds
            return self._finish(records, tally, review, results)
        except BaseException as exc:  # also SystemExit from SIGTERM and KeyboardInterrupt
            sinks.abort()
            discard_partial_outputs(self.out_dir)
            # Batches already committed stay in the store (the next run reuses them); the run's
            # record says it is partial and why.
            _record_stop(self.store, self.run_id, exc, RunCounts(tally.files, tally.scored, tally.files - tally.scored,
                                                                 tally.by_verdict[VERDICT_AI],
                                                                 tally.by_status[STATUS_ERROR]))
            raise

    def _finish(self, records: list[FileRecord], tally: Tally, review: ReviewTally, results: ResultFiles) -> ScanOutcome:
        """summary.json, then every output renamed into place at once; the store learns what went."""
        options, store = self.options, self.store
        roots = {RunStore.root_key(root) for root in roots_seen_whole(options, records)}
        changes = store.changes_since(self.run_id, roots, self.baseline)
        self.seconds["total"] = time.perf_counter() - self.clock
        # --fail-on-flagged leaves out what reviewers cleared as false positives under this model.
        exit_code = exit_code_for(tally.by_status[STATUS_ERROR], review.flagged_not_cleared, options.fail_on_flagged)
        counts = RunCounts(tally.files, tally.scored, tally.files - tally.scored, tally.by_verdict[VERDICT_AI],
                           tally.by_status[STATUS_ERROR])
        compute = self.plan.describe() if self.plan else self.engine.compute if self.engine else None
        seconds = {name: self.seconds[name] for name in ("discover", "store_lookup", "load_and_score", "write", "total")}
        summary = build_summary(options, self.model, compute, self.workers, tally, seconds, self.started, exit_code,
                                self.labeller.unmatched)
        summary["engine"] = self.engine.stats.to_json() if self.engine else {"name": options.engine}
        summary.update(store_summary(store.path, self.run_id, counts, changes, options.full))
        summary["store"]["chosen_by"] = "--store" if options.store else "default (follows the archives)"
        summary["store"]["lock_takeover"] = self.takeover
        summary["review"] = review.to_json()
        # Lets the next run check that its rows are these very bytes before it copies the XLSX,
        # and, with the rows' fingerprint, copy results.csv without making its rows.
        summary["output_sha256"] = results.sha256
        summary["rows_fingerprint"] = self.rows_fingerprint
        summary["rows_copied_from_run"] = self.rows_copied_from
        renames = [*results.renames, write_json_tmp(self.out_dir / "summary.json", summary)]
        raise_if_stop_requested()
        remove_stale_outputs(self.out_dir, {final.name for _, final in renames})
        commit(renames)  # summary.json last: its presence means the run is complete
        store.forget_unseen(self.run_id, roots)
        store.finish_run(self.run_id, counts, exit_code, partial=False)
        return ScanOutcome(out_dir=self.out_dir, summary=summary, exit_code=exit_code, tally=tally)


def _say_where_the_store_is(options: ScanOptions, store_path: Path, lock: StoreLock, out_dir: Path) -> None:
    """At the start of every run (unless --quiet): which run store, and whether a killed run's
    lock was taken over (that one is said even with --quiet: a night was lost)."""
    if options.progress != "none":
        how = "--store" if options.store else "the default for these archives"
        print(f"audit scan: run store {store_path.absolute()} ({how})", file=sys.stderr, flush=True)
        legacy = out_dir.parent / LEGACY_STORE_FILE_NAME
        if options.store is None and legacy.is_file() and legacy.resolve() != store_path.resolve():
            print(f"audit scan: note: {legacy} (where earlier versions kept the run store) is not used; "
                  f"pass --store {legacy} to go on with it", file=sys.stderr, flush=True)
    if lock.takeover is not None:
        print(f"audit scan: warning: {lock.takeover.message(lock.path)}", file=sys.stderr, flush=True)


def _record_stop(store: RunStore, run_id: int, exc: BaseException, counts: RunCounts | None = None) -> None:
    """Mark the run partial with why it stopped; its committed batches stay for the next run."""
    if isinstance(exc, KeyboardInterrupt):
        code, note = 130, "stopped by SIGINT"
    elif isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else 1
        note = f"stopped by signal {code - 128}" if isinstance(code, int) and code > 128 else "stopped"
    else:
        code, note = None, f"failed: {type(exc).__name__}: {exc}"[:300]
    try:
        store.finish_run(run_id, counts, code, partial=True, note=note, only_if_open=True)
    except Exception:  # noqa: BLE001 - the original exception is what the caller must see
        pass


def roots_seen_whole(options: ScanOptions, records: Sequence[FileRecord]) -> set[str]:
    """The roots under which a file this run did not see may be called deleted.

    Only folders walked whole: not a single file given as a root (its folder's other files were
    never looked at), not a scan narrowed by --include/--exclude, not a root that could not be
    read, and not a root that yielded nothing at all (an unmounted share looks like an empty
    folder). Otherwise a one-off check of one image would make the nightly store forget, and
    then score again, the whole archive.
    """
    if options.include or options.exclude:
        return set()
    failed = {record.root for record in records if record.error and record.rel_path == "."}
    populated = {record.root for record in records}
    whole = set()
    for archive in options.archives:
        root = printable_name(archive)
        if os.path.isdir(archive) and root not in failed and root in populated:
            whole.add(root)
    return whole
