"""``audit scan``: the orchestration of discover -> load -> score -> record for one run.

:func:`run_scan` is what the CLI calls; it returns a :class:`ScanOutcome` holding the summary
(also written to summary.json) and the exit code. It raises only for usage errors (a missing or
invalid model, an unusable --labels file, an unavailable device); anything wrong with a file in
the archive becomes that file's row.

Outputs are written under temporary names and renamed together at the end, summary.json last:
its presence means the run completed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import audit
from audit.errors import EXIT_ENGINE_LOST, EXIT_ERRORS, EXIT_FLAGGED, EXIT_OK, UsageError
from audit.discover import DiscoverOptions, FileRecord, discover, printable_name
from audit.labels import Labeller
from audit.loading import DEFAULT_MAX_PIXELS, LoadOptions
from audit.model import LoadedModel, load_model
from audit.provenance_c2pa import EvidenceOptions, check_options, load_trust_anchors
from audit.provenance_findings import evidence_cell, evidence_sources
from audit.results import (
    SCORED_COLUMNS,
    STATUS_ERROR,
    STATUS_OK,
    EarlierXlsx,
    ResultRow,
    ResultWriter,
    commit,
    discard_partial_outputs,
    remove_stale_outputs,
    write_json_tmp,
)
from audit.review import ReviewTally
from audit.verdicts import VERDICT_AI, VERDICT_ERROR, VERDICT_REAL, judge
from audit.compute import DEFAULT_BATCH_SIZE, ComputePlan, default_workers, plan_compute
from audit.scoring import Scored, Scorer, score_records
from audit.stopping import raise_if_stop_requested
from audit.store import (
    Changes,
    FileUpdate,
    RunCounts,
    RunStore,
    LEGACY_STORE_FILE_NAME,
    StoredScore,
    StoreLock,
    default_store_path,
    open_locked,
    store_root,
)

ENGINE_CHOICES = ("local", "ray")


class EngineLost(UsageError):
    """The distributed scoring engine went away mid-run. Unlike a usage error, the run had
    started: what was committed stays in the run store and the next run resumes from it."""

    exit_code = EXIT_ENGINE_LOST

    def __str__(self) -> str:
        return f"{super().__str__()}; the batches committed so far are in the run store and the next run resumes from them"


PROGRESS_MODES = ("auto", "bar", "log", "none")
_LOG_EVERY_SECONDS = 10.0


@dataclass
class ScanOptions:
    archives: tuple[str, ...]
    out_dir: Path | None = None  # default: reports/<run-id>/
    model_path: str | None = None  # default: audit.model.DEFAULT_MODEL_PATH
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None  # default: scoring.default_workers
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


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso_utc(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


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


# --------------------------------------------------------------------------- progress


class Progress:
    """A tqdm bar on an interactive stderr, plain periodic lines otherwise, or nothing."""

    def __init__(self, total: int, mode: str) -> None:
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode, self.total, self.done = mode, total, 0
        self.started = self.last_log = time.monotonic()
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="file", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self.last_log >= _LOG_EVERY_SECONDS:
                self.last_log = now
                self.log_line()

    def log_line(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        print(f"audit scan: {self.done}/{self.total} files, {self.done / elapsed:.1f} files/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.mode == "log":
            self.log_line()

    def message(self, text: str) -> None:
        if self.mode != "none":
            print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- rows and counts


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


@dataclass
class Tally:
    files: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: {STATUS_OK: 0, STATUS_ERROR: 0})
    by_verdict: dict[str, int] = field(default_factory=lambda: {VERDICT_AI: 0, VERDICT_REAL: 0, VERDICT_ERROR: 0})
    # confusion[true_label][verdict], for rows whose true label is known
    confusion: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, row: ResultRow) -> None:
        self.files += 1
        self.by_status[row.status] = self.by_status.get(row.status, 0) + 1
        self.by_verdict[row.verdict] = self.by_verdict.get(row.verdict, 0) + 1
        if row.true_label:
            per_label = self.confusion.setdefault(row.true_label, {})
            per_label[row.verdict] = per_label.get(row.verdict, 0) + 1

    def labelled_summary(self) -> dict[str, Any] | None:
        if not self.confusion:
            return None
        scored = sum(n for label, verdicts in self.confusion.items() for v, n in verdicts.items() if v != VERDICT_ERROR)
        correct = sum(verdicts.get(label, 0) for label, verdicts in self.confusion.items())
        return {
            "files": sum(sum(v.values()) for v in self.confusion.values()),
            "scored": scored,
            "correct": correct,
            "accuracy": correct / scored if scored else None,
            "confusion": self.confusion,
        }


# --------------------------------------------------------------------------- the run


def run_scan(options: ScanOptions, model: LoadedModel | None = None) -> ScanOutcome:
    """Scan the archives and write results.csv, results.xlsx and summary.json."""
    started = utc_now()
    clock = time.perf_counter()
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
        return _run_with_store(options, model, plan, labeller, evidence_options, out_dir, store, started, clock,
                               lock.takeover.message(lock.path) if lock.takeover else None)
    finally:
        store.close()
        lock.release()


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


def scoring_key(model: LoadedModel, load_options: LoadOptions) -> str:
    """What a stored result depends on besides the file's bytes: the model (id, calibration,
    threshold, preprocessing), the evidence settings, the decode limits and the row schema.
    Any of them changing means the file is scored again."""
    evidence = load_options.evidence
    parts = {
        "model_id": model.model_id,
        "temperature": model.card.temperature,
        "threshold": model.card.threshold,
        "preprocessing": repr(model.card.preprocessing),
        "evidence": None if evidence is None else hashlib.sha256(evidence.trust_anchors_pem.encode()).hexdigest(),
        "max_pixels": load_options.max_pixels,
        "max_file_bytes": load_options.max_file_bytes,
        "draft": load_options.draft,
        # The review columns are filled afresh each run from the store's decisions: not part of it.
        "columns": SCORED_COLUMNS,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


# The ResultRow fields kept in the store: all but where the file is and its ground truth.
_STORED_FIELDS = tuple(name for name in SCORED_COLUMNS if name not in ("path", "root", "true_label"))


def stored_row(row: ResultRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _STORED_FIELDS}


# Files looked up in the run store per query: under SQLite's old limit of 999 parameters.
LOOKUP_CHUNK = 500


def reuse_plan(store: RunStore, records: Sequence[FileRecord], key: str) -> list[str | None]:
    """Per record, in order: the sha256 of a file whose (root, path, size, mtime) is unchanged
    since a run recorded it and whose bytes have a result under ``key`` (its row is re-emitted);
    None: score the file. Only the sha256 is kept, so memory does not grow with stored rows."""
    plan: list[str | None] = [None] * len(records)
    readable = [index for index, record in enumerate(records) if not record.error and record.size is not None]
    for root, same_root in itertools.groupby(readable, key=lambda index: store_root(records[index].root)):
        indices = list(same_root)
        for start in range(0, len(indices), LOOKUP_CHUNK):
            chunk = indices[start : start + LOOKUP_CHUNK]
            known = store.reusable_files(root, [records[index].rel_path for index in chunk], key)
            for index in chunk:
                record = records[index]
                size, mtime, sha256 = known.get(record.rel_path, (None, None, ""))
                if sha256 and size == record.size and mtime == record.mtime:
                    plan[index] = sha256
    return plan


class StoredRows:
    """The rows a plan re-emits, read from the store LOOKUP_CHUNK at a time in plan order."""

    def __init__(self, store: RunStore, key: str, plan: Sequence[str | None]) -> None:
        self.store, self.key = store, key
        self.sha256s = [sha256 for sha256 in plan if sha256 is not None]
        self.position = 0
        self.cache: dict[str, StoredScore] = {}

    def next_row(self, record: FileRecord, true_label: str) -> ResultRow:
        sha256 = self.sha256s[self.position]
        if sha256 not in self.cache:
            self.cache = self.store.scores(self.sha256s[self.position : self.position + LOOKUP_CHUNK], self.key)
        self.position += 1
        stored = self.cache.get(sha256)
        if stored is None:  # the lock keeps other runs out, so this is a bug, not a user's problem
            raise RuntimeError(f"the stored result for {record.rel_path} vanished from the run store during the run")
        return ResultRow(path=record.rel_path, root=record.root, true_label=true_label, **stored.row)


@dataclass
class BatchCommitter:
    """Collects what the run learns and commits it to the store one scored batch at a time, so a
    killed run loses at most the batch in flight."""

    store: RunStore
    run_id: int
    key: str
    batch_size: int
    full: bool = False
    scores: dict[str, StoredScore] = field(default_factory=dict)  # by sha256
    updates: list[FileUpdate] = field(default_factory=list)
    reused: list[tuple[str, str, str]] = field(default_factory=list)
    pending_scored: int = 0
    # Earlier results for the sha256s about to be recorded, looked up LOOKUP_CHUNK at a time
    # (:meth:`prefetch`) rather than one query a file (20,000 queries on a first run of CIFAKE's
    # test split); None: the store has none.
    earlier: dict[str, StoredScore | None] = field(default_factory=dict)

    def prefetch(self, sha256s: Iterable[str]) -> None:
        """Look up, in one query a chunk, the earlier results of the files about to be scored."""
        wanted = sorted({sha256 for sha256 in sha256s if sha256 and sha256 not in self.scores})
        self.earlier = {}
        for start in range(0, len(wanted), LOOKUP_CHUNK):
            chunk = wanted[start : start + LOOKUP_CHUNK]
            found = self.store.scores(chunk, self.key, scored_run=self.run_id if self.full else None)
            self.earlier.update({sha256: found.get(sha256) for sha256 in chunk})

    def _earlier_result(self, sha256: str) -> StoredScore | None:
        if sha256 in self.scores:
            return self.scores[sha256]
        if sha256 in self.earlier:
            return self.earlier[sha256]
        # Not prefetched (a caller that does not prefetch): one query.
        return self.store.scores([sha256], self.key, scored_run=self.run_id if self.full else None).get(sha256)

    def scored(self, record: FileRecord, row: ResultRow) -> ResultRow:
        """Queue what scoring the file taught; return the row to write for it.

        Under the same key the same bytes give one row: a file whose bytes already have a result
        (a duplicate, or a copy under a new name) gets that result, so that duplicates read alike
        in every run and an unchanged rerun writes the same CSV. --full replaces earlier runs'
        results, so it takes only those of this run."""
        if row.sha256:
            earlier = self._earlier_result(row.sha256)
            if earlier is None:
                self.scores[row.sha256] = StoredScore(row.sha256, self.key, row.model_id, stored_row(row))
            else:
                row = ResultRow(path=row.path, root=row.root, true_label=row.true_label, **earlier.row)
        self.updates.append(FileUpdate(store_root(record.root), record.rel_path, record.size, record.mtime, row.sha256, row.verdict))
        self.pending_scored += 1
        if self.pending_scored >= self.batch_size:
            self.commit()
        return row

    def reused_file(self, record: FileRecord, row: ResultRow) -> None:
        self.reused.append((store_root(record.root), record.rel_path, row.verdict))

    def commit(self) -> None:
        if self.scores or self.updates:
            self.store.commit_batch(self.run_id, self.scores.values(), self.updates)
            self.earlier.update(self.scores)  # a later duplicate in the prefetched chunk finds them here
        if self.reused:
            self.store.touch_files(self.run_id, self.reused)
        self.scores, self.updates, self.reused, self.pending_scored = {}, [], [], 0


def prefetched(stream: Iterator[Scored], committer: BatchCommitter, chunk: int) -> Iterator[Scored]:
    """The scored stream, ``chunk`` items at a time, each chunk's earlier results looked up in one
    query before its rows are made (the DataLoader hands over whole batches anyway)."""
    while True:
        items = list(itertools.islice(stream, chunk))
        if not items:
            return
        committer.prefetch(item.result.sha256 for item in items)
        yield from items


def _run_with_store(options: ScanOptions, model: LoadedModel, plan: ComputePlan | None, labeller: Labeller,
                    evidence_options: EvidenceOptions | None, out_dir: Path, store: RunStore, started: datetime,
                    clock: float, takeover: str | None = None) -> ScanOutcome:
    out_dir_created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    baseline = store.baseline_run()
    run_id = store.start_run(iso_utc(started), options.to_json(), out_dir, out_dir_created)
    try:
        return _scan_into_store(options, model, plan, labeller, evidence_options, out_dir, store, started, clock,
                                baseline, run_id, takeover)
    except BaseException as exc:  # a stop before the row loop (discovery, lookups): no counts yet
        _record_stop(store, run_id, exc)
        raise


def _scan_into_store(options: ScanOptions, model: LoadedModel, plan: ComputePlan | None, labeller: Labeller,
                     evidence_options: EvidenceOptions | None, out_dir: Path, store: RunStore, started: datetime,
                     clock: float, baseline: int | None, run_id: int, takeover: str | None = None) -> ScanOutcome:
    t0 = time.perf_counter()
    discover_options = DiscoverOptions(tuple(options.include), tuple(options.exclude), options.include_hidden)
    records = list(discover(options.archives, discover_options))
    seconds_discover = time.perf_counter() - t0

    load_options = LoadOptions(preprocessing=model.card.preprocessing, max_pixels=options.max_pixels, draft=options.draft,
                               evidence=evidence_options)
    key = scoring_key(model, load_options)
    t0 = time.perf_counter()
    # Decided before scoring starts, so the DataLoader gets exactly the files to decode, in
    # discovery order.
    plan_rows = [None] * len(records) if options.full else reuse_plan(store, records, key)
    seconds_lookup = time.perf_counter() - t0
    to_score = [record for record, stored in zip(records, plan_rows) if stored is None]

    scorer, workers, engine = None, 0, None  # a rerun with nothing new never builds the network
    if to_score and options.engine == "ray":  # the hook: only files to score go to the cluster
        from audit.ray_engine import RayEngine, engine_settings

        engine = RayEngine(engine_settings(options), model, load_options, options.batch_size, options.device,
                           options.precision)
    elif to_score:
        plan = plan or plan_compute(options.device, options.precision, model.card.compute_dtype)
        workers = options.workers if options.workers is not None else default_workers(plan.device)
        scorer = Scorer(model, plan)
    progress = Progress(len(records), options.progress)
    if not records:
        progress.message("audit scan: warning: no image files found under the given archive(s)")
    tally = Tally()
    # Reviewers' decisions by sha256, read once: one taken while the run goes shows the next night.
    review = ReviewTally.from_store(store)
    stored_rows = StoredRows(store, key, plan_rows)
    committer = BatchCommitter(store, run_id, key, options.batch_size, full=options.full)
    writer: ResultWriter | None = None
    seconds_writing_rows = 0.0
    t0 = time.perf_counter()
    try:
        if engine is not None:
            engine.start(to_score)
        writer = ResultWriter(out_dir, write_xlsx=options.write_xlsx, earlier_xlsx=earlier_xlsx(store, baseline))
        if engine is not None:
            scored = iter(engine.score(to_score))
        else:
            scored = iter(score_records(to_score, scorer, load_options, options.batch_size, workers) if scorer else ())
        scored_stream = prefetched(scored, committer, options.batch_size)
        for record, reuse_sha256 in zip(records, plan_rows):
            if reuse_sha256 is None:
                row = committer.scored(record, make_row(next(scored_stream), labeller.label_for(record), model,
                                                        iso_utc(utc_now())))
            else:
                row = stored_rows.next_row(record, labeller.label_for(record))
                committer.reused_file(record, row)
            review.apply(row)
            tw = time.perf_counter()
            writer.write(row)
            seconds_writing_rows += time.perf_counter() - tw
            tally.add(row)
            progress.update()
            raise_if_stop_requested()
        committer.commit()
        seconds_loop = time.perf_counter() - t0
        roots = {store_root(root) for root in roots_seen_whole(options, records)}
        changes = store.changes_since(run_id, roots, baseline)
        tw = time.perf_counter()
        renames = writer.finish()
        seconds = {
            "discover": seconds_discover,
            "store_lookup": seconds_lookup,
            "load_and_score": seconds_loop - seconds_writing_rows,
            "write": seconds_writing_rows + time.perf_counter() - tw,
            "total": time.perf_counter() - clock,
        }
        # --fail-on-flagged leaves out what reviewers cleared as false positives under this model.
        exit_code = exit_code_for(tally.by_status[STATUS_ERROR], review.flagged_not_cleared, options.fail_on_flagged)
        counts = RunCounts(tally.files, len(to_score), tally.files - len(to_score), tally.by_verdict[VERDICT_AI],
                           tally.by_status[STATUS_ERROR])
        compute = plan.describe() if plan else engine.compute if engine else None
        summary = build_summary(options, model, compute, workers, tally, seconds, started, exit_code, labeller.unmatched)
        summary["engine"] = engine.stats.to_json() if engine else {"name": options.engine}
        summary.update(store_summary(store.path, run_id, counts, changes, options.full))
        summary["store"]["chosen_by"] = "--store" if options.store else "default (follows the archives)"
        summary["store"]["lock_takeover"] = takeover
        summary["review"] = review.to_json()
        # Lets the next run check that its rows are these very bytes before it copies the XLSX.
        summary["output_sha256"] = writer.sha256
        renames.append(write_json_tmp(out_dir / "summary.json", summary))
        raise_if_stop_requested()
        remove_stale_outputs(out_dir, {final.name for _, final in renames})
        commit(renames)  # summary.json last: its presence means the run is complete
        store.forget_unseen(run_id, roots)
        store.finish_run(run_id, counts, exit_code, partial=False)
    except BaseException as exc:  # also SystemExit from SIGTERM and KeyboardInterrupt
        if writer is not None:
            writer.abort()
        discard_partial_outputs(out_dir)
        # Batches already committed stay in the store (the next run reuses them); the run's
        # record says it is partial and why.
        scored_so_far = sum(1 for stored in plan_rows[: tally.files] if stored is None)
        _record_stop(store, run_id, exc, RunCounts(tally.files, scored_so_far, tally.files - scored_so_far,
                                                   tally.by_verdict[VERDICT_AI], tally.by_status[STATUS_ERROR]))
        raise
    finally:
        progress.close()
        if engine is not None:
            engine.close()

    if options.report:
        _render_report(out_dir, model, options, store, baseline)
    progress.message(_closing_line(tally, out_dir))
    return ScanOutcome(out_dir=out_dir, summary=summary, exit_code=exit_code)


def earlier_xlsx(store: RunStore, baseline: int | None) -> EarlierXlsx | None:
    """The last completed run's results.xlsx with the hashes its summary.json recorded; None
    when there is none to go by (the writer then makes the XLSX)."""
    folder = store.out_dir_of(baseline) if baseline is not None else None
    if folder is None:
        return None
    try:
        hashes = json.loads((folder / "summary.json").read_text(encoding="utf-8"))["output_sha256"]
        return EarlierXlsx(folder / "results.xlsx", hashes["results.csv"], hashes["results.xlsx"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


def store_summary(store_path: Path, run_id: int, counts: RunCounts, changes: Changes, full: bool) -> dict[str, Any]:
    """summary.json's run-store fields: how much was reused, and what changed since the last run."""
    return {
        "files_scored": counts.files_scored,
        "files_reused": counts.files_reused,
        "store": {"path": str(store_path.absolute()), "run_id": run_id, "mode": "full" if full else "incremental"},
        "changes": changes.to_json(),
    }


def _rows(scored_stream: Iterable[Scored], labeller: Labeller, model: LoadedModel) -> Iterable[ResultRow]:
    for scored in scored_stream:
        record: FileRecord = scored.result.record
        yield make_row(scored, labeller.label_for(record), model, iso_utc(utc_now()))


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


def build_summary(
    options: ScanOptions,
    model: LoadedModel,
    compute: dict[str, Any] | None,
    workers: int,
    tally: Tally,
    seconds: dict[str, float],
    started: datetime,
    exit_code: int,
    labels_unmatched: int | None,
) -> dict[str, Any]:
    card = model.card
    return {
        "tool": {"name": "ai-image-audit", "version": audit.__version__},
        "started_at": iso_utc(started),
        "finished_at": iso_utc(utc_now()),
        # Relative roots and model paths start here (audit report resolves them from it).
        "cwd": os.getcwd(),
        "exit_code": exit_code,
        "files": tally.files,
        "counts": {"by_status": tally.by_status, "by_verdict": tally.by_verdict},
        "flagged": tally.by_verdict[VERDICT_AI],
        # Over the stages themselves (discover + load and score + write), not model loading.
        "throughput_files_per_s": _throughput(tally.files, seconds),
        "seconds": {name: round(value, 3) for name, value in seconds.items()},
        "model": {
            "id": model.model_id,
            "name": card.name,
            "sha256": card.weights_sha256,
            "path": str(model.weights_path),
            "variant": card.variant,
            "temperature": card.temperature,
            "threshold": card.threshold,
            "threshold_method": card.threshold_method,
        },
        "threshold": card.threshold,
        # None when every row came from the run store: no device was chosen, no model ran.
        "compute": {**compute, "workers": workers, "batch_size": options.batch_size, "torch_threads": _torch_threads()}
        if compute
        else None,
        "labels": {"source": options.labels, "unmatched_csv_entries": labels_unmatched, **(tally.labelled_summary() or {})}
        if options.labels
        else None,
        "options": options.to_json(),
        # The report files are listed when asked for; a report that then fails says so on stderr
        # and `audit report` renders it again.
        "outputs": ["results.csv", *(["results.xlsx"] if options.write_xlsx else []), "summary.json",
                    *(["report.html", "report.pdf", "heatmaps/"] if options.report else [])],
    }


def _render_report(out_dir: Path, model: LoadedModel, options: ScanOptions, store: RunStore | None = None,
                   baseline: int | None = None) -> None:
    """report.html, report.pdf and heatmaps/ from the files just written (audit.report).

    The results are complete and committed before this runs, so a report that fails does not
    cost the run: the error is said on stderr (even with --quiet: it is a failure) and
    `audit report OUT_DIR` renders it again.
    """
    from audit import report_reuse

    earlier = store.out_dir_of(baseline) if store is not None and baseline is not None else None
    try:
        copied = report_reuse.copy_unchanged_report(out_dir, model, options.max_gallery, earlier, baseline)
    except Exception as exc:  # noqa: BLE001 - a copy that fails is rendered instead
        copied = None
        print(f"audit scan: note: the unchanged report could not be copied ({type(exc).__name__}: {exc}); "
              "rendering it", file=sys.stderr, flush=True)
    if copied is not None:
        if options.progress != "none":
            print(f"audit scan: nothing the report shows changed since run {baseline}: its pages were copied "
                  "behind a new front page", file=sys.stderr, flush=True)
        return
    from audit.heatmap_cache import HeatmapCache
    from audit.report import render_report_files

    try:
        # The store's lock is still held: its heatmap cache spares Grad-CAM for images explained before.
        cache = HeatmapCache(store.db) if store is not None else None
        rendered = render_report_files(out_dir, model=model, max_gallery=options.max_gallery, heatmap_cache=cache)
        summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
        report_reuse.record_rendered_report(out_dir, report_reuse.report_fingerprint(summary, model, options.max_gallery),
                                            rendered.front_pages, rendered.content)
    except Exception as exc:  # noqa: BLE001 - the results stand; the report can be rendered again
        print(f"audit scan: warning: the report was not rendered ({type(exc).__name__}: {exc}); "
              f"run `audit report {out_dir}` to try again", file=sys.stderr, flush=True)


def _throughput(files: int, seconds: dict[str, float]) -> float | None:
    stages = seconds["discover"] + seconds["load_and_score"] + seconds["write"]
    return round(files / stages, 2) if stages > 0 else None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _closing_line(tally: Tally, out_dir: Path) -> str:
    v = tally.by_verdict
    return (
        f"audit scan: {tally.files} files: {v[VERDICT_AI]} ai-generated, {v[VERDICT_REAL]} real, "
        f"{v[VERDICT_ERROR]} errors -> {out_dir}"
    )
