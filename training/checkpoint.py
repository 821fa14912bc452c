"""Resumable training checkpoints without pickle: tensors in safetensors, the rest in JSON.

``checkpoint.safetensors`` holds the network's state and the optimiser's momentum buffers;
``checkpoint.json`` holds the epoch, step, arguments and history, and the sha256 of the tensor
file it belongs to. The JSON is written last, so a checkpoint interrupted mid-write is never
taken for a complete one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.atomic import atomic_path, write_text
from audit.model import ModelError, file_sha256, refuse_pickle

TENSORS_NAME = "checkpoint.safetensors"
STATE_NAME = "checkpoint.json"


@dataclass
class TrainingState:
    epochs_done: int
    step: int
    args: dict[str, Any]
    history: list[dict[str, Any]]
    extra: dict[str, Any]


def save_checkpoint(run_dir: Path, net: nn.Module, optimizer: torch.optim.Optimizer, state: TrainingState) -> None:
    from safetensors.torch import save_file

    run_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
        buffer = optimizer.state.get(param, {}).get("momentum_buffer")
        if buffer is not None:
            tensors[f"momentum.{index}"] = buffer.detach().contiguous().cpu()
    tensors_path = run_dir / TENSORS_NAME
    with atomic_path(tensors_path) as tmp:
        save_file(tensors, str(tmp))
    payload = {
        "epochs_done": state.epochs_done,
        "step": state.step,
        "args": state.args,
        "history": state.history,
        "extra": state.extra,
        "tensors_sha256": file_sha256(tensors_path),
    }
    write_text(run_dir / STATE_NAME, json.dumps(payload, indent=1) + "\n")


def resolve_checkpoint(path: Path) -> Path:
    """Accept a run folder or its checkpoint.json; refuse pickle files with a clear message."""
    if path.is_dir():
        path = path / STATE_NAME
    if path.suffix != ".json":
        refuse_pickle(path)
        raise ModelError(f"{path}: give a run folder or its {STATE_NAME}")
    if not path.is_file():
        raise ModelError(f"no checkpoint to resume from: {path} does not exist")
    return path


def read_state(path: Path) -> TrainingState:
    """The checkpoint's JSON alone: epochs, step, arguments, history (no tensors read)."""
    payload = json.loads(resolve_checkpoint(path).read_text(encoding="utf-8"))
    return TrainingState(payload["epochs_done"], payload["step"], payload["args"], payload["history"], payload.get("extra", {}))


def load_checkpoint(path: Path, net: nn.Module | None, optimizer: torch.optim.Optimizer | None) -> TrainingState:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state_path = resolve_checkpoint(path)
    payload = json.loads(state_path.read_text(encoding="utf-8"))
    if net is None:
        return read_state(state_path)
    tensors_path = state_path.parent / TENSORS_NAME
    if file_sha256(tensors_path) != payload["tensors_sha256"]:
        raise ModelError(f"{tensors_path} does not belong to {state_path} (sha256 differs)")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"cannot read {tensors_path}: {exc}") from None
    net.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    if optimizer is not None:
        for index, param in enumerate(p for group in optimizer.param_groups for p in group["params"]):
            key = f"momentum.{index}"
            if key in tensors:
                optimizer.state[param]["momentum_buffer"] = tensors[key].to(param.device)
    return TrainingState(
        epochs_done=payload["epochs_done"],
        step=payload["step"],
        args=payload["args"],
        history=payload["history"],
        extra=payload.get("extra", {}),
    )
