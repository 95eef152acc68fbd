"""Pure cost model of a sub-DiT: parameters, FLOPs and bytes, op by op. No torch, no I/O.

A denoising step is a list of `Op`s (patch embed, timestep embedding, per-stage modulation,
blocks, down/upsample, final layer) in execution order; `ops(cfg, space)` builds it. Every count
here is exact for the model in `hwnas.model` (tests compare it with the module's parameters).

Conventions:
- One image (batch 1), one denoiser evaluation (no CFG doubling).
- A multiply-add is 2 FLOPs. Linear layers, convolutions and attention matmuls (QK^T and AV with
  the real token counts: KV-compressed keys in the global branch, only the neighbouring blocks in
  the local branch, the text tokens in cross-attention) are counted; element-wise work (norms,
  softmax, activations, RoPE, gating) is not.
- Activation bytes count the main tensors each op writes (q, k, v, compressed k/v, attention
  outputs, FFN hidden, op output) and its input; attention scores are assumed fused (not
  materialised), as in flash-style kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hwnas.space import STAGES, SearchSpace, SubnetConfig

OpKind = Literal[
    "patch_embed", "time_embed", "stage_mod", "down_block", "middle_block", "up_block",
    "downsample", "upsample", "final",
]
TIME_FREQ_DIM = 256
"""Width of the sinusoidal timestep features fed to the timestep MLP (as in DiT)."""

PRECISION_WEIGHT_BITS: dict[str, int] = {"fp32": 32, "fp16": 16, "w8a16": 8, "w4a16": 4}
PRECISION_ACT_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "w8a16": 2, "w4a16": 2}


@dataclass(frozen=True)
class Op:
    """Shape of one block-level op of a denoising step. Zero means "does not apply".

    `tokens` is the op's output token count; `dim` its output width; `in_dim` its input width
    (transitions, modulation and time MLPs); `skip_dim` the width of a long-skip input (Up
    blocks); `chunks` the number of modulation vectors a `stage_mod` op produces.
    """

    kind: OpKind
    tokens: int
    dim: int
    in_dim: int = 0
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    ffn_ratio: int = 0
    attn: str = "none"
    radius: int = 0
    skip_dim: int = 0
    text_len: int = 0
    text_dim: int = 0
    cross_kv_heads: int = 0
    bna_blocks: int = 0
    kv_compress: int = 0
    channels: int = 0
    patch: int = 0
    chunks: int = 0

    @property
    def is_block(self) -> bool:
        return self.kind.endswith("_block")


def ops(cfg: SubnetConfig, space: SearchSpace) -> list[Op]:
    """The ops of one denoising step of `cfg`, in execution order."""
    n_outer, n_mid = space.tokens_outer, space.tokens_middle
    dims = {s: space.dim(cfg.stage(s).width) for s in STAGES}
    common = dict(head_dim=space.head_dim, text_len=space.text_len, text_dim=space.text_dim,
                  cross_kv_heads=space.kv_heads)
    out: list[Op] = [
        Op("patch_embed", n_outer, dims["down"], channels=space.latent_channels, patch=space.patch_size),
        Op("time_embed", 1, space.time_dim, in_dim=TIME_FREQ_DIM),
    ]
    out += [Op("stage_mod", 1, dims[s], in_dim=space.time_dim, chunks=6) for s in STAGES]
    out.append(Op("stage_mod", 1, dims["up"], in_dim=space.time_dim, chunks=2))

    def block(stage: str, tokens: int, skip_dim: int = 0) -> Op:
        s = cfg.stage(stage)  # type: ignore[arg-type]
        heads = space.heads(s.width)
        return Op(f"{stage}_block", tokens, dims[stage], heads=heads,  # type: ignore[arg-type]
                  kv_heads=space.kv_heads_for(heads), ffn_ratio=s.ffn_ratio, attn=s.attn,
                  radius=s.radius, skip_dim=skip_dim,
                  bna_blocks=space.bna_blocks if s.attn in ("assa", "bna") else 0,
                  kv_compress=space.kv_compress if s.attn in ("assa", "global") else 0, **common)

    out += [block("down", n_outer) for _ in range(cfg.down.depth)]
    out.append(Op("downsample", n_mid, dims["middle"], in_dim=dims["down"]))
    out += [block("middle", n_mid) for _ in range(cfg.middle.depth)]
    out.append(Op("upsample", n_outer, dims["up"], in_dim=dims["middle"]))
    # Up block j takes the output of Down block (depth_down - 1 - j) as a long skip (U-ViT).
    out += [block("up", n_outer, dims["down"] if j < cfg.down.depth else 0) for j in range(cfg.up.depth)]
    out.append(Op("final", n_outer, dims["up"], channels=space.latent_channels, patch=space.patch_size))
    return out


def local_key_pairs(tokens: int, blocks: int, radius: int) -> int:
    """Query-key pairs of blockwise neighbourhood attention: block b sees blocks b-r..b+r."""
    per_block = tokens // blocks
    seen = sum(min(blocks - 1, b + radius) - max(0, b - radius) + 1 for b in range(blocks))
    return per_block * per_block * seen


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def op_params(op: Op) -> int:
    """Parameters an op owns in the extracted (static) sub-DiT."""
    k = op.kind
    if k == "patch_embed":
        return _linear(op.channels * op.patch**2, op.dim)
    if k == "time_embed":
        return _linear(op.in_dim, op.dim) + _linear(op.dim, op.dim)
    if k == "stage_mod":
        return _linear(op.in_dim, op.chunks * op.dim)
    if k in ("downsample", "upsample"):
        return _linear(4 * op.in_dim, op.dim)
    if k == "final":
        return _linear(op.dim, op.channels * op.patch**2) + 2 * op.dim  # + per-width (shift, scale)
    d, hd = op.dim, op.head_dim
    kv, ckv = op.kv_heads * hd, op.cross_kv_heads * hd
    n = 6 * d  # per-width modulation table (shift, scale, gate for attention and FFN)
    n += _linear(d, d) * 2 + _linear(d, kv) * 2 + 4 * hd  # self-attention q, o, k, v, QK-LayerNorm
    if op.attn in ("assa", "global"):
        n += 2 * _linear(kv * op.kv_compress**2, kv)  # k and v compression convs
    if op.attn == "assa":
        n += _linear(d, op.heads)  # per-head gate
    n += 2 * d + _linear(d, d) * 2 + _linear(op.text_dim, ckv) * 2 + 4 * hd  # cross-attention
    n += _linear(d, op.ffn_ratio * d) + _linear(op.ffn_ratio * d, d)
    if op.skip_dim:
        n += _linear(d + op.skip_dim, d)
    return n


def _attention_pairs(op: Op) -> int:
    """Query-key pairs of one head of the op's self-attention (all branches)."""
    n = op.tokens
    pairs = 0
    if op.attn == "full":
        pairs += n * n
    if op.attn in ("assa", "global"):
        pairs += n * (n // op.kv_compress**2)
    if op.attn in ("assa", "bna"):
        pairs += local_key_pairs(n, op.bna_blocks, op.radius)
    return pairs


def op_flops(op: Op) -> int:
    """FLOPs of one op (a multiply-add = 2 FLOPs)."""
    k, n = op.kind, op.tokens
    if k == "patch_embed":
        return 2 * n * op.channels * op.patch**2 * op.dim
    if k == "time_embed":
        return 2 * (op.in_dim * op.dim + op.dim * op.dim)
    if k == "stage_mod":
        return 2 * op.in_dim * op.chunks * op.dim
    if k == "downsample":
        return 2 * n * 4 * op.in_dim * op.dim
    if k == "upsample":
        return 2 * (n // 4) * op.in_dim * 4 * op.dim
    if k == "final":
        return 2 * n * op.dim * op.channels * op.patch**2
    d, hd, h = op.dim, op.head_dim, op.heads
    kv, ckv = op.kv_heads * hd, op.cross_kv_heads * hd
    f = 2 * n * (2 * d * d + 2 * d * kv)  # q, o, k, v
    if op.attn in ("assa", "global"):
        f += 2 * 2 * (n // op.kv_compress**2) * kv * kv * op.kv_compress**2
    if op.attn == "assa":
        f += 2 * n * d * h
    f += 2 * 2 * _attention_pairs(op) * hd * h  # QK^T and AV
    f += 2 * n * 2 * d * d + 2 * op.text_len * op.text_dim * ckv * 2  # cross q, o; k, v
    f += 2 * 2 * n * op.text_len * hd * h
    f += 2 * n * 2 * d * op.ffn_ratio * d
    if op.skip_dim:
        f += 2 * n * (d + op.skip_dim) * d
    return f


def op_activation_elements(op: Op) -> int:
    """Elements of the main tensors an op reads (input) and writes (see module docstring)."""
    k, n, d = op.kind, op.tokens, op.dim
    if k == "patch_embed":
        return n * op.channels * op.patch**2 + n * d
    if k == "time_embed":
        return op.in_dim + 2 * d
    if k == "stage_mod":
        return op.in_dim + op.chunks * d
    if k == "downsample":
        return 4 * n * op.in_dim + n * d
    if k == "upsample":
        return n * op.in_dim // 4 + n * d
    if k == "final":
        return n * d + n * op.channels * op.patch**2
    kv = op.kv_heads * op.head_dim
    e = n * d + n * op.skip_dim  # input (and long skip)
    e += n * d + 2 * n * kv  # q, k, v
    if op.attn in ("assa", "global"):
        e += 2 * (n // op.kv_compress**2) * kv + n * d
    if op.attn in ("assa", "bna"):
        e += n * d
    if op.attn == "full":
        e += n * d
    e += n * d  # self-attention output projection
    e += 3 * n * d + 2 * op.text_len * op.cross_kv_heads * op.head_dim  # cross q, attn, out; k, v
    e += n * op.ffn_ratio * d + n * d  # FFN hidden and output (= block output)
    return e


# Whole sub-DiT ------------------------------------------------------------------------------


def count_params(cfg: SubnetConfig, space: SearchSpace) -> int:
    """Parameters of the extracted sub-DiT (the denoiser only; text encoder and VAE excluded)."""
    return sum(op_params(op) for op in ops(cfg, space))


def flops_per_step(cfg: SubnetConfig, space: SearchSpace) -> int:
    """FLOPs of one denoiser evaluation for one image (a multiply-add = 2 FLOPs)."""
    return sum(op_flops(op) for op in ops(cfg, space))


def weight_bytes(cfg: SubnetConfig, space: SearchSpace, *, bits: float = 16) -> int:
    """Bytes of the denoiser's weights stored at `bits` per parameter (no quantisation scales)."""
    return int(count_params(cfg, space) * bits / 8)


def activation_bytes(cfg: SubnetConfig, space: SearchSpace, *, bytes_per_element: int = 2) -> int:
    """Bytes of activation traffic of one denoiser evaluation (see module docstring)."""
    return sum(op_activation_elements(op) for op in ops(cfg, space)) * bytes_per_element


def summary(cfg: SubnetConfig, space: SearchSpace) -> dict[str, object]:
    """The numbers `hwnas space show` prints for one sub-DiT."""
    return {
        "experiment": space.name,
        "config_id": cfg.id,
        "config": cfg.to_dict(),
        "describe": cfg.describe(),
        "params": count_params(cfg, space),
        "flops_per_step": flops_per_step(cfg, space),
        "weight_bytes_fp16": weight_bytes(cfg, space, bits=16),
        "weight_bytes_int4": weight_bytes(cfg, space, bits=4),
        "activation_bytes_fp16": activation_bytes(cfg, space, bytes_per_element=2),
        "tokens_outer": space.tokens_outer,
        "tokens_middle": space.tokens_middle,
    }
