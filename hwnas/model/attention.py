"""Attention of the DiT: 2D RoPE, self-attention (ASSA, BNA, global, full) and cross-attention.

The math lives in functions that take projected tensors (`self_attention`, `cross_attention`);
the elastic modules here and the static modules in `hwnas.model.static` only differ in how they
project, so both run exactly the same attention code.

Self-attention kinds (SnapGen++, arXiv 2601.08303, section 3.2; docs/platform-notes.md):
- "full": dense attention over all tokens (Middle stage).
- "global": keys/values compressed `kv_compress`-fold per side by a strided conv on the token grid;
  queries stay at full resolution.
- "bna": blockwise neighbourhood attention: the row-major token sequence is cut into `blocks`
  equal blocks and block b attends to the keys of blocks b-r..b+r (clipped at the edges).
- "assa": both branches, mixed per token and head by a sigmoid gate computed from the input:
  `out = g * global + (1 - g) * local`.
All kinds use grouped-query attention, QK-LayerNorm over the head dim and 2D RoPE on q and k.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.model.ops import NORM_EPS, ElasticConv2d, ElasticLinear, to_grid, to_tokens
from hwnas.space import AttnKind, SearchSpace

ROPE_THETA = 10000.0
Norm = Callable[[torch.Tensor], torch.Tensor]
GridMap = Callable[[torch.Tensor], torch.Tensor]


# RoPE -----------------------------------------------------------------------------------------


def grid_positions(
    side: int, *, cell: int = 1, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column coordinates `(side*side,)` of a row-major grid of `cell`-wide cells.

    Coordinates are in units of the uncompressed grid at the centre of each cell
    (`cell * i + (cell - 1) / 2`), so compressed keys line up with the queries they summarise.
    """
    idx = torch.arange(side, dtype=torch.float32, device=device) * cell + (cell - 1) / 2  # (side,)
    return idx.repeat_interleave(side), idx.repeat(side)


def rope_angles(rows: torch.Tensor, cols: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin `(N, head_dim / 2)` of 2D RoPE: the first half of the rotated pairs turns with
    the row coordinate, the second half with the column (frequencies `theta^(-j / (head_dim/4))`)."""
    quarter = head_dim // 4
    freqs = ROPE_THETA ** (-torch.arange(quarter, dtype=torch.float32, device=rows.device) / quarter)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)  # (N, hd/2)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs `(x[..., j], x[..., j + hd/2])` of `x (B, H, N, hd)` by the angles `(N, hd/2)`."""
    a, b = x.chunk(2, dim=-1)  # (B, H, N, hd/2) each
    return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)  # (B, H, N, hd)


# Heads and blocks -----------------------------------------------------------------------------


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.reshape(b, n, heads, -1).transpose(1, 2)  # (B, heads, N, hd)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, hd = x.shape
    return x.transpose(1, 2).reshape(b, n, h * hd)  # (B, N, H*hd)


def expand_kv_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """Grouped-query attention: `(B, kvH, ...)` to `(B, heads, ...)`; query head i reads KV head
    `(i * kvH) // heads` (= `repeat_interleave` where kvH divides heads)."""
    kv_heads = x.shape[1]
    if kv_heads == heads:
        return x
    index = torch.tensor([(i * kv_heads) // heads for i in range(heads)], device=x.device)
    return x.index_select(1, index)


def bna_windows(
    tokens: int, blocks: int, radius: int, *, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key token indices `(blocks, W)` and validity `(blocks, W)` of each block's window.

    `W = (2 radius + 1) * tokens / blocks`. Window slots of neighbour blocks beyond the sequence
    ends point at a clipped block and are marked invalid (they must be masked out).
    """
    per_block = tokens // blocks
    width = 2 * radius + 1
    offsets = torch.arange(width, device=device) - radius  # (w,)
    nb = torch.arange(blocks, device=device)[:, None] + offsets  # (blocks, w) neighbour block ids
    valid = (nb >= 0) & (nb < blocks)
    nb = nb.clamp(0, blocks - 1)
    index = nb[..., None] * per_block + torch.arange(per_block, device=device)  # (blocks, w, per_block)
    return index.reshape(blocks, -1), valid[..., None].expand(-1, -1, per_block).reshape(blocks, -1)


def bna_dense_mask(tokens: int, blocks: int, radius: int) -> torch.Tensor:
    """The `(tokens, tokens)` boolean mask (True = may attend) that `blockwise_attention` realises."""
    index, valid = bna_windows(tokens, blocks, radius)
    per_block = tokens // blocks
    hits = torch.zeros(blocks, tokens, dtype=torch.int64)
    hits.scatter_add_(1, index, valid.long())  # clipped (invalid) slots add nothing
    mask = hits > 0  # (blocks, tokens)
    return mask.repeat_interleave(per_block, dim=0)  # (tokens, tokens)


def blockwise_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, blocks: int, radius: int
) -> torch.Tensor:
    """Blockwise neighbourhood attention, batched over blocks (no loop over tokens).

    q `(B, H, N, hd)`, k/v `(B, kvH, N, hd)`; returns `(B, H, N, hd)`.
    """
    b, h, n, hd = q.shape
    index, valid = bna_windows(n, blocks, radius, device=q.device)  # (blocks, W) each
    per_block, width = n // blocks, index.shape[1]
    # 4-D tensors (batch and heads folded) keep the ONNX exporters' SDPA translation happy.
    qb = q.reshape(b * h, blocks, per_block, hd)  # (B*H, blocks, n_b, hd)
    kw = expand_kv_heads(k[:, :, index], h).reshape(b * h, blocks, width, hd)  # (B*H, blocks, W, hd)
    vw = expand_kv_heads(v[:, :, index], h).reshape(b * h, blocks, width, hd)  # (B*H, blocks, W, hd)
    out = F.scaled_dot_product_attention(qb, kw, vw, attn_mask=valid[:, None, :])  # (B*H, blocks, n_b, hd)
    return out.reshape(b, h, n, hd)


# Attention math -------------------------------------------------------------------------------


def self_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    heads: int,
    kv_heads: int,
    attn: AttnKind,
    side: int,
    q_norm: Norm,
    k_norm: Norm,
    blocks: int = 1,
    radius: int = 0,
    kv_compress: int = 1,
    compress_k: GridMap | None = None,
    compress_v: GridMap | None = None,
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Self-attention on a `side x side` token grid from projected q `(B, N, H*hd)` and k, v
    `(B, N, kvH*hd)`; returns the merged heads `(B, N, H*hd)` (before the output projection).

    `compress_k`/`compress_v` map a `(B, kvH*hd, side, side)` grid to its compressed grid (global
    branch); `gate` `(B, N, H)` holds the ASSA gate probabilities (weight of the global branch).
    """
    qh = q_norm(split_heads(q, heads))  # (B, H, N, hd)
    cos, sin = rope_angles(*grid_positions(side, device=q.device), qh.shape[-1])
    qh = apply_rope(qh, cos, sin)
    if attn in ("full", "assa", "bna"):
        kh = apply_rope(k_norm(split_heads(k, kv_heads)), cos, sin)  # (B, kvH, N, hd)
        vh = split_heads(v, kv_heads)  # (B, kvH, N, hd)
    if attn == "full":
        out = F.scaled_dot_product_attention(qh, expand_kv_heads(kh, heads), expand_kv_heads(vh, heads))
        return merge_heads(out)  # (B, N, H*hd)
    branches = []
    if attn in ("assa", "global"):
        if compress_k is None or compress_v is None:
            raise ValueError(f"attn={attn!r} needs the key/value compression convs")
        small = side // kv_compress
        kc = to_tokens(compress_k(to_grid(k, side)))  # (B, N/c^2, kvH*hd)
        vc = to_tokens(compress_v(to_grid(v, side)))  # (B, N/c^2, kvH*hd)
        ccos, csin = rope_angles(*grid_positions(small, cell=kv_compress, device=q.device), qh.shape[-1])
        kch = apply_rope(k_norm(split_heads(kc, kv_heads)), ccos, csin)  # (B, kvH, N/c^2, hd)
        vch = split_heads(vc, kv_heads)
        kch, vch = expand_kv_heads(kch, heads), expand_kv_heads(vch, heads)
        branches.append(F.scaled_dot_product_attention(qh, kch, vch))  # (B, H, N, hd)
    if attn in ("assa", "bna"):
        branches.append(blockwise_attention(qh, kh, vh, blocks=blocks, radius=radius))  # (B, H, N, hd)
    if attn == "assa":
        if gate is None:
            raise ValueError("attn='assa' needs the gate probabilities")
        g = gate.transpose(1, 2)[..., None]  # (B, H, N, 1)
        return merge_heads(g * branches[0] + (1 - g) * branches[1])
    return merge_heads(branches[0])


def cross_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    *,
    heads: int,
    q_norm: Norm,
    k_norm: Norm,
) -> torch.Tensor:
    """Text cross-attention from projected q `(B, N, H*hd)`, k/v `(B, L, kvH*hd)` and a key mask
    `(B, L)` (True = valid token). No RoPE. A sample without any valid text token gets a zero
    attention output (instead of the NaN of a fully masked softmax)."""
    kv_heads = k.shape[-1] // (q.shape[-1] // heads)
    qh = q_norm(split_heads(q, heads))  # (B, H, N, hd)
    kh = expand_kv_heads(k_norm(split_heads(k, kv_heads)), heads)  # (B, H, L, hd)
    vh = expand_kv_heads(split_heads(v, kv_heads), heads)  # (B, H, L, hd)
    any_valid = mask.any(dim=-1)  # (B,)
    safe = mask | ~any_valid[:, None]  # (B, L)
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=safe[:, None, None, :])  # (B, H, N, hd)
    return merge_heads(out) * any_valid[:, None, None].to(out.dtype)  # (B, N, H*hd)


# Elastic modules ------------------------------------------------------------------------------


class ElasticSelfAttention(nn.Module):
    """Self-attention of one supernet block. With `sparse=True` (Down/Up) it also owns the KV
    compression convs and the ASSA gate, so every attention kind can run from the same weights."""

    def __init__(self, space: SearchSpace, *, sparse: bool) -> None:
        super().__init__()
        dm, hd = space.hidden_size, space.head_dim
        kv_max = space.kv_heads * hd
        self.head_dim = hd
        self.blocks = space.bna_blocks
        self.kv_compress = space.kv_compress
        self.q = ElasticLinear(dm, dm)
        self.k = ElasticLinear(dm, kv_max)
        self.v = ElasticLinear(dm, kv_max)
        self.o = ElasticLinear(dm, dm)
        self.q_norm = nn.LayerNorm(hd, eps=NORM_EPS)
        self.k_norm = nn.LayerNorm(hd, eps=NORM_EPS)
        self.compress_k = ElasticConv2d(kv_max, kv_max, space.kv_compress) if sparse else None
        self.compress_v = ElasticConv2d(kv_max, kv_max, space.kv_compress) if sparse else None
        self.gate = ElasticLinear(dm, space.heads_max) if sparse else None

    def forward(
        self, x: torch.Tensor, *, heads: int, kv_heads: int, attn: AttnKind, radius: int, side: int
    ) -> torch.Tensor:
        """x `(B, N, D)` with `D = heads * head_dim`; returns `(B, N, D)`."""
        d, kv = heads * self.head_dim, kv_heads * self.head_dim
        if attn != "full" and self.gate is None:
            raise ValueError(f"attn={attn!r} needs a sparse (Down/Up) attention module")
        gate, ck, cv = None, self.compress_k, self.compress_v
        if attn == "assa":
            gate = torch.sigmoid(self.gate(x, d, heads))  # type: ignore[misc]  # (B, N, H)
        out = self_attention(
            self.q(x, d, d), self.k(x, d, kv), self.v(x, d, kv),
            heads=heads, kv_heads=kv_heads, attn=attn, side=side, q_norm=self.q_norm, k_norm=self.k_norm,
            blocks=self.blocks, radius=radius, kv_compress=self.kv_compress,
            compress_k=None if ck is None else ck.at(kv, kv), compress_v=None if cv is None else cv.at(kv, kv),
            gate=gate,
        )  # (B, N, D)
        return self.o(out, d, d)


class ElasticCrossAttention(nn.Module):
    """Cross-attention to text. q/o are sliced; the text key/value projections are not (all
    `space.kv_heads` KV heads at every width; query head i reads KV head `(i * kvH) // H`)."""

    def __init__(self, space: SearchSpace) -> None:
        super().__init__()
        dm, hd = space.hidden_size, space.head_dim
        self.head_dim = hd
        self.q = ElasticLinear(dm, dm)
        self.k = nn.Linear(space.text_dim, space.kv_heads * hd)
        self.v = nn.Linear(space.text_dim, space.kv_heads * hd)
        self.o = ElasticLinear(dm, dm)
        self.q_norm = nn.LayerNorm(hd, eps=NORM_EPS)
        self.k_norm = nn.LayerNorm(hd, eps=NORM_EPS)

    def forward(
        self, x: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, *, heads: int
    ) -> torch.Tensor:
        """x `(B, N, D)`, text `(B, L, Ct)`, text_mask `(B, L)` bool; returns `(B, N, D)`."""
        d = heads * self.head_dim
        out = cross_attention(self.q(x, d, d), self.k(text), self.v(text), text_mask,
                              heads=heads, q_norm=self.q_norm, k_norm=self.k_norm)  # (B, N, D)
        return self.o(out, d, d)
