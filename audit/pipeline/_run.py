"""``audit scan``: one run of discover -> load -> score -> verdict -> record (-> report).

:func:`run_scan` is what the CLI calls; it returns a :class:`ScanOutcome` holding the summary
(also written to summary.json) and the exit code. It raises only errors the user must act on
(:class:`audit.errors.UsageError`: a missing or invalid model, an unusable --labels file, an
unavailable device, a store in use); anything wrong with a file in the archive becomes that
file's row.

A :class:`ScanRun` holds what one run needs (options, model, store, output folder). Its rows
stream, in discovery order, from the scorer or from the run store (audit.pipeline._reuse) through the
verdict rule (audit.verdicts) into the sinks (audit.pipeline._sinks): results files, store, tally, progress.
Outputs are written under temporary names and renamed together at the end, summary.json last:
its presence means the run completed.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, Sequence

from audit.config import ScanOptions
from audit.engines import EngineRequest, Scored, ScoringEngine, create_engine, engine_class
from audit.errors import EXIT_ERRORS, EXIT_FLAGGED, EXIT_OK
from audit.evidence import EvidenceOptions, check_options, load_trust_anchors
from audit.intake import DiscoverOptions, FileRecord, LoadOptions, discover, printable_name
from audit.model import ComputePlan, LoadedModel, load_model, plan_compute, route_policies
from audit.pipeline._checks import check_roots, check_roots_exist, check_writable
from audit.pipeline._labels import Labeller
from audit.pipeline._outputs import ResultWriter, commit, discard_partial_outputs, remove_stale_outputs, write_json_tmp
from audit.pipeline._reuse import (
    BatchCommitter,
    RowsFingerprint,
    StoredRows,
    earlier_outputs,
    planned_rows_fingerprint,
    prefetched,
    reuse_plan,
    scoring_key,
)
from audit.pipeline._rows import make_row
from audit.pipeline._sinks import Progress, ResultFiles, ScannedFile, Sinks, Tally
from audit.pipeline._summary import RunRecordFacts, build_summary, iso_utc, utc_now
from audit.report import write_report
from audit.review import ReviewTally
from audit.rows import STATUS_ERROR
from audit.stopping import raise_if_stop_requested
from audit.store import LEGACY_STORE_FILE_NAME, RunCounts, RunStore, StoreLock, default_store_path, open_locked
from audit.summary import RunSummary
from audit.verdicts import VERDICT_AI


@dataclass
class ScanOutcome:
    out_dir: Path
    summary: RunSummary
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


def exit_code_for(errors: int, flagged: int, fail_on_flagged: bool, uncertain: int = 0,
                  fail_on_uncertain: bool = False) -> int:
    """4 (flagged with --fail-on-flagged, or uncertain with --fail-on-uncertain) wins over 3
    (errors): a caller who asked to fail on them is told first; summary.json has every count."""
    if (fail_on_flagged and flagged) or (fail_on_uncertain and uncertain):
        return EXIT_FLAGGED
    if errors:
        return EXIT_ERRORS
    return EXIT_OK


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
    engine_class(options.engine).check_options(options)  # e.g. Ray installed, before anything is written
    labeller = Labeller(options.labels)
    evidence_options = None
    if options.evidence:
        evidence_options = EvidenceOptions(trust_anchors_pem=load_trust_anchors(options.trust_anchors))
        check_options(evidence_options)  # bad trust anchors are a usage error: no output folder yet
    out_dir = options.out_dir or default_out_dir(started)
    check_writable(out_dir)  # a read-only --out is a usage error before anything is scored
    # The lock comes after every usage check (a usage error writes nothing) and before the output
    # folder: a second run on the same store leaves at once (StoreLocked) and touches nothing.
    store_path = options.store or default_store_path(options.archives)
    check_roots_exist(options.archives, store_path)  # a typo with no store to ask: a usage error, nothing made
    store, lock = open_locked(store_path)
    try:
        _say_where_the_store_is(options, store_path, lock, out_dir)
        run = ScanRun(options, model, store, out_dir, labeller, evidence_options, started, clock, plan,
                      lock.takeover.message(lock.path) if lock.takeover else None)
        return run.perform(run.plan())
    finally:
        store.close()
        lock.release()


@dataclass(frozen=True)
class RunPlan:
    """What a run will do, decided before anything is written or scored: the archive's files in
    order and, per file, the sha256 of its stored row to reuse (None: score it)."""

    records: Sequence[FileRecord]
    reuse: Sequence[str | None]
    key: str  # audit.pipeline._reuse.scoring_key: the model and load options a stored row must match
    load_options: LoadOptions
    baseline: int | None  # the last completed run: what "changed since" refers to
    seconds: dict[str, float]  # discover, store_lookup

    @property
    def to_score(self) -> list[FileRecord]:
        return [record for record, stored in zip(self.records, self.reuse) if stored is None]


@dataclass(frozen=True)
class ScanRun:
    """One run's fixed context: what it was asked (options), what it judges with (model), where it
    remembers (store) and where it writes (out_dir). :meth:`plan` decides, :meth:`perform` does."""

    options: ScanOptions
    model: LoadedModel
    store: RunStore
    out_dir: Path
    labeller: Labeller
    evidence: EvidenceOptions | None
    started: datetime
    clock: float
    compute_plan: ComputePlan | None = None  # chosen early for --device cuda (a usage error writes nothing)
    takeover: str | None = None  # a killed run's lock taken over, in words

    def plan(self) -> RunPlan:
        """Discover the archive and look every file up in the store; writes nothing."""
        options = self.options
        t0 = time.perf_counter()
        discover_options = DiscoverOptions(tuple(options.include), tuple(options.exclude), options.include_hidden)
        records = list(discover(options.archives, discover_options))
        seconds = {"discover": time.perf_counter() - t0}
        check_roots(options, records, self.store)  # an unmounted disk stops the run before it records anything
        rules = self.model.card.uncertainty
        load_options = LoadOptions(preprocessing=self.model.card.preprocessing, max_pixels=options.max_pixels,
                                   draft=options.draft, evidence=self.evidence, routes=route_policies(self.model.routes),
                                   check_degraded=options.check_degraded or bool(rules and rules.check_degraded))
        key = scoring_key(self.model, load_options)
        t0 = time.perf_counter()
        # Decided before scoring starts, so the engine gets exactly the files to decode, in order.
        reuse = [None] * len(records) if options.full else reuse_plan(self.store, records, key)
        seconds["store_lookup"] = time.perf_counter() - t0
        if not records:
            say(options, "audit scan: warning: no image files found under the given archive(s)")
        return RunPlan(records, reuse, key, load_options, self.store.baseline_run(), seconds)

    def perform(self, plan: RunPlan) -> ScanOutcome:
        out_dir_created = not self.out_dir.exists()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        run_id = self.store.start_run(iso_utc(self.started), self.options.to_json(), self.out_dir, out_dir_created)
        engine: ScoringEngine | None = None
        to_score = plan.to_score
        try:
            # A rerun with nothing new never builds the network.
            engine = create_engine(EngineRequest(self.model, plan.load_options, self.options, self.compute_plan)) \
                if to_score else None
        except BaseException as exc:  # a stop before the row loop: no counts yet
            _record_stop(self.store, run_id, exc)
            raise
        try:
            outcome = self._record(plan, run_id, engine, to_score)
        finally:
            if engine is not None:
                engine.close()
        if self.options.report:
            write_report(self.out_dir, self.model, self.options.max_gallery, self.store)
        say(self.options, outcome.tally.closing_line(self.out_dir))
        return outcome

    def _rows(self, plan: RunPlan, labels: Sequence[str] | None, scored: Iterator[Scored],
              committer: BatchCommitter, review: ReviewTally) -> Iterator[ScannedFile]:
        """Every file's row in discovery order: scored now, or re-emitted from the store; the
        reviewers' decisions filled in."""
        stored_rows = StoredRows(self.store, plan.key, plan.reuse)
        for index, (record, reuse_sha256) in enumerate(zip(plan.records, plan.reuse)):
            label = labels[index] if labels is not None else self.labeller.label_for(record)
            if reuse_sha256 is None:
                item = committer.resolve(record, make_row(next(scored), label, self.model, iso_utc(utc_now())))
            else:
                item = stored_rows.next_item(record, label)
            review.apply(item.row)
            yield item
            raise_if_stop_requested()

    def _record(self, plan: RunPlan, run_id: int, engine: ScoringEngine | None,
                to_score: list[FileRecord]) -> ScanOutcome:
        options, records = self.options, plan.records
        tally = Tally()
        sinks = Sinks(tally)
        t0 = time.perf_counter()
        try:
            progress = Progress(len(records), options.progress)
            # Reviewers' decisions by sha256, read once: one taken while the run goes shows the next night.
            review = ReviewTally.from_store(self.store)
            committer = BatchCommitter(self.store, run_id, plan.key, options.batch_size, full=options.full)
            sinks = Sinks(committer, tally, progress)
            if engine is not None:
                engine.start(to_score)
            earlier = earlier_outputs(self.store, plan.baseline)
            results = ResultFiles(ResultWriter(self.out_dir, write_xlsx=options.write_xlsx, earlier=earlier))
            fingerprint = RowsFingerprint(plan.key, review.decisions_up_to)
            # Labels made once (the labeller counts what it could not match): for the plan's
            # fingerprint when nothing is to be scored, else as the rows go.
            labels = None if to_score else [self.labeller.label_for(record) for record in records]
            rows = RowsRecord()
            if (labels is not None and earlier is not None and earlier.rows_fingerprint
                    and planned_rows_fingerprint(self.store, plan.key, review.decisions_up_to, records, plan.reuse,
                                                 labels) == earlier.rows_fingerprint
                    and results.writer.take_rows_from(earlier)):
                # The rows are still made (for the counts, the store, the reviews), not written;
                # they are last night's, fingerprint included.
                rows = RowsRecord(earlier.rows_fingerprint, earlier.run_id)
                sinks = Sinks(committer, tally, progress)
            else:
                # The store first: a batch is committed before its last row is written, and the
                # last batch before the XLSX is made (the slow step a stop may interrupt).
                sinks = Sinks(committer, results, fingerprint, tally, progress)
            stream = iter(engine.score(to_score)) if engine is not None else iter(())
            scored = prefetched(stream, committer, options.batch_size)
            for item in self._rows(plan, labels, scored, committer, review):
                sinks.add(item)
            sinks.close()
            if results.writer.rows_taken:
                results.close()
            else:
                rows = RowsRecord(fingerprint.hexdigest(self.store))  # with what this run stored
            seconds = dict(plan.seconds, load_and_score=time.perf_counter() - t0 - results.seconds,
                           write=results.seconds, csv=results.seconds - results.writer.xlsx_seconds,
                           xlsx=results.writer.xlsx_seconds, store_commit=committer.seconds)
            return self._finish(plan, run_id, engine, tally, review, results, rows, seconds)
        except BaseException as exc:  # also SystemExit from SIGTERM and KeyboardInterrupt
            sinks.abort()
            discard_partial_outputs(self.out_dir)
            # Batches already committed stay in the store (the next run reuses them); the run's
            # record says it is partial and why.
            _record_stop(self.store, run_id, exc, RunCounts(tally.files, tally.scored, tally.files - tally.scored,
                                                            tally.by_verdict[VERDICT_AI],
                                                            tally.by_status[STATUS_ERROR]))
            raise

    def _finish(self, plan: RunPlan, run_id: int, engine: ScoringEngine | None, tally: Tally, review: ReviewTally,
                results: ResultFiles, rows: RowsRecord, seconds: dict[str, float]) -> ScanOutcome:
        """summary.json, then every output renamed into place at once; the store learns what went."""
        options, store = self.options, self.store
        roots = {RunStore.root_key(root) for root in roots_seen_whole(options, plan.records)}
        changes = store.record_changes(run_id, roots, plan.baseline)
        seconds["total"] = time.perf_counter() - self.clock
        # --fail-on-flagged leaves out what reviewers cleared as false positives under this model,
        # --fail-on-uncertain the uncertain rows a reviewer decided.
        exit_code = exit_code_for(tally.by_status[STATUS_ERROR], review.flagged_not_cleared, options.fail_on_flagged,
                                  review.uncertain_not_decided, options.fail_on_uncertain)
        counts = RunCounts(tally.files, tally.scored, tally.files - tally.scored, tally.by_verdict[VERDICT_AI],
                           tally.by_status[STATUS_ERROR])
        compute = engine.compute_record() if engine is not None else self.compute_plan.describe() if self.compute_plan else None
        seconds = {name: seconds[name] for name in ("discover", "store_lookup", "load_and_score", "write", "csv", "xlsx",
                                                   "store_commit", "total")}
        facts = RunRecordFacts(engine.engine_record() if engine is not None else {"name": options.engine}, store.path,
                               run_id, self.takeover, counts, changes, review.to_json(), results.sha256,
                               rows.fingerprint, rows.copied_from_run)
        summary = build_summary(options, self.model, compute, engine.workers if engine is not None else 0, tally,
                                seconds, self.started, exit_code, self.labeller.unmatched, facts)
        renames = [*results.renames, write_json_tmp(self.out_dir / "summary.json", summary.to_json())]
        raise_if_stop_requested()
        remove_stale_outputs(self.out_dir, {final.name for _, final in renames})
        commit(renames)  # summary.json last: its presence means the run is complete
        store.forget_unseen(run_id, roots)
        store.finish_run(run_id, counts, exit_code, partial=False)
        return ScanOutcome(out_dir=self.out_dir, summary=summary, exit_code=exit_code, tally=tally)


@dataclass(frozen=True)
class RowsRecord:
    """What summary.json says of the rows: their fingerprint (audit.pipeline._reuse.RowsFingerprint)
    and the run whose results.csv was copied when they came out unchanged."""

    fingerprint: str | None = None
    copied_from_run: int | None = None


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
    folder; audit.pipeline._checks.check_roots stops such a run) unless --allow-empty-root says so. Otherwise a one-off check of one image would make the nightly store forget, and
    then score again, the whole archive.
    """
    if options.include or options.exclude:
        return set()
    failed = {record.root for record in records if record.error and record.rel_path == "."}
    populated = {record.root for record in records}
    whole = set()
    for archive in options.archives:
        root = printable_name(archive)
        if os.path.isdir(archive) and root not in failed and (root in populated or options.allow_empty_root):
            whole.add(root)
    return whole
