"""The sub-DiT forward, written once: adaLN block, U-ViT stages, final layer.

The elastic supernet (`hwnas.model.dit`), the static sub-DiT (`hwnas.model.static`) and the
latency kernel modules (`hwnas.latency.blocks`) differ only in their layers: an elastic layer is
called at the sizes of a `SubnetConfig` (`ElasticLinear.at(in, out)`), a static one as it is. Each
passes its layers here as one-argument callables, so all of them run this code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from hwnas.cost import TIME_FREQ_DIM
from hwnas.model.ops import modulate, plain_norm, timestep_features, to_grid, to_tokens, unpatchify
from hwnas.space import STAGES, SearchSpace, Stage

Layer = Callable[[torch.Tensor], torch.Tensor]
CrossAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, text, text_mask)
Block = Callable[..., torch.Tensor]
"""`block(x, stage_mod, text, text_mask, *, side, skip)`, e.g. a bound `block_forward` caller."""


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


# Pieces (each one LUT kernel) -------------------------------------------------------------------


def patch_tokens(patch_embed: Layer, x: torch.Tensor) -> torch.Tensor:
    """Latent `(B, C, H, W)` -> patch tokens `(B, N, D)` (row-major) through the patchify conv."""
    return to_tokens(patch_embed(x))


def time_condition(time_mlp: Layer, t: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Flow time `t (B,)` -> `SiLU(time_mlp(features(t)))` `(B, Tm)`, the input of every modulation."""
    return F.silu(time_mlp(timestep_features(t, TIME_FREQ_DIM).to(dtype)))


def modulation(linear: Layer, cond: torch.Tensor, *, chunks: int) -> torch.Tensor:
    """A stage's adaLN vectors `(B, chunks, D)` from the time condition `(B, Tm)` (6 per block
    stage: shift, scale, gate for attention and FFN; 2 for the final layer: shift, scale)."""
    return linear(cond).view(cond.shape[0], chunks, -1)


def resample(conv: Layer, h: torch.Tensor, *, side: int) -> torch.Tensor:
    """Tokens `(B, side^2, D)` -> 2x down- or upsampling conv on the grid -> tokens `(B, N', D')`."""
    return to_tokens(conv(to_grid(h, side)))


def block_forward(
    x: torch.Tensor,
    stage_mod: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    table: torch.Tensor,
    attn: Layer,
    cross_norm: Layer,
    cross: CrossAttention,
    ffn_in: Layer,
    ffn_out: Layer,
    fuse: Layer | None = None,
    skip: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DiT block: adaLN-modulated gated self-attention, text cross-attention (ungated) and an
    adaLN-modulated gated tanh-GELU FFN (DiT, arXiv 2212.09748; SnapGen++ section 3).

    x `(B, N, D)`, stage_mod `(B, 6, D)` plus the block's own `table (6, D)`; an Up block that
    receives a long skip `(B, N, D_down)` first fuses `fuse(cat(x, skip))` (U-ViT). Returns `(B, N, D)`.
    """
    if (fuse is None) != (skip is None):
        raise ValueError("a block with a long-skip fusion needs skip=, and only such a block takes one")
    if fuse is not None:
        x = fuse(torch.cat([x, skip], dim=-1))  # (B, N, D)
    shift1, scale1, gate1, shift2, scale2, gate2 = (stage_mod + table).unbind(1)  # (B, D) each
    x = x + gate1[:, None] * attn(modulate(plain_norm(x), shift1, scale1))
    x = x + cross(cross_norm(x), text, text_mask)
    h = ffn_out(F.gelu(ffn_in(modulate(plain_norm(x), shift2, scale2)), approximate="tanh"))  # (B, N, D)
    return x + gate2[:, None] * h


def final_layer(
    h: torch.Tensor, mod: torch.Tensor, *, table: torch.Tensor, linear: Layer, channels: int, patch: int, side: int
) -> torch.Tensor:
    """adaLN final layer and unpatchify: tokens `(B, side^2, D)`, mod `(B, 2, D)` plus `table (2, D)`
    -> velocity `(B, channels, side * patch, side * patch)`."""
    shift, scale = (mod + table).unbind(1)  # (B, D) each
    out = linear(modulate(plain_norm(h), shift, scale))  # (B, N, p*p*C)
    return unpatchify(out, channels=channels, patch=patch, side=side)


# The whole sub-DiT ------------------------------------------------------------------------------


def dit_forward(
    x: torch.Tensor,
    t: torch.Tensor,
    text: torch.Tensor,
    text_mask: torch.Tensor,
    *,
    space: SearchSpace,
    patch_embed: Layer,
    time_mlp: Layer,
    stage_mod: Mapping[Stage, Layer],
    blocks: Mapping[Stage, Sequence[Block]],
    downsample: Layer,
    upsample: Layer,
    final_mod: Layer,
    final_table: torch.Tensor,
    final_linear: Layer,
    features: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Velocity `(B, C, H, W)` at flow time `t (B,)` given text `(B, L, Ct)` and its mask `(B, L)`.

    Down blocks on the `grid_side^2` patch tokens, 2x2 conv, Middle blocks on a quarter of the
    tokens, 2x2 transposed conv, Up blocks on the patch tokens where Up block j fuses the output of
    Down block `depth_down - 1 - j` (U-ViT long skips), final layer. With `features=True` also
    returns the final layer's input tokens `(B, N, D_up)`.
    """
    check_inputs(space, x, t, text, text_mask)
    side = space.grid_side
    h = patch_tokens(patch_embed, x)  # (B, N, Dd)
    cond = time_condition(time_mlp, t, dtype=x.dtype)  # (B, Tm)
    mods = {s: modulation(stage_mod[s], cond, chunks=6) for s in STAGES}  # (B, 6, D)

    skips = []
    for block in blocks["down"]:
        h = block(h, mods["down"], text, text_mask, side=side, skip=None)  # (B, N, Dd)
        skips.append(h)
    h = resample(downsample, h, side=side)  # (B, N/4, Dm)
    for block in blocks["middle"]:
        h = block(h, mods["middle"], text, text_mask, side=side // 2, skip=None)
    h = resample(upsample, h, side=side // 2)  # (B, N, Du)
    for j, block in enumerate(blocks["up"]):
        skip = skips[len(skips) - 1 - j] if j < len(skips) else None
        h = block(h, mods["up"], text, text_mask, side=side, skip=skip)  # (B, N, Du)

    v = final_layer(h, modulation(final_mod, cond, chunks=2), table=final_table, linear=final_linear,
                    channels=space.latent_channels, patch=space.patch_size, side=side)  # (B, C, H, W)
    return (v, h) if features else v
