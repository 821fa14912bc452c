"""The score stage on a Ray cluster (``audit scan --engine ray``): the local engine's contract,
one :class:`~audit.engines.base.Scored` per record in the records' order, computed on a cluster.

The driver (the ``audit scan`` process) keeps everything else: discovery, the run store and its
per-batch commits, the verdict, the outputs. Only the files that need scoring are sent out.

Pipeline (Ray Data, streaming, order preserved):

* one dataset item per scoring batch of ``batch_size`` records, so the model sees exactly the
  batches the local engine gives it (same images, same batch composition, same numbers);
* CPU **decode tasks** run :func:`audit.intake._load.load_image` and the local engine's own collate;
* an **actor pool of scorers**, each loading the model through :func:`audit.model._card.load_model`
  (sha256 checked against the driver's) and scoring with :class:`audit.engines._local.Scorer`.

A file that crashes its decoder process (a segfault in a codec) kills the decode task's worker.
Ray retries it at most :data:`TASK_RETRIES` times; the block is then dropped (Ray Data's
``max_errored_blocks``), the driver sees the hole in the batch sequence and scores that batch
locally with the local engine's bisection, which turns the crashing file into one error row.

This module is the driver side: settings, the pipeline, the order and the local rescoring.
What runs in the cluster's workers is :mod:`audit.engines.ray._remote`; joining the cluster and noticing
that it is gone is :mod:`audit.engines.ray._cluster`.

Ray is imported by these modules' functions only, and only when there is something to score.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import audit
from audit.config import ScanOptions
from audit.engines._local import scored_in_order
from audit.engines.base import EngineRequest, Scored, ScoringEngine
from audit.engines.ray._cluster import INSTALL_HINT, HeadWatchdog, RayUnavailable, connect, first_line, guarded
from audit.engines.ray._remote import ScoringActor, decode_batches, node_view
from audit.intake import FileRecord
from audit.model import ComputeError

if TYPE_CHECKING:
    from audit.engines._local import Scorer

ADDRESS_HELP = "auto (the running cluster), HOST:PORT (its GCS address) or local (a private one-machine cluster)"
# A decode task whose worker process dies is run again this many times before its block is
# given up (and scored on the driver). Ray Data's default is to retry forever.
TASK_RETRIES = 1
# Scoring actors: restarts after a crash, and retries of the batch it was scoring.
ACTOR_RESTARTS = 1
ACTOR_TASK_RETRIES = 1
# Files each node stats before the run (spread evenly over the files to score).
PATH_SAMPLE = 16
# Dropped blocks tolerated before the run is declared failed: a crashing file costs one block,
# a cluster that loses every block is broken, and scoring it all on the driver would hide that.
MIN_LOST_BLOCKS = 8
LOST_BLOCK_SHARE = 0.05


@dataclass(frozen=True)
class RaySettings:
    address: str = "auto"  # auto | HOST:PORT | local
    actors: int | None = None  # scoring actors; default: one per GPU group, or one per node on CPUs
    gpus_per_actor: float = 0.0
    decode_cpus: int | None = None  # decode tasks at once; default: as many as the cluster's free CPUs


def ray_installed() -> bool:
    """Whether Ray and Ray Data's pyarrow can be imported, without importing them (slow to
    import); a submodule's find_spec would import its package, so only top-level names."""
    try:
        return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pyarrow") is not None
    except (ImportError, ValueError):  # a parent package that is not importable / a module set to None
        return False


def check_settings(settings: RaySettings) -> None:
    """Usage checks made before the run starts: Ray present, options sane."""
    if not ray_installed():
        raise RayUnavailable(f"--engine ray needs Ray, which is not installed; install it with: {INSTALL_HINT}")
    address = settings.address
    if address not in ("auto", "local") and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise RayUnavailable(f"--ray-address {address!r}: expected {ADDRESS_HELP}")
    if settings.gpus_per_actor < 0:
        raise RayUnavailable("--ray-gpus-per-actor must be >= 0")


@dataclass
class EngineStats:
    """What summary.json's ``engine`` records about a Ray run."""

    address: str = ""
    nodes: int = 0
    cpus: float = 0.0
    gpus: float = 0.0
    actors: int = 0
    gpus_per_actor: float = 0.0
    decode_cpus: int | None = None
    batches: int = 0
    lost_batches: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {
        "connect": 0.0, "path_check": 0.0, "first_batch": 0.0, "decode_tasks": 0.0, "score_actors": 0.0,
        "local_rescore": 0.0})

    def to_json(self) -> dict[str, Any]:
        return {
            "name": "ray",
            "address": self.address,
            "cluster": {"nodes": self.nodes, "cpus": self.cpus, "gpus": self.gpus},
            "actors": self.actors,
            "gpus_per_actor": self.gpus_per_actor,
            "decode_cpus": self.decode_cpus,
            "batches": self.batches,
            "lost_batches_rescored_locally": self.lost_batches,
            # decode_tasks and score_actors are summed over tasks and actors (CPU- or GPU-seconds),
            # the others are wall-clock seconds of the driver.
            "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
        }


class RayEngine(ScoringEngine):
    """Connects to (or starts) a Ray cluster and scores records on it, in order."""

    name = "ray"

    @classmethod
    def check_options(cls, options: ScanOptions) -> None:
        check_settings(engine_settings(options))

    def __init__(self, request: EngineRequest) -> None:
        options = request.options
        settings = engine_settings(options)
        self.settings, self.model, self.load_options = settings, request.model, request.load_options
        self.batch_size, self.device, self.precision = options.batch_size, options.device, options.precision
        self.stats = EngineStats(address=settings.address, gpus_per_actor=settings.gpus_per_actor,
                                 decode_cpus=settings.decode_cpus)
        self.compute: dict[str, Any] | None = None  # the actors' compute plan, from their first batch
        self._owns_connection = False
        self._local_scorer: Scorer | None = None
        self._gcs_address = ""
        self._lost: str | None = None  # why the cluster is deemed gone (set by the watchdog)
        self._watchdog: HeadWatchdog | None = None

    # ---------------------------------------------------------------- set-up

    def start(self, records: Sequence[FileRecord]) -> None:
        """Connect, describe the cluster and check that every node sees the files and the model."""
        try:
            import ray
        except ImportError as exc:  # find_spec said yes, but it does not import (a broken install)
            raise RayUnavailable(f"--engine ray: Ray cannot be imported ({exc}); install it with: {INSTALL_HINT}") from None
        t0 = time.perf_counter()
        if connect(ray, self.settings.address):  # False: a cluster joined before (a notebook, the tests) is used
            self._owns_connection = True
        self._gcs_address = ray.get_runtime_context().gcs_address
        self.stats.seconds["connect"] = time.perf_counter() - t0
        alive = [node for node in ray.nodes() if node.get("Alive")]
        resources = ray.cluster_resources()
        self.stats.nodes = len(alive)
        self.stats.cpus, self.stats.gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        self.stats.actors = self._actor_count(alive)
        t0 = time.perf_counter()
        self._check_paths(ray, alive, records)
        self.stats.seconds["path_check"] = time.perf_counter() - t0

    def _actor_count(self, alive: list[dict[str, Any]]) -> int:
        if self.settings.actors:
            return self.settings.actors
        if self.settings.gpus_per_actor > 0:
            return max(1, int(self.stats.gpus // self.settings.gpus_per_actor))
        return max(1, sum(1 for node in alive if node.get("Resources", {}).get("CPU", 0) > 0))

    def _check_paths(self, ray: Any, alive: list[dict[str, Any]], records: Sequence[FileRecord]) -> None:
        """Every node that may decode or score must see the files at the driver's absolute paths."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        readable = [record.abs_path for record in records if not record.error]
        step = max(1, len(readable) // PATH_SAMPLE)
        model = [] if self._shipped_model() else [os.path.abspath(str(self.model.weights_path))]
        sample = model + readable[::step][:PATH_SAMPLE]
        view = ray.remote(num_cpus=0, max_retries=0)(node_view)
        pending = {
            node["NodeManagerAddress"]: view.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node["NodeID"], soft=False)).remote(sample)
            for node in alive
        }
        for address, ref in pending.items():
            try:
                seen = ray.get(ref, timeout=120)
            except Exception as exc:  # noqa: BLE001 - ModuleNotFoundError on a node without audit, a lost node
                raise RayUnavailable(f"node {address} could not check the archive's paths: {first_line(exc)} "
                                     "(is ai-image-audit installed there?)") from None
            where = f"node {seen['host']} ({address})"
            if seen["missing"]:
                raise RayUnavailable(f"{where} does not see {seen['missing']}: every node must see the archive and "
                                     "the model at the same absolute path as the driver (a shared file system, "
                                     "docs/scale-out.md)")
            if seen["version"] != audit.__version__:
                raise RayUnavailable(f"{where} has ai-image-audit {seen['version']}, the driver "
                                     f"{audit.__version__}: install the same version on every node")

    # ---------------------------------------------------------------- scoring

    def score(self, records: Sequence[FileRecord]) -> Iterator[Scored]:
        """One Scored per record, in the records' order; a lost batch is scored on the driver."""
        import ray

        batches = [records[start: start + self.batch_size] for start in range(0, len(records), self.batch_size)]
        self.stats.batches = len(batches)
        dataset = self._dataset(ray, batches)
        next_index, t0 = 0, time.perf_counter()
        stream = dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2)
        watchdog = self._watchdog = HeadWatchdog(self._gcs_address, on_lost=self._mark_lost)
        try:
            watchdog.start()
            for block in guarded(stream, ray):
                if self._lost:  # the watchdog's signal may land where Python drops exceptions
                    from audit.errors import EngineLost

                    raise EngineLost(self._lost)
                for payload in block["item"]:
                    index, results, ok_positions, scores, decode_s, score_s, compute = pickle.loads(payload)
                    if next_index == 0 and not self.stats.seconds["first_batch"]:
                        self.stats.seconds["first_batch"] = time.perf_counter() - t0
                    self.compute = self.compute or compute
                    yield from self._rescore_locally(batches, next_index, index)
                    self.stats.seconds["decode_tasks"] += decode_s
                    self.stats.seconds["score_actors"] += score_s
                    yield from scored_in_order(results, ok_positions, scores)
                    next_index = index + 1
            yield from self._rescore_locally(batches, next_index, len(batches))
        finally:
            watchdog.stop()
            dataset = None  # the executor shuts down with its last reference

    def _dataset(self, ray: Any, batches: list[Sequence[FileRecord]]) -> Any:
        from ray.data import ActorPoolStrategy, DataContext

        context = DataContext.get_current()
        context.execution_options.preserve_order = True  # discovery order in, discovery order out
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        # A block whose decode task keeps dying is dropped rather than failing the run; the driver
        # notices the missing batch and scores it itself (the local bisection).
        context.max_errored_blocks = max(MIN_LOST_BLOCKS, int(len(batches) * LOST_BLOCK_SHARE))
        if hasattr(context, "max_consecutive_actor_init_deaths"):
            context.max_consecutive_actor_init_deaths = 2  # a scorer that cannot start fails the run
        _quiet_ray_data_console()
        items = [{"item": pickle.dumps((index, list(batch)), protocol=pickle.HIGHEST_PROTOCOL)}
                 for index, batch in enumerate(batches)]
        dataset = ray.data.from_items(items, override_num_blocks=len(items))
        decode_args: dict[str, Any] = {"num_cpus": 1}
        if self.settings.decode_cpus:
            decode_args["concurrency"] = self.settings.decode_cpus
        gpus = self.settings.gpus_per_actor
        device = "cuda" if gpus > 0 else "cpu"
        with warnings.catch_warnings():
            # Ray 2.60 deprecates passing retry limits this way, with no named replacement yet
            # (pyproject pins ray below 2.64, which removes it); the limits are what matters here.
            warnings.filterwarnings("ignore", message=".*ray_remote_args. is deprecated")
            dataset = dataset.map_batches(decode_batches, batch_size=1, batch_format="numpy",
                                          fn_kwargs={"load_options": self.load_options}, max_retries=TASK_RETRIES,
                                          **decode_args)
            return dataset.map_batches(
                ScoringActor, batch_size=1, batch_format="numpy",
                fn_constructor_args=(None if self._shipped_model() else str(self.model.weights_path),
                                     self.model.card.weights_sha256, device, self.precision,
                                     None if gpus > 0 else self._cpu_threads_per_actor()),
                compute=ActorPoolStrategy(size=self.stats.actors), num_cpus=1, num_gpus=gpus or None,
                max_restarts=ACTOR_RESTARTS, max_task_retries=ACTOR_TASK_RETRIES)

    def _shipped_model(self) -> bool:
        """The package's default model: each node loads its own installed copy (the install path
        may differ between nodes); the sha256 check still makes it the same model."""
        from audit.model import DEFAULT_MODEL_PATH, model_paths

        return Path(self.model.weights_path).resolve() == model_paths(DEFAULT_MODEL_PATH)[0].resolve()

    def _cpu_threads_per_actor(self) -> int:
        """A CPU scorer reserves one CPU but computes with its node's share of cores, as the local
        engine's model does beside its decode workers: Ray would otherwise pin torch to 1 thread."""
        nodes = max(1, self.stats.nodes)
        per_node_cpus = max(1, int(self.stats.cpus // nodes))
        actors_per_node = max(1, -(-self.stats.actors // nodes))
        return max(1, per_node_cpus // actors_per_node)

    def _rescore_locally(self, batches: list[Sequence[FileRecord]], start: int, stop: int) -> Iterator[Scored]:
        """Batches ``start..stop-1`` never came back from the cluster (their decode task died, most
        likely on a file that crashes the decoder): score them here with the local bisection."""
        from audit.engines._local import score_isolated

        for index in range(start, stop):
            self.stats.lost_batches += 1
            t0 = time.perf_counter()
            yield from score_isolated(batches[index], self._scorer_here(), self.load_options, self.batch_size)
            self.stats.seconds["local_rescore"] += time.perf_counter() - t0

    def _scorer_here(self) -> Scorer:
        if self._local_scorer is None:
            from audit.engines._local import Scorer
            from audit.model import plan_compute

            device = "cuda" if self.settings.gpus_per_actor > 0 and self.device != "cpu" else "cpu"
            try:
                plan = plan_compute(device, self.precision, self.model.card.compute_dtype)
            except ComputeError:  # the driver has no GPU: the few lost files are scored on its CPU
                plan = plan_compute("cpu", self.precision, self.model.card.compute_dtype)
            self._local_scorer = Scorer(self.model, plan)
        return self._local_scorer

    def engine_record(self) -> dict[str, Any]:
        return self.stats.to_json()

    def compute_record(self) -> dict[str, Any] | None:
        return self.compute

    def _mark_lost(self, reason: str) -> None:
        """Told by the watchdog (from its thread) that the cluster is gone, and why."""
        self._lost = reason

    def close(self) -> None:
        """Leave the cluster (a private ``local`` one is shut down with it). After the cluster
        was lost there is nothing to leave: ray.shutdown would wait for the dead head."""
        if self._watchdog is not None:  # a run that stopped early leaves its generator unfinished
            self._watchdog.stop()
        if self._owns_connection and self._lost is None:
            import ray

            self._owns_connection = False
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - a cluster that is gone already
                pass


def _quiet_ray_data_console() -> None:
    """Ray Data logs each dropped block with its traceback on the console; the scan reports lost
    batches itself (summary.json), so only Ray Data's log file keeps them."""
    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":
            handler.setLevel(logging.CRITICAL)


def engine_settings(options: ScanOptions) -> RaySettings:
    """The RaySettings of a ScanOptions (its ray_* fields)."""
    return RaySettings(address=options.ray_address, actors=options.ray_actors,
                       gpus_per_actor=options.ray_gpus_per_actor, decode_cpus=options.ray_decode_cpus)

