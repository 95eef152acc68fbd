"""PyTorch modules for LUT kernels: one static module per `KernelKey`, with random weights and inputs.

Each module runs one piece of `hwnas.model.forward` (the glue `StaticDiT` and the supernet run)
on its own layers; blocks are a `StaticBlock`. So the sum of kernel latencies models one whole
compiled denoiser step. Inputs are batch 1: blocks take `x (1, N, D)`, the stage modulation
`(1, 6, D)`, `text (1, L, Ct)`, `text_mask (1, L)` bool and, for Up blocks that fuse a long skip,
`skip (1, N, D_down)`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hwnas.cost import Op
from hwnas.latency.kernels import KernelKey
from hwnas.model.forward import final_layer, modulation, patch_tokens, resample, time_condition
from hwnas.model.static import StaticBlock
from hwnas.space import SearchSpace, StageConfig


class _PatchEmbed(nn.Module):
    def __init__(self, op: Op) -> None:
        super().__init__()
        self.conv = nn.Conv2d(op.channels, op.dim, op.patch, stride=op.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return patch_tokens(self.conv, x)  # (1, N, D)


class _TimeEmbed(nn.Module):
    def __init__(self, op: Op) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(op.in_dim, op.dim), nn.SiLU(), nn.Linear(op.dim, op.dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return time_condition(self.mlp, t)  # (1, Tm)


class _StageMod(nn.Module):
    """A stage's modulation linear (`final_mod` too, chunks = 2)."""

    def __init__(self, op: Op) -> None:
        super().__init__()
        self.chunks = op.chunks
        self.linear = nn.Linear(op.in_dim, op.chunks * op.dim)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        return modulation(self.linear, cond, chunks=self.chunks)  # (1, chunks, D)


class _Block(nn.Module):
    """One `StaticBlock` call with positional inputs (what `torch.export` traces)."""

    def __init__(self, block: StaticBlock, *, side: int) -> None:
        super().__init__()
        self.block, self.side = block, side

    def forward(self, x: torch.Tensor, mod: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
                *skip: torch.Tensor) -> torch.Tensor:
        return self.block(x, mod, text, text_mask, side=self.side, skip=skip[0] if skip else None)  # (1, N, D)


class _Resample(nn.Module):
    def __init__(self, op: Op, *, side_in: int) -> None:
        super().__init__()
        self.side_in = side_in
        if op.kind == "downsample":
            self.conv: nn.Module = nn.Conv2d(op.in_dim, op.dim, 2, stride=2)
        else:
            self.conv = nn.ConvTranspose2d(op.in_dim, op.dim, 2, stride=2)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return resample(self.conv, h, side=self.side_in)  # (1, N_out, D)


class _Final(nn.Module):
    """The final layer; its `final_mod` linear is a `stage_mod` kernel whose output `(1, 2, D)` is
    this kernel's `mod` input."""

    def __init__(self, op: Op) -> None:
        super().__init__()
        self.channels, self.patch, self.side = op.channels, op.patch, math.isqrt(op.tokens)
        self.table = nn.Parameter(torch.randn(2, op.dim) * 0.02)
        self.linear = nn.Linear(op.dim, op.patch**2 * op.channels)

    def forward(self, h: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        return final_layer(h, mod, table=self.table, linear=self.linear, channels=self.channels,
                           patch=self.patch, side=self.side)  # (1, C, H, W)


def _stage_config(op: Op, space: SearchSpace) -> StageConfig:
    """The `StageConfig` of a block op (width from its hidden size), checked against the op's heads."""
    stage = op.kind.removesuffix("_block")
    choices = space.stages[stage]  # type: ignore[index]
    widths = [w for w in choices.width if space.dim(w) == op.dim]
    if not widths:
        raise ValueError(f"no width of stage {stage!r} of {space.name!r} has hidden size {op.dim}")
    width = widths[0]
    if space.heads(width) != op.heads or space.head_dim != op.head_dim:
        raise ValueError(f"kernel {op} does not match space {space.name!r} (heads {space.heads(width)})")
    return StageConfig(width=width, depth=min(choices.depth), ffn_ratio=op.ffn_ratio, attn=op.attn,  # type: ignore[arg-type]
                       radius=op.radius)


def kernel_module(key: KernelKey, space: SearchSpace, *, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """(module in eval mode with random weights, example inputs at batch 1) of one fp32 kernel.

    Only fp32 kernels are built (fp16/bf16 matmul is ~0.4 GFLOP/s on the host CPUs); other precisions
    raise ValueError.
    """
    if key.precision != "fp32":
        raise ValueError(f"measured kernels are fp32 only, got {key.describe()}")
    op = key.op
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    n, d = op.tokens, op.dim
    if op.kind == "patch_embed":
        side = math.isqrt(n) * op.patch
        module: nn.Module = _PatchEmbed(op)
        args: tuple[torch.Tensor, ...] = (rand(1, op.channels, side, side),)
    elif op.kind == "time_embed":
        module, args = _TimeEmbed(op), (torch.rand(1, generator=gen),)
    elif op.kind == "stage_mod":
        module, args = _StageMod(op), (rand(1, op.in_dim),)
    elif op.kind in ("downsample", "upsample"):
        n_in = 4 * n if op.kind == "downsample" else n // 4
        module, args = _Resample(op, side_in=math.isqrt(n_in)), (rand(1, n_in, op.in_dim),)
    elif op.kind == "final":
        module, args = _Final(op), (rand(1, n, d), rand(1, 2, d) * 0.1)
    elif op.is_block:
        block = StaticBlock(space, _stage_config(op, space), skip_dim=op.skip_dim)
        with torch.no_grad():
            block.mod_table.normal_(0.0, 0.02)
        mask = torch.rand(1, op.text_len, generator=gen) < 0.7
        mask[:, 0] = True
        args = (rand(1, n, d), rand(1, 6, d) * 0.1, rand(1, op.text_len, op.text_dim), mask)
        if op.skip_dim:
            args += (rand(1, n, op.skip_dim),)
        module = _Block(block, side=math.isqrt(n))
    else:  # pragma: no cover - OpKind is closed
        raise ValueError(f"unknown kernel kind {op.kind!r}")
    return module.eval(), args
