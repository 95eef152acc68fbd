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
passed down as arguments, and the glue between the layers is `hwnas.model.forward`'s, which the
static sub-DiT runs as well.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import torch
from torch import nn

from hwnas.cost import TIME_FREQ_DIM
from hwnas.model.attention import ElasticCrossAttention, ElasticSelfAttention
from hwnas.model.forward import block_forward, dit_forward
from hwnas.model.ops import (
    ElasticConv2d,
    ElasticConvTranspose2d,
    ElasticLinear,
    PerWidthLayerNorm,
    PerWidthTable,
)
from hwnas.space import STAGES, SearchSpace, Stage, StageConfig, SubnetConfig


def stage_dims(space: SearchSpace, stage: Stage) -> tuple[int, ...]:
    """Hidden sizes of every width choice of `stage`."""
    return tuple(space.dim(w) for w in space.stages[stage].width)


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
        hidden = cfg.ffn_ratio * d
        fuse = None
        if skip is not None and self.skip is not None:
            fuse = self.skip.at((d, skip.shape[-1]), d)
        return block_forward(
            x, stage_mod, text, text_mask, table=self.mod_table(d),
            attn=partial(self.attn, heads=heads, kv_heads=self.space.kv_heads_for(heads), attn=cfg.attn,
                         radius=cfg.radius, side=side),
            cross_norm=self.cross_norm.norm(d), cross=partial(self.cross, heads=heads),
            ffn_in=self.ffn_in.at(d, hidden), ffn_out=self.ffn_out.at(hidden, d), fuse=fuse, skip=skip,
        )


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
        for proj in [*self._stage_mods(), self.final_mod, self.final_linear]:
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def stage_blocks(self) -> dict[Stage, nn.ModuleList]:
        return {"down": self.down_blocks, "middle": self.middle_blocks, "up": self.up_blocks}

    def _stage_mods(self) -> list[ElasticLinear]:
        """`stage_mod`'s projections in `STAGES` order (nn.ModuleDict types its items as plain Modules)."""
        return [cast(ElasticLinear, self.stage_mod[s]) for s in STAGES]

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
        embeddings `(B, L, Ct)` and their mask `(B, L)` (True = valid). With `features=True` also
        returns the final layer's input tokens `(B, N, D_up)` (for feature distillation)."""
        space = self.space
        space.validate(cfg)
        dims = {s: space.dim(cfg.stage(s).width) for s in STAGES}
        c, p, tm = space.latent_channels, space.patch_size, space.time_dim
        blocks = {s: [partial(block, cfg=cfg.stage(s)) for block in stage[: cfg.stage(s).depth]]
                  for s, stage in self.stage_blocks().items()}
        return dit_forward(
            x, t, text, text_mask, space=space,
            patch_embed=self.patch_embed.at(c, dims["down"]),
            time_mlp=self.time_mlp,
            stage_mod={s: mod.at(tm, dims[s]) for s, mod in zip(STAGES, self._stage_mods())},
            blocks=blocks,
            downsample=self.downsample.at(dims["down"], dims["middle"]),
            upsample=self.upsample.at(dims["middle"], dims["up"]),
            final_mod=self.final_mod.at(tm, dims["up"]),
            final_table=self.final_table(dims["up"]),
            final_linear=self.final_linear.at(dims["up"], p * p * c),
            features=features,
        )

