"""Static sub-DiTs: `extract_subnet(supernet, cfg)` copies one sub-DiT's weights out of the
supernet into plain `nn.Linear` / `nn.Conv2d` / `nn.LayerNorm` modules.

The static model owns only what its config runs: the active slices, its width's per-width
parameters, the KV-compression convs only for "assa"/"global", the gate only for "assa", long-skip
fusions only for Up blocks that receive a skip. Its parameter count is `hwnas.cost.count_params`,
and its forward runs the supernet's glue (`hwnas.model.forward`) and attention functions, so the
outputs agree. It is what gets exported (ONNX, TVM), timed and quantized.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
from torch import nn

from hwnas.cost import TIME_FREQ_DIM
from hwnas.model.attention import ElasticCrossAttention, ElasticSelfAttention, cross_attention, self_attention
from hwnas.model.dit import ElasticBlock, ElasticDiT
from hwnas.model.forward import block_forward, dit_forward
from hwnas.model.ops import NORM_EPS
from hwnas.space import STAGES, SearchSpace, Stage, StageConfig, SubnetConfig


class StaticSelfAttention(nn.Module):
    """Self-attention of one static block (`attn` fixed at construction)."""

    def __init__(self, space: SearchSpace, cfg: StageConfig) -> None:
        super().__init__()
        hd, c = space.head_dim, space.kv_compress
        self.heads = space.heads(cfg.width)
        self.kv_heads = space.kv_heads_for(self.heads)
        self.attn, self.radius, self.blocks, self.kv_compress = cfg.attn, cfg.radius, space.bna_blocks, c
        d, kv = self.heads * hd, self.kv_heads * hd
        self.q, self.k, self.v, self.o = nn.Linear(d, d), nn.Linear(d, kv), nn.Linear(d, kv), nn.Linear(d, d)
        self.q_norm = nn.LayerNorm(hd, eps=NORM_EPS)
        self.k_norm = nn.LayerNorm(hd, eps=NORM_EPS)
        has_global = cfg.attn in ("assa", "global")
        self.compress_k = nn.Conv2d(kv, kv, c, stride=c) if has_global else None
        self.compress_v = nn.Conv2d(kv, kv, c, stride=c) if has_global else None
        self.gate = nn.Linear(d, self.heads) if cfg.attn == "assa" else None

    def forward(self, x: torch.Tensor, *, side: int) -> torch.Tensor:
        """x `(B, N, D)` on a `side x side` grid; returns `(B, N, D)`."""
        gate = torch.sigmoid(self.gate(x)) if self.gate is not None else None  # (B, N, H)
        out = self_attention(
            self.q(x), self.k(x), self.v(x), heads=self.heads, kv_heads=self.kv_heads, attn=self.attn,
            side=side, q_norm=self.q_norm, k_norm=self.k_norm, blocks=self.blocks, radius=self.radius,
            kv_compress=self.kv_compress, compress_k=self.compress_k, compress_v=self.compress_v, gate=gate,
        )  # (B, N, D)
        return self.o(out)


class StaticCrossAttention(nn.Module):
    def __init__(self, space: SearchSpace, cfg: StageConfig) -> None:
        super().__init__()
        hd = space.head_dim
        self.heads = space.heads(cfg.width)
        d, ckv = self.heads * hd, space.kv_heads * hd
        self.q, self.o = nn.Linear(d, d), nn.Linear(d, d)
        self.k, self.v = nn.Linear(space.text_dim, ckv), nn.Linear(space.text_dim, ckv)
        self.q_norm = nn.LayerNorm(hd, eps=NORM_EPS)
        self.k_norm = nn.LayerNorm(hd, eps=NORM_EPS)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        out = cross_attention(self.q(x), self.k(text), self.v(text), text_mask,
                              heads=self.heads, q_norm=self.q_norm, k_norm=self.k_norm)  # (B, N, D)
        return self.o(out)


class StaticBlock(nn.Module):
    """One block at fixed width, FFN ratio and attention; `skip_dim > 0` adds a long-skip fusion."""

    def __init__(self, space: SearchSpace, cfg: StageConfig, *, skip_dim: int = 0) -> None:
        super().__init__()
        d = space.dim(cfg.width)
        self.mod_table = nn.Parameter(torch.zeros(6, d))
        self.skip = nn.Linear(d + skip_dim, d) if skip_dim else None
        self.attn = StaticSelfAttention(space, cfg)
        self.cross_norm = nn.LayerNorm(d, eps=NORM_EPS)
        self.cross = StaticCrossAttention(space, cfg)
        self.ffn_in = nn.Linear(d, cfg.ffn_ratio * d)
        self.ffn_out = nn.Linear(cfg.ffn_ratio * d, d)

    def forward(
        self,
        x: torch.Tensor,
        stage_mod: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        side: int,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x `(B, N, D)`, stage_mod `(B, 6, D)`, skip `(B, N, D_down)` where the block fuses one."""
        return block_forward(
            x, stage_mod, text, text_mask, table=self.mod_table, attn=partial(self.attn, side=side),
            cross_norm=self.cross_norm, cross=self.cross, ffn_in=self.ffn_in, ffn_out=self.ffn_out,
            fuse=self.skip, skip=skip,
        )  # (B, N, D)


class StaticDiT(nn.Module):
    """A fixed sub-DiT `cfg` of `space` with freshly initialised weights (see `extract_subnet`)."""

    def __init__(self, space: SearchSpace, cfg: SubnetConfig) -> None:
        super().__init__()
        space.validate(cfg)
        self.space, self.cfg = space, cfg
        dims = {s: space.dim(cfg.stage(s).width) for s in STAGES}
        tm, c, p = space.time_dim, space.latent_channels, space.patch_size
        self.patch_embed = nn.Conv2d(c, dims["down"], p, stride=p)
        self.time_mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, tm), nn.SiLU(), nn.Linear(tm, tm))
        self.stage_mod = nn.ModuleDict({s: nn.Linear(tm, 6 * dims[s]) for s in STAGES})
        self.final_mod = nn.Linear(tm, 2 * dims["up"])
        self.down_blocks = nn.ModuleList([StaticBlock(space, cfg.down) for _ in range(cfg.down.depth)])
        self.downsample = nn.Conv2d(dims["down"], dims["middle"], 2, stride=2)
        self.middle_blocks = nn.ModuleList([StaticBlock(space, cfg.middle) for _ in range(cfg.middle.depth)])
        self.upsample = nn.ConvTranspose2d(dims["middle"], dims["up"], 2, stride=2)
        self.up_blocks = nn.ModuleList([
            StaticBlock(space, cfg.up, skip_dim=dims["down"] if j < cfg.down.depth else 0)
            for j in range(cfg.up.depth)
        ])
        self.final_table = nn.Parameter(torch.zeros(2, dims["up"]))
        self.final_linear = nn.Linear(dims["up"], p * p * c)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        features: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Velocity `(B, C, H, W)`; see `ElasticDiT.forward` (same inputs, no `cfg`)."""
        return dit_forward(
            x, t, text, text_mask, space=self.space, patch_embed=self.patch_embed, time_mlp=self.time_mlp,
            stage_mod=self.stage_mod, blocks=self.stage_blocks(), downsample=self.downsample,
            upsample=self.upsample, final_mod=self.final_mod, final_table=self.final_table,
            final_linear=self.final_linear, features=features,
        )

    def stage_blocks(self) -> dict[Stage, nn.ModuleList]:
        return {"down": self.down_blocks, "middle": self.middle_blocks, "up": self.up_blocks}


@torch.no_grad()
def extract_subnet(supernet: ElasticDiT, cfg: SubnetConfig) -> StaticDiT:
    """A standalone copy of sub-DiT `cfg` of `supernet` (same device and dtype, own tensors).

    `extract_subnet(s, cfg)(x, t, text, mask)` equals `s(x, t, text, mask, cfg)`, and its
    parameter count equals `hwnas.cost.count_params(cfg, s.space)`. The static model is built on
    the meta device, then every layer of it is replaced by its supernet counterpart exported at
    the sizes of `cfg` (the two models are walked in parallel).
    """
    space = supernet.space
    space.validate(cfg)
    with torch.device("meta"):
        static = StaticDiT(space, cfg)
    dims = {s: space.dim(cfg.stage(s).width) for s in STAGES}
    tm, c, p = space.time_dim, space.latent_channels, space.patch_size
    static.patch_embed = supernet.patch_embed.export(c, dims["down"])
    static.time_mlp = copy.deepcopy(supernet.time_mlp)
    for s in STAGES:
        static.stage_mod[s] = supernet.stage_mod[s].export(tm, dims[s])
        for mine, theirs in zip(static.stage_blocks()[s], supernet.stage_blocks()[s]):
            _export_block(mine, theirs, space, cfg.stage(s))
    static.final_mod = supernet.final_mod.export(tm, dims["up"])
    static.downsample = supernet.downsample.export(dims["down"], dims["middle"])
    static.upsample = supernet.upsample.export(dims["middle"], dims["up"])
    static.final_table = supernet.final_table.export(dims["up"])
    static.final_linear = supernet.final_linear.export(dims["up"], p * p * c)
    if not supernet.patch_embed.weight.is_meta:
        missed = [name for name, param in static.named_parameters() if param.is_meta]
        if missed:
            raise RuntimeError(f"extract_subnet left {missed} without supernet weights")
    static.requires_grad_(True)  # own, trainable parameters, even where the supernet is frozen (a teacher)
    return static.train(supernet.training)


def _export_block(static: StaticBlock, elastic: ElasticBlock, space: SearchSpace, cfg: StageConfig) -> None:
    """Replace the layers of `static` (a block of `cfg`) by slices of `elastic`."""
    heads = space.heads(cfg.width)
    kv_heads = space.kv_heads_for(heads)
    d = heads * space.head_dim
    static.mod_table = elastic.mod_table.export(d)
    if static.skip is not None:
        static.skip = elastic.skip.export((d, static.skip.in_features - d), d)  # type: ignore[union-attr]
    _export_self_attention(static.attn, elastic.attn, heads=heads, kv_heads=kv_heads)
    static.cross_norm = elastic.cross_norm.export(d)
    _export_cross_attention(static.cross, elastic.cross, heads=heads)
    static.ffn_in = elastic.ffn_in.export(d, cfg.ffn_ratio * d)
    static.ffn_out = elastic.ffn_out.export(cfg.ffn_ratio * d, d)


def _export_self_attention(
    static: StaticSelfAttention, elastic: ElasticSelfAttention, *, heads: int, kv_heads: int
) -> None:
    d, kv = heads * elastic.head_dim, kv_heads * elastic.head_dim
    static.q, static.k = elastic.q.export(d, d), elastic.k.export(d, kv)
    static.v, static.o = elastic.v.export(d, kv), elastic.o.export(d, d)
    static.q_norm, static.k_norm = copy.deepcopy(elastic.q_norm), copy.deepcopy(elastic.k_norm)
    if static.compress_k is not None:
        static.compress_k = elastic.compress_k.export(kv, kv)  # type: ignore[union-attr]
        static.compress_v = elastic.compress_v.export(kv, kv)  # type: ignore[union-attr]
    if static.gate is not None:
        static.gate = elastic.gate.export(d, heads)  # type: ignore[union-attr]


def _export_cross_attention(static: StaticCrossAttention, elastic: ElasticCrossAttention, *, heads: int) -> None:
    d = heads * elastic.head_dim
    static.q, static.o = elastic.q.export(d, d), elastic.o.export(d, d)
    static.k, static.v = copy.deepcopy(elastic.k), copy.deepcopy(elastic.v)
    static.q_norm, static.k_norm = copy.deepcopy(elastic.q_norm), copy.deepcopy(elastic.k_norm)
