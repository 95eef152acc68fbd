"""Checkpoints: safetensors weights plus JSON metadata, written atomically.

A checkpoint directory holds
- `supernet.safetensors`: the weights to use (EMA), tensors prefixed `dit.` and `text.`;
- `supernet.json`: metadata (experiment file and its content, step, tokenizer vocabulary,
  training settings, metrics, wall time);
- `train_state.pt` (training runs only): raw weights, optimizer and EMA state for `--resume`,
  loaded with `torch.load(weights_only=True)`.

Each file is written atomically (`hwnas.io`), so a killed writer leaves the previous checkpoint
intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hwnas.io import atomic_write, atomic_write_json

WEIGHTS = "supernet.safetensors"
META = "supernet.json"
TRAIN_STATE = "train_state.pt"


def save_weights(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write weights then metadata; the metadata names the weights' step, so it goes last."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(directory / WEIGHTS, lambda tmp: save_file(flat, tmp, metadata={"format": "pt"}))
    atomic_write_json(directory / META, meta, sort_keys=True)


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """ValueError naming `path` and the first tensor (by name) holding a NaN or infinity."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValueError(f"{path}: tensor {name!r} has {bad} non-finite value(s) of {t.numel()} "
                             f"(NaN or infinity; a diverged or damaged run): refusing to load it")


def load_weights(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read `supernet.safetensors` and `supernet.json`; a clear ValueError if either is bad or a
    weight is not finite (`check_finite`)."""
    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    weights, meta = directory / WEIGHTS, directory / META
    for path in (weights, meta):
        if not path.exists():
            raise ValueError(f"{path}: checkpoint file not found")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights}: corrupt checkpoint ({exc})") from None
    check_finite(tensors, weights)
    try:
        info = json.loads(meta.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta}: corrupt checkpoint metadata ({exc})") from None
    return tensors, info


def save_train_state(directory: Path, state: dict[str, Any], *, name: str = TRAIN_STATE) -> None:
    """Write a resume state (tensors, numbers, dicts) atomically as `directory/name`."""
    atomic_write(directory / name, lambda tmp: torch.save(state, tmp))


def load_train_state(directory: Path, *, name: str = TRAIN_STATE, what: str = "training") -> dict[str, Any]:
    """Read a resume state with `weights_only=True`; `what` names the run kind in errors."""
    path = directory / name
    if not path.exists():
        raise ValueError(f"{path}: no {what} state to resume from")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged pickle/zip
        raise ValueError(f"{path}: corrupt {what} state ({exc})") from None


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    cut = len(prefix) + 1
    return {k[cut:]: v for k, v in state.items() if k.startswith(prefix + ".")}
