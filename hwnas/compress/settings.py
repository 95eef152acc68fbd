"""The settings of compression, without torch: K-DMD distillation (`DistillConfig`, `terms`) and
weight quantization (`QuantSpec`). The CLI takes its choices and defaults from here."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, get_args

Mode = Literal["dmd", "kd", "kdmd"]
MODES: tuple[Mode, ...] = get_args(Mode)
Method = Literal["rtn", "kmeans", "fit"]
METHODS: tuple[Method, ...] = get_args(Method)
Bits = Literal[4, 8]
SideBits = Literal[8, 16]

DEFAULT_MODE: Mode = "dmd"
"""The student `hwnas distill` and `hwnas compress` train unless told; why this one: README,
"Distilled to 2 steps"."""
FINETUNE_STEPS = 2000
"""Straight-through fine-tuning steps of the stored biases, norms and adaLN tables after int4
quantization (`hwnas.compress.quant.finetune_biases_norms`); why this many: README, "int4 at proxy
widths"."""


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings, with every K-DMD term on (`terms` switches some off). `batch_size` is
    global (split across torchrun ranks). The default `student_steps` is where the latent proxy has a
    few-step gap to close (README, "Four steps lose nothing yet")."""

    steps: int = 300
    batch_size: int = 8
    student_steps: int = 2
    lr: float = 5e-5
    critic_lr: float = 1e-4
    beta1: float = 0.0
    critic_updates: int = 3
    cfg_scale: float = 4.0
    dmd_weight: float = 1.0
    kd_weight: float = 1.0
    feat_weight: float = 0.1
    kd_teacher_steps: int = 4
    t_min: float = 0.02
    t_max: float = 0.98
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "student_steps", "critic_updates", "kd_teacher_steps",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("dmd_weight", "kd_weight", "feat_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.dmd_weight == self.kd_weight == self.feat_weight == 0:
            raise ValueError("all loss terms are off (dmd_weight = kd_weight = feat_weight = 0)")
        if not 0.0 <= self.beta1 < 1.0:
            raise ValueError(f"beta1 must be in [0, 1), got {self.beta1!r}")
        if not 0.0 < self.t_min < self.t_max <= 1.0:
            raise ValueError(f"need 0 < t_min < t_max <= 1, got {self.t_min}, {self.t_max}")

    def term_names(self) -> list[str]:
        """The loss terms switched on: 'dmd', 'kd', 'feat'."""
        return [n for n, w in (("dmd", self.dmd_weight), ("kd", self.kd_weight), ("feat", self.feat_weight)) if w]


def terms(mode: Mode, base: DistillConfig | None = None) -> DistillConfig:
    """DMD-only (no knowledge terms), KD-only (no DMD, no critic needed) or K-DMD (all)."""
    base = base or DistillConfig()
    if mode == "dmd":
        return replace(base, kd_weight=0.0, feat_weight=0.0, dmd_weight=base.dmd_weight or 1.0)
    if mode == "kd":
        return replace(base, dmd_weight=0.0, kd_weight=base.kd_weight or 1.0)
    if mode == "kdmd":
        return base
    raise ValueError(f"mode must be 'dmd', 'kd' or 'kdmd', got {mode!r}")


def mode_name(terms_on: list[str] | tuple[str, ...]) -> str:
    """The name a student's loss terms go by: 'K-DMD', 'DMD' (no knowledge terms) or 'KD' (no DMD)."""
    if "dmd" not in terms_on:
        return "KD"
    return "K-DMD" if {"kd", "feat"} & set(terms_on) else "DMD"


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one weight. `group`: input channels per scale (rtn, and fit's rtn layers) or
    output rows per palette (kmeans; None = one palette per tensor). fit picks per layer: rtn where
    its input channels split into MatMulNBits blocks of 64 or more without padding, k-means palettes
    of at most 1/4 bit per weight elsewhere (`hwnas.compress.quant.fit_spec`). Why the defaults:
    README, "int4 at proxy widths".

    `side_bits`: how the parameters that are not weights of a matmul are stored (biases, norm
    affines, adaLN tables): 16 (fp16) or 8 (uint8 codes on an even grid from the tensor's minimum
    to its maximum, per tensor; `hwnas.compress.quant.round_side`). They are 2% of a 64-channel
    proxy sub-DiT's parameters but 4% of a 24-channel one's, where fp16 storage costs 0.45 bit a
    parameter; at SnapGen++ widths they are under 0.5%."""

    method: Method = "fit"
    bits: Bits = 4
    group: int | None = 128
    symmetric: bool = False
    side_bits: SideBits = 8

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits!r}")
        if self.method != "kmeans" and (self.group is None or self.group < 16 or self.group & (self.group - 1)):
            raise ValueError(f"{self.method} needs a power-of-two group >= 16 (MatMulNBits blocks), got {self.group!r}")
        if self.group is not None and self.group < 1:
            raise ValueError(f"group must be positive, got {self.group!r}")
        if self.side_bits not in (8, 16):
            raise ValueError(f"side_bits must be 8 or 16, got {self.side_bits!r}")
