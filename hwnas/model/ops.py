"""Elastic ops: layers that store the supernet's largest weights and run a slice of them.

Every elastic op takes the active sizes as forward arguments (OFA keeps them as `active_*`
module attributes; we do not). Slicing keeps the leading rows/columns (`weight[:out, :in]`), so
a narrower sub-DiT is always a prefix of a wider one. Per-width parameters (LayerNorm affine,
modulation tables) are not sliced: each width owns its own copy (SnapGen++ section 3.3).
Each op runs at chosen sizes two ways: `at(sizes)` is a one-argument callable on the stored
weights (the supernet forward), `export(sizes)` a standalone `nn.Linear` / `nn.Conv2d` /
`nn.ConvTranspose2d` / `nn.LayerNorm` holding a copy of the slice (`extract_subnet`).
Also here: the small shape helpers shared by the elastic and the static DiT.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

NORM_EPS = 1e-6
_Weighted = TypeVar("_Weighted", nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


def width_key(dim: int) -> str:
    """Key of a per-width parameter for a stage of hidden size `dim` (e.g. `"d24"`)."""
    return f"d{dim}"


class ElasticLinear(nn.Module):
    """Linear layer whose output rows and input columns are sliced per call.

    `in_max` may be a tuple: the input is then a concatenation of parts, each stored at its own
    maximum size and sliced separately (a long-skip fusion reads `cat(x[:D_up], skip[:D_down])`
    from columns `[:D_up]` and `[Dm:Dm + D_down]`). With `chunks > 1` the output is that many
    vectors of `out_max` each (adaLN modulation: shift, scale, gate, ...), and every chunk is
    sliced to `out_features` (weight viewed as `(chunks, out_max, in)`).
    """

    def __init__(self, in_max: int | Sequence[int], out_max: int, *, chunks: int = 1) -> None:
        super().__init__()
        self.in_parts = (in_max,) if isinstance(in_max, int) else tuple(in_max)
        self.out_max = out_max
        self.chunks = chunks
        self.weight = nn.Parameter(torch.empty(chunks * out_max, sum(self.in_parts)))
        self.bias = nn.Parameter(torch.zeros(chunks * out_max))
        nn.init.xavier_uniform_(self.weight)

    def sliced(self, in_features: int | Sequence[int], out_features: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The active `(weight (chunks*out, in), bias (chunks*out,))` for these sizes."""
        ins = (in_features,) if isinstance(in_features, int) else tuple(in_features)
        if len(ins) != len(self.in_parts) or any(a > m for a, m in zip(ins, self.in_parts)):
            raise ValueError(f"input sizes {ins} do not fit the stored maximum {self.in_parts}")
        if out_features > self.out_max:
            raise ValueError(f"out_features {out_features} exceeds the stored maximum {self.out_max}")
        w = self.weight.view(self.chunks, self.out_max, -1)[:, :out_features]  # (c, out, sum(in_max))
        starts = [sum(self.in_parts[:i]) for i in range(len(self.in_parts))]
        if len(ins) == 1:
            w = w[..., : ins[0]]
        else:
            w = torch.cat([w[..., s : s + a] for s, a in zip(starts, ins)], dim=-1)
        b = self.bias.view(self.chunks, self.out_max)[:, :out_features]
        return w.reshape(self.chunks * out_features, sum(ins)), b.reshape(-1)

    def forward(self, x: torch.Tensor, in_features: int | Sequence[int], out_features: int) -> torch.Tensor:
        w, b = self.sliced(in_features, out_features)
        return F.linear(x, w, b)  # (..., chunks*out)

    def at(self, in_features: int | Sequence[int], out_features: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """This layer at these sizes as a one-argument callable."""
        return lambda x: self(x, in_features, out_features)

    def export(self, in_features: int | Sequence[int], out_features: int) -> nn.Linear:
        """A standalone `nn.Linear` with a copy of the active slice (same device and dtype)."""
        w, b = self.sliced(in_features, out_features)
        return _holding(nn.Linear(w.shape[1], w.shape[0], device="meta"), w, b)


class ElasticConv2d(nn.Module):
    """Conv2d with kernel = stride (patchify, 2x downsample, KV compression), channels sliced."""

    def __init__(self, in_max: int, out_max: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(out_max, in_max, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_max))
        nn.init.xavier_uniform_(self.weight.view(out_max, -1))

    def sliced(self, in_channels: int, out_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight[:out_channels, :in_channels], self.bias[:out_channels]

    def forward(self, x: torch.Tensor, in_channels: int, out_channels: int) -> torch.Tensor:
        w, b = self.sliced(in_channels, out_channels)
        return F.conv2d(x, w, b, stride=self.kernel)  # (B, out, H/k, W/k)

    def at(self, in_channels: int, out_channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: self(x, in_channels, out_channels)

    def export(self, in_channels: int, out_channels: int) -> nn.Conv2d:
        k = self.kernel
        conv = nn.Conv2d(in_channels, out_channels, k, stride=k, device="meta")
        return _holding(conv, *self.sliced(in_channels, out_channels))


class ElasticConvTranspose2d(nn.Module):
    """ConvTranspose2d with kernel = stride (2x upsample), channels sliced.

    The weight is stored `(in_max, out_max, k, k)` as in `nn.ConvTranspose2d`.
    """

    def __init__(self, in_max: int, out_max: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.weight = nn.Parameter(torch.empty(in_max, out_max, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_max))
        nn.init.xavier_uniform_(self.weight.view(in_max, -1))

    def sliced(self, in_channels: int, out_channels: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight[:in_channels, :out_channels], self.bias[:out_channels]

    def forward(self, x: torch.Tensor, in_channels: int, out_channels: int) -> torch.Tensor:
        w, b = self.sliced(in_channels, out_channels)
        return F.conv_transpose2d(x, w, b, stride=self.kernel)  # (B, out, H*k, W*k)

    def at(self, in_channels: int, out_channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: self(x, in_channels, out_channels)

    def export(self, in_channels: int, out_channels: int) -> nn.ConvTranspose2d:
        k = self.kernel
        conv = nn.ConvTranspose2d(in_channels, out_channels, k, stride=k, device="meta")
        return _holding(conv, *self.sliced(in_channels, out_channels))


class PerWidthTable(nn.Module):
    """One `(rows, dim)` parameter per width of a stage (e.g. a block's adaLN table, rows = 6)."""

    def __init__(self, dims: Sequence[int], rows: int) -> None:
        super().__init__()
        self.tables = nn.ParameterDict({width_key(d): nn.Parameter(torch.zeros(rows, d)) for d in dims})

    def forward(self, dim: int) -> torch.Tensor:
        return self.tables[_checked_key(self.tables, dim)]  # (rows, dim)

    def export(self, dim: int) -> nn.Parameter:
        return nn.Parameter(self(dim).detach().clone())


class PerWidthLayerNorm(nn.Module):
    """A LayerNorm with its own affine parameters for every width of a stage."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        self.norms = nn.ModuleDict({width_key(d): nn.LayerNorm(d, eps=NORM_EPS) for d in dims})

    def forward(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return self.norm(dim)(x)  # (..., dim)

    def norm(self, dim: int) -> nn.LayerNorm:
        return self.norms[_checked_key(self.norms, dim)]  # type: ignore[return-value]

    def export(self, dim: int) -> nn.LayerNorm:
        return copy.deepcopy(self.norm(dim))


def _holding(layer: _Weighted, weight: torch.Tensor, bias: torch.Tensor) -> _Weighted:
    """`layer` (built on the meta device) with copies of `weight` and `bias` as its parameters."""
    layer.weight = nn.Parameter(weight.detach().clone(memory_format=torch.contiguous_format))
    layer.bias = nn.Parameter(bias.detach().clone(memory_format=torch.contiguous_format))
    return layer


def _checked_key(table: nn.ParameterDict | nn.ModuleDict, dim: int) -> str:
    key = width_key(dim)
    if key not in table:
        raise ValueError(f"no per-width parameters for hidden size {dim}; stored: {sorted(table.keys())}")
    return key


# Shared shape helpers (elastic and static DiT) --------------------------------------------------


def timestep_features(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of flow time `t` in [0, 1] (scaled by 1000 as in DiT's integer steps).

    Returns `(B, dim)`: `[cos(1000 t f_i), sin(1000 t f_i)]` with `f_i = max_period^(-i / (dim/2))`
    (DiT's `TimestepEmbedder.timestep_embedding`).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim), float32


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: `x * (1 + scale) + shift` with per-sample `(B, D)` shift and scale."""
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, N, D)


def plain_norm(x: torch.Tensor) -> torch.Tensor:
    """LayerNorm over the last dim without affine parameters."""
    return F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)


def to_grid(x: torch.Tensor, side: int) -> torch.Tensor:
    """Tokens `(B, side*side, C)` in row-major order to a feature map `(B, C, side, side)`."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """Feature map `(B, C, S, S)` to row-major tokens `(B, S*S, C)`."""
    return x.flatten(2).transpose(1, 2)


def unpatchify(x: torch.Tensor, *, channels: int, patch: int, side: int) -> torch.Tensor:
    """Tokens `(B, side^2, patch^2 * channels)` (DiT's `p, q, c` order) to `(B, C, H, W)`."""
    b = x.shape[0]
    x = x.reshape(b, side, side, patch, patch, channels)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, side, p, side, q)
    return x.reshape(b, channels, side * patch, side * patch)
