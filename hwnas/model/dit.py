"""The elastic three-stage DiT supernet (SnapGen++, arXiv 2601.08303; DiT, arXiv 2212.09748).

    x (B, C, H, W) -> patch embed -> Down blocks (N = S^2 tokens, ASSA/BNA/global)
      -> 2x2 conv -> Middle blocks (N/4 tokens, full attention) -> 2x2 transposed conv
      -> Up blocks (N tokens; block j fuses Down block (depth_down - 1 - j)'s output, U-ViT)
      -> adaLN final layer -> unpatchify -> velocity (B, C, H, W)

Every block: adaLN-modulated self-attention (gated), text cross-attention (per-width affine
LayerNorm, not gated) and an adaLN-modulated gated GELU FFN. Timestep t in [0, 1] -> sinusoidal
features -> MLP -> t0; each stage projects SiLU(t0) to its six modulation vectors once, and every
block adds its own per-width `(6, D)` table. `hwnas.cost` counts exactly these parameters and
FLOPs. A `SubnetConfig` selects width, depth, FFN ratio and attention per stage; all sizes are
passed down as arguments.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.cost import TIME_FREQ_DIM
from hwnas.model.attention import ElasticCrossAttention, ElasticSelfAttention
from hwnas.model.ops import (
    ElasticConv2d,
    ElasticConvTranspose2d,
    ElasticLinear,
    PerWidthLayerNorm,
    PerWidthTable,
    modulate,
    plain_norm,
    timestep_features,
    to_grid,
    to_tokens,
    unpatchify,
)
from hwnas.space import STAGES, SearchSpace, Stage, StageConfig, SubnetConfig


def stage_dims(space: SearchSpace, stage: Stage) -> tuple[int, ...]:
    """Hidden sizes of every width choice of `stage`."""
    return tuple(space.dim(w) for w in space.stages[stage].width)


def check_inputs(
    space: SearchSpace, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
) -> None:
    """Raise ValueError naming the first input whose shape does not fit `space`."""
    side = space.latent_size
    if x.ndim != 4 or tuple(x.shape[1:]) != (space.latent_channels, side, side):
        raise ValueError(f"x must be (B, {space.latent_channels}, {side}, {side}), got {tuple(x.shape)}")
    b = x.shape[0]
    if tuple(t.shape) != (b,):
        raise ValueError(f"t must be ({b},), got {tuple(t.shape)}")
    if text.ndim != 3 or text.shape[0] != b or text.shape[2] != space.text_dim:
        raise ValueError(f"text must be ({b}, L, {space.text_dim}), got {tuple(text.shape)}")
    if tuple(text_mask.shape) != tuple(text.shape[:2]) or text_mask.dtype != torch.bool:
        raise ValueError(
            f"text_mask must be bool {tuple(text.shape[:2])}, got {text_mask.dtype} {tuple(text_mask.shape)}"
        )


class ElasticBlock(nn.Module):
    """One supernet block of `stage`; `skip=True` adds the long-skip fusion of an Up block."""

    def __init__(self, space: SearchSpace, stage: Stage, *, skip: bool = False) -> None:
        super().__init__()
        dm, dims = space.hidden_size, stage_dims(space, stage)
        ffn_max = space.max_ffn_ratio(stage) * dm
        self.space = space
        self.mod_table = PerWidthTable(dims, rows=6)
        self.skip = ElasticLinear((dm, dm), dm) if skip else None
        self.attn = ElasticSelfAttention(space, sparse=stage != "middle")
        self.cross_norm = PerWidthLayerNorm(dims)
        self.cross = ElasticCrossAttention(space)
        self.ffn_in = ElasticLinear(dm, ffn_max)
        self.ffn_out = ElasticLinear(ffn_max, dm)

    def forward(
        self,
        x: torch.Tensor,
        stage_mod: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        *,
        cfg: StageConfig,
        side: int,
        skip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x `(B, N, D)`, stage_mod `(B, 6, D)`, skip `(B, N, D_down)` or None; returns `(B, N, D)`."""
        heads = self.space.heads(cfg.width)
        d = heads * self.space.head_dim
        if skip is not None:
            if self.skip is None:
                raise ValueError("this block has no long-skip fusion")
            x = self.skip(torch.cat([x, skip], dim=-1), (d, skip.shape[-1]), d)  # (B, N, D)
        mod = stage_mod + self.mod_table(d)  # (B, 6, D)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.unbind(1)  # (B, D) each
        h = modulate(plain_norm(x), shift1, scale1)
        x = x + gate1[:, None] * self.attn(h, heads=heads, kv_heads=self.space.kv_heads_for(heads),
                                           attn=cfg.attn, radius=cfg.radius, side=side)
        x = x + self.cross(self.cross_norm(x, d), text, text_mask, heads=heads)
        h = modulate(plain_norm(x), shift2, scale2)
        hidden = cfg.ffn_ratio * d
        h = self.ffn_out(F.gelu(self.ffn_in(h, d, hidden), approximate="tanh"), hidden, d)  # (B, N, D)
        return x + gate2[:, None] * h


class ElasticDiT(nn.Module):
    """The supernet: holds the largest weights of every stage and runs any sub-DiT of `space`."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        dm, tm, c, p = space.hidden_size, space.time_dim, space.latent_channels, space.patch_size
        self.space = space
        self.patch_embed = ElasticConv2d(c, dm, p)
        self.time_mlp = nn.Sequential(nn.Linear(TIME_FREQ_DIM, tm), nn.SiLU(), nn.Linear(tm, tm))
        self.stage_mod = nn.ModuleDict({s: ElasticLinear(tm, dm, chunks=6) for s in STAGES})
        self.final_mod = ElasticLinear(tm, dm, chunks=2)
        depth_down = space.max_depth("down")
        self.down_blocks = nn.ModuleList([ElasticBlock(space, "down") for _ in range(depth_down)])
        self.downsample = ElasticConv2d(dm, dm, 2)
        depth_middle = space.max_depth("middle")
        self.middle_blocks = nn.ModuleList([ElasticBlock(space, "middle") for _ in range(depth_middle)])
        self.upsample = ElasticConvTranspose2d(dm, dm, 2)
        self.up_blocks = nn.ModuleList(
            [ElasticBlock(space, "up", skip=j < depth_down) for j in range(space.max_depth("up"))]
        )
        self.final_table = PerWidthTable(stage_dims(space, "up"), rows=2)
        self.final_linear = ElasticLinear(dm, p * p * c)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT init: xavier linears (done by the elastic ops), normal(0.02) timestep MLP, and
        adaLN-Zero: zero stage projections and zero final linear; the ungated cross-attention
        starts with a zero output projection (as PixArt-alpha), so every block starts as an
        identity. Measured here: with a default-initialised cross-attention output and a jointly
        trained text encoder the supernet's loss stayed at the mean predictor's (~1.14) for
        hundreds of steps; zeroed, it starts to fall after ~130 steps (lr 3e-3)."""
        for layer in self.time_mlp:
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        for module in self.modules():
            if isinstance(module, ElasticCrossAttention):
                for lin in (module.k, module.v):
                    nn.init.xavier_uniform_(lin.weight)
                    nn.init.zeros_(lin.bias)
                nn.init.zeros_(module.o.weight)
                nn.init.zeros_(module.o.bias)
        for lin in [*self.stage_mod.values(), self.final_mod, self.final_linear]:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
        cfg: SubnetConfig,
        *,
        features: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Velocity `(B, C, H, W)` of sub-DiT `cfg` at flow time `t (B,)` in [0, 1], given text
        embeddings `(B, L, Ct)` and their mask `(B, L)` (True = valid). With `features=True`
        also returns the final layer's input tokens `(B, N, D_up)` (for feature distillation)."""
        space = self.space
        space.validate(cfg)
        check_inputs(space, x, t, text, text_mask)
        side = space.grid_side
        dims = {s: space.dim(cfg.stage(s).width) for s in STAGES}
        c, b = space.latent_channels, x.shape[0]

        h = to_tokens(self.patch_embed(x, c, dims["down"]))  # (B, N, Dd)
        t0 = self.time_mlp(timestep_features(t, TIME_FREQ_DIM).to(x.dtype))  # (B, Tm)
        cond, tm = F.silu(t0), space.time_dim
        mods = {s: self.stage_mod[s](cond, tm, dims[s]).view(b, 6, dims[s]) for s in STAGES}  # (B, 6, D)

        skips = []
        for block in self.down_blocks[: cfg.down.depth]:
            h = block(h, mods["down"], text, text_mask, cfg=cfg.down, side=side)  # (B, N, Dd)
            skips.append(h)
        h = to_tokens(self.downsample(to_grid(h, side), dims["down"], dims["middle"]))  # (B, N/4, Dm)
        for block in self.middle_blocks[: cfg.middle.depth]:
            h = block(h, mods["middle"], text, text_mask, cfg=cfg.middle, side=side // 2)
        h = to_tokens(self.upsample(to_grid(h, side // 2), dims["middle"], dims["up"]))  # (B, N, Du)
        for j, block in enumerate(self.up_blocks[: cfg.up.depth]):
            skip = skips[cfg.down.depth - 1 - j] if j < cfg.down.depth else None
            h = block(h, mods["up"], text, text_mask, cfg=cfg.up, side=side, skip=skip)  # (B, N, Du)

        du, p = dims["up"], space.patch_size
        shift, scale = (self.final_mod(cond, tm, du).view(b, 2, du) + self.final_table(du)).unbind(1)
        out = self.final_linear(modulate(plain_norm(h), shift, scale), du, p * p * c)  # (B, N, p*p*C)
        v = unpatchify(out, channels=c, patch=p, side=side)  # (B, C, H, W)
        return (v, h) if features else v
