"""Device, precision, threads and workers: one vocabulary for the scan and training.

Precision names are the command line's (``--precision auto|fp32|bf16|fp16`` in both ``audit
scan`` and ``python -m training``). What ``auto`` means differs by use, for a reason:

* scoring (``for_training=False``): fp16 autocast on CUDA; on the CPU fp32, or bf16 when the
  model card says its probabilities were validated in bf16 and the CPU has native bf16 (bf16
  moved probabilities by up to 0.11 on a model validated in fp32);
* training: bf16 where it is native (a CUDA GPU with bf16, a CPU with avx512_bf16/amx_bf16),
  fp16 on an older GPU, else fp32.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit.errors import UsageError

if TYPE_CHECKING:  # torch is imported where the network runs
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
DEFAULT_BATCH_SIZE = 256  # images per scoring batch
_AUTOCAST_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


class ComputeError(UsageError):
    """The requested compute setup is not available (e.g. --device cuda without a GPU)."""


def usable_cpus() -> int:
    """CPUs this process may run on (a container or taskset may allow fewer than the host has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cpu_has_native_bf16(cpuinfo_path: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has bf16 instructions; without them bf16 is emulated and slow."""
    try:
        with open(cpuinfo_path, encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA when a GPU is present; asking for CUDA without one is the user's to fix."""
    if name not in DEVICE_CHOICES:
        raise ComputeError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    import torch

    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ComputeError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and cuda) else "cpu")


def resolve_precision(precision: str, device: torch.device, for_training: bool = False,
                      card_compute_dtype: str = "float32") -> str:
    """The concrete precision name (fp32, bf16 or fp16) that ``auto`` stands for here."""
    if precision not in PRECISION_CHOICES:
        raise ComputeError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        import torch

        return "bf16" if for_training and torch.cuda.is_bf16_supported() else "fp16"
    native = cpu_has_native_bf16()
    if for_training:
        return "bf16" if native else "fp32"
    return "bf16" if native and card_compute_dtype in ("bfloat16", "bf16") else "fp32"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a concrete precision name; None for plain fp32."""
    import torch

    return getattr(torch, _AUTOCAST_DTYPES[precision]) if precision in _AUTOCAST_DTYPES else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=dtype)


def default_workers(device: torch.device, for_training: bool = False) -> int:
    """Decode (or augment) worker processes when --workers is not given.

    On CUDA decoding is the bottleneck, so most cores decode. On the CPU the workers share the
    cores with the model: for scoring, decoding a CIFAKE-sized image costs about a tenth of
    scoring it, so half the cores (at least one, so decoding overlaps compute) is enough; in
    training the batch is augmented in the main process, between steps.
    """
    cores = usable_cpus()
    if device.type == "cuda":
        # Training's augmenting workers take every core (the loop itself waits on the GPU).
        return min(8, cores) if for_training else max(1, min(8, cores - 1))
    return 0 if for_training else max(1, min(4, cores // 2))


@dataclass(frozen=True)
class ComputePlan:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool
    pin_memory: bool

    def describe(self) -> dict[str, str | bool]:
        dtype = str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else "float32"
        return {"device": str(self.device), "precision": dtype, "channels_last": self.channels_last, "pin_memory": self.pin_memory}

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.autocast_dtype)


def plan_compute(device: str = "auto", precision: str = "auto", card_compute_dtype: str = "float32") -> ComputePlan:
    """Device and precision for scoring. ``card_compute_dtype`` is the model card's
    compute_dtype: the precision its probabilities were validated in."""
    chosen = pick_device(device)
    concrete = resolve_precision(precision, chosen, card_compute_dtype=card_compute_dtype)
    return ComputePlan(device=chosen, autocast_dtype=autocast_dtype(concrete), channels_last=True,
                       pin_memory=chosen.type == "cuda")
