"""The Ray engine's remote side: the code that runs in the cluster's worker processes.

* :func:`node_view`, the check that a node sees the archive and runs the same ``audit``;
* :func:`decode_batches`, the CPU decode task (the local engine's load stage and collate);
* :class:`ScoringActor`, one scorer of the actor pool (the model loaded and checked once).

The driver side, which builds the pipeline around these, is :mod:`audit.engines.ray._engine`. Batches
travel pickled, as one dataset item per scoring batch; ``audit`` must be installed on every
node (same version), since Ray ships these by reference to this module.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
from typing import Any, Sequence

import audit
from audit.engines._local import collate_results, routes_of
from audit.intake import LoadOptions, load_image


def node_view(paths: Sequence[str]) -> dict[str, Any]:
    """What one node sees: the first of ``paths`` it cannot stat, its host and audit version."""
    missing = next((path for path in paths if not os.path.exists(path)), None)
    return {"host": socket.gethostname(), "missing": missing, "version": audit.__version__}


def decode_batches(batch: dict[str, Any], load_options: LoadOptions) -> dict[str, Any]:
    """Decode task: each row holds one scoring batch of records; returns its load results and the
    stacked uint8 images of those that decoded (the local engine's collate)."""
    import numpy as np

    out = []
    for payload in batch["item"]:
        index, records = pickle.loads(payload)
        started = time.perf_counter()
        collated = collate_results([load_image(record, load_options) for record in records])
        images = collated.images.numpy()
        # view_counts: a crops policy's number of views of each image (None: one each).
        out.append(pickle.dumps((index, collated.results, images, collated.ok_positions, collated.view_counts,
                                 collated.degraded, time.perf_counter() - started), protocol=pickle.HIGHEST_PROTOCOL))
    return {"item": np.array(out, dtype=object)}


class ScoringActor:
    """One scorer of the actor pool: the model, loaded and checked once, run on each batch."""

    def __init__(self, model_path: str | None, weights_sha256: str, device: str, precision: str,
                 threads: int | None) -> None:
        import torch

        from audit.engines._local import Scorer
        from audit.model import load_model, plan_compute

        if threads:
            torch.set_num_threads(threads)
        model = load_model(model_path)  # None: the node's own shipped model; the card's sha256 is checked
        if model.card.weights_sha256 != weights_sha256:
            raise RuntimeError(f"{socket.gethostname()}: {model_path} is model {model.model_id}, not the driver's "
                               f"(weights sha256 {weights_sha256[:12]})")
        self.plan = plan_compute(device, precision, model.card.compute_dtype)
        self.scorer = Scorer(model, self.plan)
        self.threads = torch.get_num_threads()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np
        import torch

        out = []
        for payload in batch["item"]:
            index, results, images, ok_positions, view_counts, degraded, decode_seconds = pickle.loads(payload)
            started = time.perf_counter()
            scores = self.scorer.scores(torch.from_numpy(images), view_counts, degraded,
                                        routes_of(results, ok_positions, degraded))
            compute = {**self.plan.describe(), "torch_threads": self.threads}
            out.append(pickle.dumps((index, results, ok_positions, scores, decode_seconds,
                                     time.perf_counter() - started, compute), protocol=pickle.HIGHEST_PROTOCOL))
        return {"item": np.array(out, dtype=object)}
