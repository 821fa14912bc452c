"""Incremental reuse: which files a run can take from the run store, and what it commits there.

A file keeps its stored row while its (root, path, size, mtime) is unchanged and its bytes have a
result under the run's :func:`scoring_key`; every other file is scored. What a run learns is
committed one scored batch at a time (:class:`BatchCommitter`, a row sink), so a killed run
loses at most the batch in flight and the next run resumes from the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import audit
from audit.errors import UsageError
from audit.intake import FileRecord
from audit.pipeline._outputs import EarlierOutputs
from audit.pipeline._sinks import DUPLICATE, REUSED, SCORED, ScannedFile
from audit.rows import RESULT_COLUMNS, SCORED_COLUMNS, ResultRow
from audit.store import FileUpdate, RunStore, StoredScore
from audit.summary import read_summary

if TYPE_CHECKING:
    from audit.engines import Scored
    from audit.intake import LoadOptions
    from audit.model import LoadedModel

# Files looked up in the run store per query: under SQLite's old limit of 999 parameters.
LOOKUP_CHUNK = 500
# The ResultRow fields kept in the store: all but where the file is and its ground truth.
_STORED_FIELDS = tuple(name for name in SCORED_COLUMNS if name not in ("path", "root", "true_label"))


def scoring_key(model: LoadedModel, load_options: LoadOptions) -> str:
    """What a stored result depends on besides the file's bytes: the model (id, calibration,
    threshold, preprocessing, uncertain rules), the evidence settings, the decode limits and the row schema.
    Any of them changing means the file is scored again."""
    evidence = load_options.evidence
    parts = {
        "model_id": model.model_id,
        "temperature": model.card.temperature,
        "threshold": model.card.threshold,
        "preprocessing": repr(model.card.preprocessing),
        "routes": [[route.max_side, routed.model_id, routed.card.temperature, routed.card.threshold,
                    repr(routed.card.preprocessing)] for route, routed in model.routes],
        "evidence": None if evidence is None else hashlib.sha256(evidence.trust_anchors_pem.encode()).hexdigest(),
        "max_pixels": load_options.max_pixels,
        "max_file_bytes": load_options.max_file_bytes,
        "draft": load_options.draft,
        # The uncertain verdict's rules (band, novelty statistics) and the degraded-copy check.
        "uncertainty": [None if each.card.uncertainty is None else hashlib.sha256(
            json.dumps(dataclasses.asdict(each.card.uncertainty), sort_keys=True).encode()).hexdigest()
            for each in (model, *(routed for _, routed in model.routes))],
        "check_degraded": load_options.check_degraded,
        # The review columns are filled afresh each run from the store's decisions: not part of it.
        "columns": SCORED_COLUMNS,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def stored_row(row: ResultRow) -> dict[str, Any]:
    return {name: getattr(row, name) for name in _STORED_FIELDS}


def reuse_plan(store: RunStore, records: Sequence[FileRecord], key: str) -> list[str | None]:
    """Per record, in order: the sha256 of a file whose (root, path, size, mtime) is unchanged
    since a run recorded it and whose bytes have a result under ``key`` (its row is re-emitted);
    None: score the file. Only the sha256 is kept, so memory does not grow with stored rows."""
    plan: list[str | None] = [None] * len(records)
    readable = [index for index, record in enumerate(records) if not record.error and record.size is not None]
    for root, same_root in itertools.groupby(readable, key=lambda index: RunStore.root_key(records[index].root)):
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

    def next_item(self, record: FileRecord, true_label: str) -> ScannedFile:
        sha256 = self.sha256s[self.position]
        if sha256 not in self.cache:
            self.cache = self.store.scores(self.sha256s[self.position : self.position + LOOKUP_CHUNK], self.key)
        self.position += 1
        stored = self.cache.get(sha256)
        if stored is None:  # the lock keeps other runs out, so this is a bug, not a user's problem
            raise RuntimeError(f"the stored result for {record.rel_path} vanished from the run store during the run")
        return ScannedFile(record, ResultRow(path=record.rel_path, root=record.root, true_label=true_label, **stored.row),
                           REUSED)


@dataclass
class BatchCommitter:
    """The run store's sink: collects what the run learns and commits it one scored batch at a
    time, so a killed run loses at most the batch in flight."""

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
    seconds: float = 0.0  # in the store's transactions

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

    def resolve(self, record: FileRecord, row: ResultRow) -> ScannedFile:
        """The row to write for a file just scored.

        Under the same key the same bytes give one row: a file whose bytes already have a result
        (a duplicate, or a copy under a new name) gets that result, so that duplicates read alike
        in every run and an unchanged rerun writes the same CSV. --full replaces earlier runs'
        results, so it takes only those of this run."""
        earlier = self._earlier_result(row.sha256) if row.sha256 else None
        if earlier is None:
            return ScannedFile(record, row, SCORED)
        return ScannedFile(record, ResultRow(path=row.path, root=row.root, true_label=row.true_label, **earlier.row),
                           DUPLICATE)

    def add(self, item: ScannedFile) -> None:
        record, row = item.record, item.row
        if item.origin == REUSED:
            self.reused.append((RunStore.root_key(record.root), record.rel_path, row.verdict))
            return
        if item.origin == SCORED and row.sha256:
            self.scores[row.sha256] = StoredScore(row.sha256, self.key, row.model_id, stored_row(row))
        self.updates.append(FileUpdate(RunStore.root_key(record.root), record.rel_path, record.size, record.mtime,
                                       row.sha256, row.verdict))
        self.pending_scored += 1
        if self.pending_scored >= self.batch_size:
            self.commit()

    def commit(self) -> None:
        started = time.perf_counter()
        try:
            self._commit()
        finally:
            self.seconds += time.perf_counter() - started

    def _commit(self) -> None:
        if self.scores or self.updates:
            self.store.commit_batch(self.run_id, self.scores.values(), self.updates)
            self.earlier.update(self.scores)  # a later duplicate in the prefetched chunk finds them here
        if self.reused:
            self.store.touch_files(self.run_id, self.reused)
        self.scores, self.updates, self.reused, self.pending_scored = {}, [], [], 0

    def close(self) -> None:
        self.commit()

    def abort(self) -> None:
        """Batches already committed stay (the next run reuses them); the one in flight is lost."""


def prefetched(stream: Iterator[Scored], committer: BatchCommitter, chunk: int) -> Iterator[Scored]:
    """The scored stream, ``chunk`` items at a time, each chunk's earlier results looked up in one
    query before its rows are made (the DataLoader hands over whole batches anyway)."""
    while True:
        items = list(itertools.islice(stream, chunk))
        if not items:
            return
        committer.prefetch(item.result.sha256 for item in items)
        yield from items


def earlier_outputs(store: RunStore, baseline: int | None) -> EarlierOutputs | None:
    """The last completed run's results with the hashes and fingerprint its summary.json
    recorded; None when there is none to go by (the run then writes its own)."""
    folder: Path | None = store.out_dir_of(baseline) if baseline is not None else None
    if folder is None:
        return None
    try:
        summary = read_summary(folder / "summary.json")
    except (OSError, UsageError):
        return None
    csv_sha256 = summary.output_sha256.get("results.csv")
    if not csv_sha256 or summary.store is None or summary.store.run_id is None:
        return None
    return EarlierOutputs(folder, csv_sha256, summary.output_sha256.get("results.xlsx"), summary.rows_fingerprint or "",
                          summary.store.run_id)


class RowsFingerprint:
    """What a run's rows are made of: a later run whose rows would have the same fingerprint
    would write the very same results.csv, so it copies the earlier one instead of writing 20,000
    rows again (ResultWriter.take_rows_from).

    A re-emitted row is the file's place (its root as given, its path), its true label, the
    stored result of its bytes under the scoring key, and the reviewers' current decision on
    those bytes. So the fingerprint hashes each file's (root, path, sha256, label) in discovery
    order, with the tool's version and columns, the scoring key, the newest decision the run
    read (ReviewTally.decisions_up_to, in the same query as the decisions) and the newest run
    that stored a result (RunStore.newest_scoring_run). A run makes it from its rows as they go (a row
    sink); the next run from its plan, when every file has a stored result, before writing any row.
    """

    def __init__(self, key: str, decisions_up_to: int) -> None:
        self._digest = hashlib.sha256(json.dumps([audit.__version__, RESULT_COLUMNS, key, decisions_up_to]).encode())

    def add_file(self, root: str, path: str, sha256: str, label: str) -> None:
        # NUL cannot be in a path and a label holds no newline: the entries cannot run together.
        self._digest.update(f"{root}\0{path}\0{sha256}\0{label}\n".encode("utf-8", "surrogateescape"))

    def add(self, item: ScannedFile) -> None:
        self.add_file(item.record.root, item.record.rel_path, item.row.sha256, item.row.true_label)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def hexdigest(self, store: RunStore) -> str:
        digest = self._digest.copy()
        digest.update(f"scores stored up to run {store.newest_scoring_run()}".encode())
        return digest.hexdigest()


def planned_rows_fingerprint(store: RunStore, key: str, decisions_up_to: int, records: Sequence[FileRecord],
                             plan: Sequence[str | None], labels: Sequence[str]) -> str | None:
    """The fingerprint the rows of this plan will have; None when some file is to be scored."""
    if any(sha256 is None for sha256 in plan):
        return None
    fingerprint = RowsFingerprint(key, decisions_up_to)
    for record, sha256, label in zip(records, plan, labels):
        fingerprint.add_file(record.root, record.rel_path, sha256 or "", label)
    return fingerprint.hexdigest(store)
