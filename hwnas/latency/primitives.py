"""A block-level op as the primitives a runtime dispatches, each of one cost kind. Pure.

The estimator (`hwnas.latency.estimate`) costs each primitive with its kind's compute efficiency,
memory efficiency and per-dispatch overhead, so it needs, per primitive: FLOPs, weight parameters
and activation elements read plus written. Cost kinds:

- `linear`: matrix multiplications with weights (projections, FFN, long-skip fusion, ASSA gate,
  modulation and timestep MLPs);
- `attention`: the score and value products and the softmax of one attention branch;
- `conv`: patch convolutions (patch embedding, final unpatchify layer, 2x2 down/upsampling,
  ASSA's 2x2 stride-2 key/value compression);
- `elementwise`: norms, adaLN modulation, gates, residual adds, GELU, RoPE, concatenation.

Invariants (tests): over an op's primitives, `linear + attention + conv` FLOPs equal
`hwnas.cost.op_flops(op)` and all weight parameters equal `hwnas.cost.op_params(op)`.

Attention lowering (`AttentionLowering`), per attention branch:

- `fused` (flash/SDPA-like): reads q, k, v and writes the output; the scores never reach memory,
  and local attention reads each block's neighbourhood in place.
- `materialized` (Core ML's split-einsum, most mobile delegates, an exported ONNX graph): also
  writes the score matrix, reads and writes it in the softmax and reads it in the value product
  (4 x pairs x heads more elements, two more dispatches per branch); local attention first gathers
  each block's key and value window into dense tensors (and copies grouped keys out to every
  head), as `hwnas.model.attention.blockwise_attention` does.
- `fused_dense` (PyTorch eager): dense branches (full, global, cross-attention) fused; local
  attention gathered and materialized, because its window mask sends scaled_dot_product_attention
  to its math path (seen in torch.profiler: bmm, softmax, bmm for the local branch only).

Element-wise work counts 1 FLOP per element it reads or writes (it is memory-bound on every device
here; the FLOPs only order it).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, get_args

from hwnas.cost import Op, local_key_pairs

CostKind = Literal["linear", "attention", "conv", "elementwise"]
COST_KINDS: tuple[CostKind, ...] = get_args(CostKind)
AttentionLowering = Literal["fused", "materialized", "fused_dense"]
ATTENTION_LOWERINGS: tuple[AttentionLowering, ...] = get_args(AttentionLowering)


@dataclass(frozen=True)
class Primitive:
    """One dispatch: its cost kind, FLOPs (a multiply-add = 2), weight parameters, activation elements."""

    kind: CostKind
    flops: int
    weight_params: int
    act_elements: int


def _lin(n: int, d_in: int, d_out: int) -> Primitive:
    """A linear layer with bias over `n` tokens: reads (n, d_in), writes (n, d_out)."""
    return Primitive("linear", 2 * n * d_in * d_out, d_in * d_out + d_out, n * (d_in + d_out))


def _ew(elements: int, params: int = 0) -> Primitive:
    return Primitive("elementwise", elements, params, elements)


def _attention(q_tokens: int, k_tokens: int, pairs: int, heads: int, head_dim: int, kv_dim: int,
               lowering: AttentionLowering) -> list[Primitive]:
    """One attention branch: `pairs` query-key pairs per head; q of `heads` heads, k/v of width `kv_dim`."""
    d = heads * head_dim
    flops = 2 * 2 * pairs * head_dim * heads  # QK^T and AV
    io = q_tokens * d + 2 * k_tokens * kv_dim + q_tokens * d  # read q, k, v; write the output
    if lowering == "fused":
        return [Primitive("attention", flops, 0, io)]
    scores = pairs * heads
    return [Primitive("attention", flops // 2, 0, q_tokens * d + k_tokens * kv_dim + scores),  # S = QK^T
            Primitive("attention", 0, 0, 2 * scores),  # softmax(S): read, write
            Primitive("attention", flops - flops // 2, 0, scores + k_tokens * kv_dim + q_tokens * d)]  # S V


def _window_gather(tokens: int, radius: int, kv_dim: int, dim: int) -> list[Primitive]:
    """Local attention's key and value windows gathered into dense tensors: `2 radius + 1` blocks per
    query block, read and written at the key/value width, then (grouped keys) copied out to every head."""
    window = (2 * radius + 1) * tokens
    per_tensor = 2 * window * kv_dim + (window * (kv_dim + dim) if kv_dim < dim else 0)
    return [_ew(per_tensor), _ew(per_tensor)]


@lru_cache(maxsize=65536)
def op_primitives(op: Op, lowering: AttentionLowering) -> tuple[Primitive, ...]:
    """The primitives of one block-level op (see the module docstring), in no particular order."""
    if lowering not in ATTENTION_LOWERINGS:
        raise ValueError(f"attention lowering must be one of {ATTENTION_LOWERINGS}, got {lowering!r}")
    k, n, d = op.kind, op.tokens, op.dim
    if k == "patch_embed":
        return (Primitive("conv", 2 * n * op.channels * op.patch**2 * d, op.channels * op.patch**2 * d + d,
                          n * op.channels * op.patch**2 + n * d),)
    if k == "time_embed":
        return (_ew(2 * op.in_dim), _lin(1, op.in_dim, d), _ew(2 * d), _lin(1, d, d))  # sinusoid, MLP, SiLU
    if k == "stage_mod":
        return (_lin(1, op.in_dim, op.chunks * d),)
    if k == "downsample":
        return (Primitive("conv", 2 * n * 4 * op.in_dim * d, 4 * op.in_dim * d + d, 4 * n * op.in_dim + n * d),)
    if k == "upsample":
        m = n // 4
        return (Primitive("conv", 2 * m * op.in_dim * 4 * d, op.in_dim * 4 * d + d, m * op.in_dim + n * d),)
    if k == "final":
        out = op.channels * op.patch**2
        return (_ew(2 * n * d, 2 * d),  # final norm + modulation (per-width shift, scale)
                Primitive("conv", 2 * n * d * out, d * out + out, n * d + n * out))
    return _block(op, lowering)


def _block(op: Op, lowering: AttentionLowering) -> tuple[Primitive, ...]:
    n, d, hd, h = op.tokens, op.dim, op.head_dim, op.heads
    dense: AttentionLowering = "fused" if lowering == "fused_dense" else lowering
    local: AttentionLowering = "materialized" if lowering == "fused_dense" else lowering
    kv, ckv, t = op.kv_heads * hd, op.cross_kv_heads * hd, op.text_len
    out: list[Primitive] = []
    if op.skip_dim:  # concatenate the long skip, fuse back to d
        out += [_ew(2 * n * (d + op.skip_dim)), _lin(n, d + op.skip_dim, d)]
    # self-attention: adaLN norm (+ per-width modulation table), q/k/v, QK-LayerNorm and RoPE on q and k
    out += [_ew(2 * n * d, 6 * d), _lin(n, d, d), _lin(n, d, kv), _lin(n, d, kv),
            _ew(2 * (n * d + n * kv), 4 * hd), _ew(2 * (n * d + n * kv))]
    c2 = op.kv_compress**2
    if op.attn in ("assa", "global"):
        m = n // c2
        out += [Primitive("conv", 2 * m * kv * c2 * kv, kv * c2 * kv + kv, n * kv + m * kv) for _ in range(2)]
        out += _attention(n, m, n * m, h, hd, kv, dense)
    if op.attn in ("assa", "bna"):
        if local == "materialized":
            out += _window_gather(n, op.radius, kv, d)
        out += _attention(n, n, local_key_pairs(n, op.bna_blocks, op.radius), h, hd, kv, local)
    if op.attn == "full":
        out += _attention(n, n, n * n, h, hd, kv, dense)
    if op.attn == "assa":  # per-head sigmoid gate mixing the two branches
        out += [_lin(n, d, h), _ew(3 * n * d + n * h)]
    out += [_lin(n, d, d), _ew(3 * n * d)]  # output projection, gated residual add
    # cross-attention to the text tokens
    out += [_ew(2 * n * d, 2 * d), _lin(n, d, d), _lin(t, op.text_dim, ckv), _lin(t, op.text_dim, ckv),
            _ew(2 * (n * d + t * ckv), 4 * hd)]
    out += _attention(n, t, n * t, h, hd, ckv, dense)
    out += [_lin(n, d, d), _ew(3 * n * d)]
    # FFN: adaLN norm, up, GELU, down, gated residual add
    f = op.ffn_ratio * d
    out += [_ew(2 * n * d), _lin(n, d, f), _ew(2 * n * f), _lin(n, f, d), _ew(3 * n * d)]
    return tuple(out)
