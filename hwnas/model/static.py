"""Static sub-DiTs: `extract_subnet(supernet, cfg)` copies one sub-DiT's weights out of the
supernet into plain `nn.Linear` / `nn.Conv2d` / `nn.LayerNorm` modules.

The static model owns only what its config runs: the active slices, its width's per-width
parameters, the KV-compression convs only for "assa"/"global", the gate only for "assa", long-skip
fusions only for Up blocks that receive a skip. Its parameter count is `hwnas.cost.count_params`,
and its forward runs the same attention functions as the supernet, so the outputs agree. It is
what gets exported (ONNX, TVM), timed and quantized.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.cost import TIME_FREQ_DIM
from hwnas.model.attention import cross_attention, self_attention
from hwnas.model.dit import ElasticBlock, ElasticDiT, check_inputs
from hwnas.model.ops import (
    NORM_EPS,
    modulate,
    plain_norm,
    timestep_features,
    to_grid,
    to_tokens,
    unpatchify,
)
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
        if self.skip is not None:
            if skip is None:
                raise ValueError("this block fuses a long skip; pass skip=")
            x = self.skip(torch.cat([x, skip], dim=-1))  # (B, N, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = (stage_mod + self.mod_table).unbind(1)  # (B, D)
        x = x + gate1[:, None] * self.attn(modulate(plain_norm(x), shift1, scale1), side=side)
        x = x + self.cross(self.cross_norm(x), text, text_mask)
        h = self.ffn_out(F.gelu(self.ffn_in(modulate(plain_norm(x), shift2, scale2)), approximate="tanh"))
        return x + gate2[:, None] * h  # (B, N, D)


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
        space, cfg = self.space, self.cfg
        check_inputs(space, x, t, text, text_mask)
        side, b = space.grid_side, x.shape[0]
        c, p = space.latent_channels, space.patch_size
        dims = {s: space.dim(cfg.stage(s).width) for s in STAGES}

        h = to_tokens(self.patch_embed(x))  # (B, N, Dd)
        cond = F.silu(self.time_mlp(timestep_features(t, TIME_FREQ_DIM).to(x.dtype)))  # (B, Tm)
        mods = {s: self.stage_mod[s](cond).view(b, 6, dims[s]) for s in STAGES}  # (B, 6, D)

        skips = []
        for block in self.down_blocks:
            h = block(h, mods["down"], text, text_mask, side=side)  # (B, N, Dd)
            skips.append(h)
        h = to_tokens(self.downsample(to_grid(h, side)))  # (B, N/4, Dm)
        for block in self.middle_blocks:
            h = block(h, mods["middle"], text, text_mask, side=side // 2)
        h = to_tokens(self.upsample(to_grid(h, side // 2)))  # (B, N, Du)
        for j, block in enumerate(self.up_blocks):
            skip = skips[cfg.down.depth - 1 - j] if j < cfg.down.depth else None
            h = block(h, mods["up"], text, text_mask, side=side, skip=skip)  # (B, N, Du)

        du = dims["up"]
        shift, scale = (self.final_mod(cond).view(b, 2, du) + self.final_table).unbind(1)  # (B, Du)
        out = self.final_linear(modulate(plain_norm(h), shift, scale))  # (B, N, p*p*C)
        v = unpatchify(out, channels=c, patch=p, side=side)  # (B, C, H, W)
        return (v, h) if features else v


def _block_state(
    block: ElasticBlock, space: SearchSpace, cfg: StageConfig, *, skip_dim: int
) -> dict[str, torch.Tensor]:
    heads = space.heads(cfg.width)
    d, kv = heads * space.head_dim, space.kv_heads_for(heads) * space.head_dim
    hidden = cfg.ffn_ratio * d
    out: dict[str, torch.Tensor] = {"mod_table": block.mod_table(d)}

    def put(name: str, pair: tuple[torch.Tensor, torch.Tensor]) -> None:
        out[f"{name}.weight"], out[f"{name}.bias"] = pair

    def copy(name: str, module: nn.Module) -> None:
        out.update({f"{name}.{k}": v for k, v in module.state_dict().items()})

    if skip_dim:
        put("skip", block.skip.sliced((d, skip_dim), d))  # type: ignore[union-attr]
    sa = block.attn
    put("attn.q", sa.q.sliced(d, d))
    put("attn.k", sa.k.sliced(d, kv))
    put("attn.v", sa.v.sliced(d, kv))
    put("attn.o", sa.o.sliced(d, d))
    copy("attn.q_norm", sa.q_norm)
    copy("attn.k_norm", sa.k_norm)
    if cfg.attn in ("assa", "global"):
        put("attn.compress_k", sa.compress_k.sliced(kv, kv))  # type: ignore[union-attr]
        put("attn.compress_v", sa.compress_v.sliced(kv, kv))  # type: ignore[union-attr]
    if cfg.attn == "assa":
        put("attn.gate", sa.gate.sliced(d, heads))  # type: ignore[union-attr]
    copy("cross_norm", block.cross_norm.norm(d))
    ca = block.cross
    put("cross.q", ca.q.sliced(d, d))
    put("cross.o", ca.o.sliced(d, d))
    for name in ("k", "v", "q_norm", "k_norm"):
        copy(f"cross.{name}", getattr(ca, name))
    put("ffn_in", block.ffn_in.sliced(d, hidden))
    put("ffn_out", block.ffn_out.sliced(hidden, d))
    return out


def _sliced_state(supernet: ElasticDiT, cfg: SubnetConfig) -> dict[str, torch.Tensor]:
    """The state dict of `StaticDiT(space, cfg)` cut out of the supernet."""
    space = supernet.space
    dims = {s: space.dim(cfg.stage(s).width) for s in STAGES}
    tm, c, p = space.time_dim, space.latent_channels, space.patch_size
    state: dict[str, torch.Tensor] = {}

    def put(name: str, pair: tuple[torch.Tensor, torch.Tensor]) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = pair

    put("patch_embed", supernet.patch_embed.sliced(c, dims["down"]))
    state.update({f"time_mlp.{k}": v for k, v in supernet.time_mlp.state_dict().items()})
    for s in STAGES:
        put(f"stage_mod.{s}", supernet.stage_mod[s].sliced(tm, dims[s]))
    put("final_mod", supernet.final_mod.sliced(tm, dims["up"]))
    stage_blocks: dict[Stage, nn.ModuleList] = {
        "down": supernet.down_blocks, "middle": supernet.middle_blocks, "up": supernet.up_blocks,
    }
    for s in STAGES:
        scfg = cfg.stage(s)
        for j in range(scfg.depth):
            skip_dim = dims["down"] if s == "up" and j < cfg.down.depth else 0
            block: ElasticBlock = stage_blocks[s][j]  # type: ignore[assignment]
            block_state = _block_state(block, space, scfg, skip_dim=skip_dim)
            state.update({f"{s}_blocks.{j}.{k}": v for k, v in block_state.items()})
    put("downsample", supernet.downsample.sliced(dims["down"], dims["middle"]))
    put("upsample", supernet.upsample.sliced(dims["middle"], dims["up"]))
    state["final_table"] = supernet.final_table(dims["up"])
    put("final_linear", supernet.final_linear.sliced(dims["up"], p * p * c))
    return state


@torch.no_grad()
def extract_subnet(supernet: ElasticDiT, cfg: SubnetConfig) -> StaticDiT:
    """A standalone copy of sub-DiT `cfg` of `supernet` (same device and dtype, own tensors).

    `extract_subnet(s, cfg)(x, t, text, mask)` equals `s(x, t, text, mask, cfg)`, and its
    parameter count equals `hwnas.cost.count_params(cfg, s.space)`.
    """
    supernet.space.validate(cfg)
    ref = supernet.patch_embed.weight
    with torch.device(ref.device):
        static = StaticDiT(supernet.space, cfg).to(ref.dtype)
    static.load_state_dict(_sliced_state(supernet, cfg), strict=True)  # copies into own tensors
    static.train(supernet.training)
    return static
