"""Training settings: the `[train]` table of an experiment TOML, as a frozen dataclass."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from hwnas._keys import check_keys


@dataclass(frozen=True)
class TrainConfig:
    """Elastic supernet training (SnapGen++ section 3.2 style), all sizes per optimizer step.

    `batch_size` is global (split across torchrun ranks). Each step trains the largest sub-DiT
    plus `subnets_per_step` uniformly sampled ones (and the smallest too when `sandwich`); the
    sampled ones also regress to the largest's stop-gradient velocity with `distill_weight`.
    `dataset_size` images of the experiment's dataset are rendered once and reused. Every
    `val_every` steps the validation loss of the largest and smallest sub-DiT goes to val_log.csv.
    """

    steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    cond_dropout: float = 0.1
    time_shift: float = 1.0
    subnets_per_step: int = 1
    sandwich: bool = True
    distill_weight: float = 1.0
    dataset_size: int = 20000
    text_layers: int = 2
    seed: int = 0
    checkpoint_every: int = 250
    val_every: int = 500

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "dataset_size", "checkpoint_every", "val_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("warmup_steps", "subnets_per_step", "text_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout!r}")
        if self.time_shift <= 0:
            raise ValueError(f"time_shift must be positive, got {self.time_shift!r}")

    def with_overrides(self, **overrides: Any) -> TrainConfig:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def load_train_config(path: str | Path) -> TrainConfig:
    """The `[train]` table of an experiment (defaults where it is absent); errors name the file."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text()).get("train", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot read [train]: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: [train] must be a table, got {raw!r}")
    try:
        check_keys(raw, {f.name for f in fields(TrainConfig)}, where="train")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        return TrainConfig(**raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: [train] {exc}") from None
