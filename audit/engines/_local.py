"""The score stage: file records -> (load result, calibrated probability of "AI-generated", novelty).

Images are decoded in DataLoader worker processes and batched; the collate keeps failed items
as data (their rows still have to be written), and only the images that decoded go to the model.
The DataLoader returns batches in index order, so results stream out in discovery order and
memory stays bounded however many files there are.

Compute paths (chosen by :func:`plan_compute`):

* CUDA: pinned host memory, ``non_blocking`` copies of uint8 batches (4x less to copy than
  floats; normalisation runs on the GPU) and fp16 autocast (``--precision bf16`` on request;
  fp16 keeps 3 more mantissa bits than bf16).
* CPU: channels_last (faster than NCHW for this ResNet18: docs/performance.md, "CPU compute") and
  ``torch.inference_mode``, in fp32 by default. bf16 autocast (oneDNN, on a CPU with avx512_bf16
  or amx_bf16) is faster per core but moved probabilities by up to 0.11 on the test
  model (README, "CPU and GPU"), so ``--precision auto`` uses it only when the model card says
  the model was validated in bf16 (``compute_dtype: "bfloat16"``); ``--precision bf16`` forces it.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from audit.engines.base import EngineRequest, Scored, ScoringEngine
from audit.intake import FileRecord, LoadOptions, LoadResult, load_image
from audit.model import (
    DEFAULT_BATCH_SIZE,
    ComputePlan,
    LoadedModel,
    combine_views,
    default_workers,
    features_and_logits,
    flatten_views,
    normalize,
)
from audit.stopping import die_with_parent, raise_if_stop_requested

if TYPE_CHECKING:  # imported where the network runs: a rerun that scores nothing never loads torch
    import torch
    from torch.utils.data import DataLoader

# Batches each decode worker keeps in flight: bounds memory while keeping the model fed.
PREFETCH_FACTOR = 2


# --------------------------------------------------------------------------- data


class RecordDataset:
    """Map-style dataset over discovered files (len and getitem are all a DataLoader needs); an
    item is a LoadResult, never an exception."""

    def __init__(self, records: Sequence[FileRecord], options: LoadOptions) -> None:
        self.records = records
        self.options = options

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> LoadResult:
        exit_if_orphaned()
        return load_image(self.records[index], self.options)


@dataclass
class Batch:
    """A batch in discovery order. ``images`` stacks the decoded items only; ``ok_positions``
    says where each of them sits in ``results``. The tensors are detached from the results so
    that only one copy crosses the worker -> main process boundary."""

    results: list[LoadResult]
    images: torch.Tensor  # uint8 N_ok x C x H x W (a crops policy: all items' views, concatenated)
    ok_positions: list[int]
    view_counts: list[int] | None = None  # a crops policy: each item's number of views, in order
    degraded: int = 0  # images after the decoded items': their degraded copies, in the same order

    def pin_memory(self) -> "Batch":
        # Called by the DataLoader's pin-memory thread when pin_memory=True (CUDA).
        self.images = self.images.pin_memory()
        return self


def collate_results(items: list[LoadResult]) -> Batch:
    import torch

    ok_positions = [i for i, item in enumerate(items) if item.tensor is not None]
    tensors = [items[i].tensor for i in ok_positions]
    degraded = [items[i].degraded_tensor for i in ok_positions if items[i].degraded_tensor is not None]
    tensors += degraded  # scored in the same forward pass as the originals
    for item in items:
        item.tensor = item.degraded_tensor = None
    if tensors and tensors[0].ndim == 4:  # a crops policy: K views an item, K may differ
        return Batch(results=items, images=torch.cat(tensors), ok_positions=ok_positions,
                     view_counts=[len(tensor) for tensor in tensors], degraded=len(degraded))
    images = torch.stack(tensors) if tensors else torch.empty(0, dtype=torch.uint8)
    return Batch(results=items, images=images, ok_positions=ok_positions, degraded=len(degraded))


# The parent's pid as a decode worker saw it at start; None in the main process.
_WORKER_PARENT_PID: int | None = None


def exit_if_orphaned() -> None:
    """In a decode worker: end at once when the parent that started it is gone.

    PR_SET_PDEATHSIG cannot cover a parent that died before the worker asked for it, nor other
    systems; each item a worker loads checks this too (one getppid call)."""
    if _WORKER_PARENT_PID is not None and os.getppid() != _WORKER_PARENT_PID:
        os._exit(1)


def _init_decode_worker(_worker_id: int) -> None:
    """Set up a decode worker: it dies with the scan, and leaves stop signals to the scan.

    `systemctl stop` and Ctrl-C signal the whole process group. A worker that died of the signal
    first would make torch raise "worker exited unexpectedly" in the middle of the main process's
    orderly stop; the main process shuts its workers down itself.
    """
    global _WORKER_PARENT_PID
    _WORKER_PARENT_PID = os.getppid()
    die_with_parent()
    exit_if_orphaned()  # the parent may have died between the fork and the prctl
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(records: Sequence[FileRecord], options: LoadOptions, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    from torch.utils.data import DataLoader

    return DataLoader(
        RecordDataset(records, options),
        batch_size=batch_size,
        shuffle=False,  # discovery order in, discovery order out
        num_workers=workers,
        collate_fn=collate_results,
        pin_memory=pin_memory,
        worker_init_fn=_init_decode_worker if workers > 0 else None,
        prefetch_factor=PREFETCH_FACTOR if workers > 0 else None,
    )


# --------------------------------------------------------------------------- model


@dataclass
class BatchScores:
    """What the networks say of a batch's images, in order: calibrated prob_ai, novelty (None when
    no card has novelty statistics; None for an image whose model has none), and the degraded
    copies' prob_ai (None when not asked)."""

    probs: list[float]
    novelty: list[float | None] | None = None
    prob_degraded: list[float] | None = None


class Scorer:
    """Runs the network (and the networks its card routes images to) on uint8 batches and returns
    calibrated probabilities (float32, CPU), and the novelty of each image where its model's card
    has novelty statistics."""

    def __init__(self, model: LoadedModel, plan: ComputePlan) -> None:
        import torch

        self.model = model
        self.plan = plan
        # Index 0: the card's own network; i: its i-th route's (audit.model._routing). Built here,
        # outside inference mode, so Grad-CAM can still use the same modules afterwards.
        self.models = [model, *(routed for _, routed in model.routes)]
        self._networks = []
        for each in self.models:
            network = each.network.to(plan.device).eval()
            if plan.channels_last:
                network = network.to(memory_format=torch.channels_last)
            self._networks.append(network)
        self._novelty = [each.card.uncertainty.novelty if each.card.uncertainty is not None else None
                         for each in self.models]

    def network(self, route: int = 0) -> Any:
        return self._networks[route]

    def probabilities(self, images_uint8: torch.Tensor, view_counts: list[int] | None = None,
                      routes: list[int] | None = None) -> torch.Tensor:
        """Calibrated prob_ai per image; ``view_counts`` when images holds several crops an image;
        ``routes``: each image's route (None: all the card's own network)."""
        import torch

        return torch.tensor(self.scores(images_uint8, view_counts, routes=routes).probs, dtype=torch.float32)

    def scores(self, images_uint8: torch.Tensor, view_counts: list[int] | None = None, degraded: int = 0,
               routes: list[int] | None = None) -> BatchScores:
        """prob_ai and novelty per image; the last ``degraded`` images are degraded copies of the
        last ``degraded`` originals, whose prob_ai comes back as ``prob_degraded``. ``routes``:
        each image's route, the degraded copies included (None: all the card's own network)."""
        import torch

        with_novelty = any(stats is not None for stats in self._novelty)
        if images_uint8.shape[0] == 0:
            return BatchScores([], [] if with_novelty else None, [] if degraded else None)
        with torch.inference_mode():
            batch = images_uint8.to(self.plan.device, non_blocking=self.plan.pin_memory)
            inputs, views = flatten_views(normalize(batch, self.model.card.preprocessing))
            if view_counts is not None:
                views = view_counts
            if self.plan.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            if not routes or not any(routes):
                with self.plan.autocast():
                    features, logits = features_and_logits(self.network(0), inputs)
                features, logits = combine_views(features.float(), views), combine_views(logits.float(), views)
                routes = [0] * logits.shape[0]
            else:
                features, logits = self._routed(inputs, views, routes)
            probs, novelty = self._calibrated(features, logits, routes, with_novelty)
        originals = len(probs) - degraded
        return BatchScores(probs[:originals], novelty[:originals] if novelty is not None else None,
                           probs[originals:] if degraded else None)

    def _routed(self, inputs: torch.Tensor, views: int | list[int],
                routes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's views through its route's network: pooled features and logits per image."""
        import torch

        counts = views if isinstance(views, list) else [max(views, 1)] * len(routes)
        view_route = torch.repeat_interleave(torch.tensor(routes), torch.tensor(counts)).to(inputs.device)
        logits = features = None
        for route in sorted(set(routes)):
            chosen = view_route == route
            with self.plan.autocast():
                part_features, part_logits = features_and_logits(self.network(route), inputs[chosen])
            if logits is None:
                logits = torch.empty((inputs.shape[0], part_logits.shape[1]), device=inputs.device)
                features = torch.empty((inputs.shape[0], part_features.shape[1]), device=inputs.device)
            logits[chosen], features[chosen] = part_logits.float(), part_features.float()
        return combine_views(features, views), combine_views(logits, views)

    def _calibrated(self, features: torch.Tensor, logits: torch.Tensor, routes: list[int],
                    with_novelty: bool) -> tuple[list[float], list[float | None] | None]:
        """Each image's prob_ai by its model's calibration, and its novelty by its model's statistics."""
        import torch

        if not any(routes):
            novelty = self._novelty[0].score(features).cpu().tolist() if self._novelty[0] is not None else None
            return self.model.probabilities(logits).float().cpu().tolist(), novelty if with_novelty else None
        probs = torch.empty(len(routes))
        novelty: list[float | None] = [None] * len(routes)
        image_route = torch.tensor(routes)
        for route in sorted(set(routes)):
            chosen = image_route == route
            on_device = chosen.to(logits.device)
            probs[chosen] = self.models[route].probabilities(logits[on_device]).float().cpu()
            if self._novelty[route] is not None:
                for index, value in zip(chosen.nonzero().flatten().tolist(),
                                        self._novelty[route].score(features[on_device]).cpu().tolist()):
                    novelty[index] = value
        return probs.tolist(), novelty if with_novelty else None


def routes_of(results: Sequence[LoadResult], ok_positions: Sequence[int], degraded: int = 0) -> list[int]:
    """The route of each decoded image of a batch, in the batch's order; its degraded copies (the
    last ``degraded`` images) go where their originals went."""
    routes = [results[position].route for position in ok_positions]
    return routes + routes[len(routes) - degraded:] if degraded else routes


def score_records(
    records: Sequence[FileRecord],
    scorer: Scorer,
    options: LoadOptions,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
) -> Iterator[Scored]:
    """Load and score every record, yielding one Scored per record in the records' order.

    A decoder that crashes in native code (a segfault in a codec library on a hostile file) kills
    its worker process, and torch then fails the whole DataLoader. The run goes on: every file
    that could have been in flight is decoded again in fresh single-worker loaders, halving the
    range around each crash until the file that kills a worker is found; that file becomes an
    error row and normal batching resumes after the range.
    """
    if workers is None:
        workers = default_workers(scorer.plan.device)
    position = 0  # records yielded so far
    while position < len(records):
        loader = make_loader(records[position:], options, batch_size, workers, scorer.plan.pin_memory)
        try:
            for batch in _iterate(loader):
                for scored in _score_batch(scorer, batch):
                    yield scored
                    position += 1
        except (RuntimeError, ConnectionError, EOFError) as exc:
            if workers == 0 or not _worker_died(exc):
                raise
            # A stop signal can kill the workers too: stop now rather than decode their files again.
            raise_if_stop_requested()
            # The batches each worker had in flight, plus the one being read.
            in_flight = records[position : position + batch_size * (PREFETCH_FACTOR * workers + 1)]
            yield from score_isolated(in_flight, scorer, options, batch_size)
            position += len(in_flight)


def _score_batch(scorer: Scorer, batch: Batch) -> Iterator[Scored]:
    yield from scored_in_order(batch.results, batch.ok_positions,
                               scorer.scores(batch.images, batch.view_counts, batch.degraded,
                                             routes_of(batch.results, batch.ok_positions, batch.degraded)))


def scored_in_order(results: list[LoadResult], ok_positions: list[int], scores: BatchScores) -> Iterator[Scored]:
    """One Scored per result, the decoded ones with their scores (both engines' last step)."""
    at = {position: index for index, position in enumerate(ok_positions)}
    for position, result in enumerate(results):
        index = at.get(position)
        if index is None:
            yield Scored(result=result, prob_ai=None)
        else:
            yield Scored(result=result, prob_ai=scores.probs[index],
                         novelty=scores.novelty[index] if scores.novelty is not None else None,
                         prob_degraded=scores.prob_degraded[index] if scores.prob_degraded is not None else None)


def _iterate(loader: DataLoader) -> Iterator[Batch]:
    """Iterate a loader, leaving worker deaths to the loader's own polling.

    With worker processes torch installs a SIGCHLD handler that raises "DataLoader worker is
    killed by signal" in whatever the main thread runs at that moment: in the scan's row loop or
    inside the loader's own queue handling, where it cannot be recovered from. Without it the
    loader notices a dead worker while it waits for a batch (within seconds) and raises "exited
    unexpectedly" from the iteration, where score_records handles it.
    """
    batches = iter(loader)
    if loader.num_workers > 0 and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    yield from batches


def _worker_died(exc: Exception) -> bool:
    # torch: "DataLoader worker (pid(s) 1234) exited unexpectedly" / "... is killed by signal: ...";
    # reading the queue of a worker that died mid-message can also fail on the pipe itself.
    if isinstance(exc, (ConnectionError, EOFError)):
        return True
    text = str(exc)
    return "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text)


def score_isolated(records: Sequence[FileRecord], scorer: Scorer, options: LoadOptions, batch_size: int) -> Iterator[Scored]:
    """Score ``records`` in a fresh one-worker loader; if a worker dies, split the range in two and
    retry each half, down to the single file that kills it (an error row)."""
    if not records:
        return
    try:
        loader = make_loader(records, options, batch_size, 1, scorer.plan.pin_memory)
        scored = [item for batch in _iterate(loader) for item in _score_batch(scorer, batch)]
    except (RuntimeError, ConnectionError, EOFError) as exc:
        if not _worker_died(exc):
            raise
        if len(records) == 1:
            yield Scored(result=LoadResult(record=records[0], error=(
                "decoder crashed: the worker process reading this file died "
                "(a fault in native image-decoding code); the file was not scored")), prob_ai=None)
            return
        middle = len(records) // 2
        yield from score_isolated(records[:middle], scorer, options, batch_size)
        yield from score_isolated(records[middle:], scorer, options, batch_size)
        return
    yield from scored


class LocalEngine(ScoringEngine):
    """Decode in DataLoader workers on this machine and score on its CPU or GPU."""

    name = "local"

    def __init__(self, request: EngineRequest) -> None:
        from audit.model import plan_compute

        options = request.options
        self.request = request
        self.plan = request.plan or plan_compute(options.device, options.precision, request.model.card.compute_dtype)
        self._workers = options.workers if options.workers is not None else default_workers(self.plan.device)
        self.scorer = Scorer(request.model, self.plan)

    def score(self, records: Sequence[FileRecord]) -> Iterator[Scored]:
        return score_records(records, self.scorer, self.request.load_options, self.request.options.batch_size,
                             self._workers)

    def engine_record(self) -> dict[str, Any]:
        return {"name": self.name}

    def compute_record(self) -> dict[str, Any] | None:
        return self.plan.describe()

    @property
    def workers(self) -> int:
        return self._workers
