"""What a scan is asked to do: :class:`ScanOptions`, filled by the command line or by a caller.

The defaults live here, beside the options, so the CLI, the pipeline and the benchmarks agree.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.intake import DEFAULT_MAX_PIXELS
from audit.model import DEFAULT_BATCH_SIZE

ENGINE_CHOICES = ("local", "ray")


@dataclass
class ScanOptions:
    archives: tuple[str, ...]
    out_dir: Path | None = None  # default: reports/<run-id>/
    model_path: str | None = None  # default: audit.model._card.DEFAULT_MODEL_PATH
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
    fail_on_uncertain: bool = False  # exit 4 when a row is uncertain and no reviewer decided it
    check_degraded: bool = False  # also score a degraded copy of each image (or when the card asks for it)
    progress: str = "auto"  # auto: a bar on a terminal, log lines otherwise; none: quiet
    draft: bool = True  # JPEG draft decoding (the benchmark turns it off to compare)
    write_xlsx: bool = True
    report: bool = True  # render report.html / report.pdf (audit.report._render) after the results
    max_gallery: int = 200  # flagged images shown in the report (most confident first)
    evidence: bool = True  # read provenance metadata (audit.evidence._metadata); off: the model alone decides
    trust_anchors: str | None = None  # PEM file of C2PA trust anchors; None: no trust list
    store: Path | None = None  # the run store (audit.store._store); default: beside the run folder
    full: bool = False  # score every file again instead of reusing the store's results
    allow_empty_root: bool = False  # a root with no file while the store knows some: its files were deleted
    engine: str = "local"  # local: this process and its DataLoader; ray: a Ray cluster (audit.engines.ray._engine)
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
