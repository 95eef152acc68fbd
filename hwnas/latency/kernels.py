"""LUT keys: the block-level kernels of a denoising step, typed, with their FLOPs and bytes. Pure.

A `KernelKey` is one `hwnas.cost.Op` (a whole Down/Middle/Up block, embed, down/upsample, final
layer, modulation) plus the precision it runs at. Keys are frozen dataclasses, never strings;
`key_to_row` / `key_from_row` give the stable CSV columns of a LUT (`KEY_COLUMNS`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Literal, get_args, get_type_hints

from hwnas.cost import (
    PRECISION_ACT_BYTES, PRECISION_WEIGHT_BITS, Op, op_activation_elements, op_flops, op_params, ops,
)
from hwnas.space import STAGES, SearchSpace, StageConfig, SubnetConfig

Precision = Literal["fp32", "fp16", "w8a16", "w4a16"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

_OP_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Op))
_OP_TYPES: dict[str, type] = {f.name: str if f.type in ("str", "OpKind") else int for f in fields(Op)}
KEY_COLUMNS: tuple[str, ...] = (*_OP_FIELDS, "precision")
"""CSV columns of a key, in order: the `Op` fields, then `precision`."""


@dataclass(frozen=True)
class KernelKey:
    """One LUT entry's key: the shape of a block-level op and the precision it runs at."""

    op: Op
    precision: Precision
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.op, Op):
            raise ValueError(f"op must be a cost.Op, got {self.op!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        object.__setattr__(self, "_hash", hash((self.op, self.precision)))  # LUT lookups hash keys often

    def __hash__(self) -> int:
        return self._hash

    @property
    def kind(self) -> str:
        return self.op.kind

    def describe(self) -> str:
        """Readable form for messages: kind, then the non-zero shape fields, then precision."""
        shape = ", ".join(f"{n}={getattr(self.op, n)}" for n in _OP_FIELDS[1:]
                          if getattr(self.op, n) not in (0, "none"))
        return f"{self.op.kind}({shape}) @ {self.precision}"


def kernels(cfg: SubnetConfig, space: SearchSpace, *, precision: Precision) -> list[KernelKey]:
    """The kernels of one denoising step of `cfg`, in execution order (one per `cost.ops` op)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return [KernelKey(op, precision) for op in ops(cfg, space)]


@lru_cache(maxsize=65536)
def kernel_counts(cfg: SubnetConfig, space: SearchSpace, *, precision: Precision) -> tuple[tuple[KernelKey, int], ...]:
    """Distinct kernels of one denoising step with how often each runs (first-seen order). Cached."""
    return tuple(Counter(kernels(cfg, space, precision=precision)).items())


def kernel_flops(key: KernelKey) -> int:
    """FLOPs of the kernel (a multiply-add = 2 FLOPs), independent of precision."""
    return op_flops(key.op)


def kernel_weight_bytes(key: KernelKey) -> float:
    """Bytes of the kernel's weights at the precision's weight bits (no quantisation scales)."""
    return op_params(key.op) * PRECISION_WEIGHT_BITS[key.precision] / 8


def kernel_activation_bytes(key: KernelKey) -> int:
    """Bytes of the kernel's main activation traffic at the precision's activation width."""
    return op_activation_elements(key.op) * PRECISION_ACT_BYTES[key.precision]


def kernel_bytes(key: KernelKey) -> float:
    """DRAM bytes the kernel moves: weights plus activations (see `hwnas.cost` for what counts)."""
    return kernel_weight_bytes(key) + kernel_activation_bytes(key)


# CSV serialisation -------------------------------------------------------------------------


def key_to_row(key: KernelKey) -> dict[str, str]:
    """The key as CSV cells (`KEY_COLUMNS`); ints as decimal strings."""
    row = {name: str(getattr(key.op, name)) for name in _OP_FIELDS}
    row["precision"] = key.precision
    return row


def key_from_row(row: dict[str, str]) -> KernelKey:
    """Inverse of `key_to_row`. Raises ValueError naming a missing or malformed column."""
    values: dict[str, object] = {}
    for name in _OP_FIELDS:
        if name not in row or row[name] is None:
            raise ValueError(f"missing key column {name!r}")
        cell = row[name].strip()
        if _OP_TYPES[name] is int:
            try:
                values[name] = int(cell)
            except ValueError:
                raise ValueError(f"key column {name!r} must be an integer, got {cell!r}") from None
        else:
            values[name] = cell
    if values["kind"] not in get_args(get_type_hints(Op)["kind"]):
        raise ValueError(f"key column 'kind' is not a known op kind, got {values['kind']!r}")
    precision = (row.get("precision") or "").strip()
    return KernelKey(Op(**values), precision)  # type: ignore[arg-type]


# Enumeration over a search space -------------------------------------------------------------


def _stage_options(space: SearchSpace, stage: str) -> list[StageConfig]:
    """Every (width, ffn, attn, radius) of a stage at its smallest and largest depth."""
    ch = space.stages[stage]  # type: ignore[index]
    depths = sorted({min(ch.depth), max(ch.depth)})
    attn_radius = [(a, r) for a in ch.attn for r in (ch.radius if a in ("assa", "bna") else (0,))]
    return [StageConfig(width=w, depth=d, ffn_ratio=f, attn=a, radius=r)
            for w, d, f, (a, r) in itertools.product(ch.width, depths, ch.ffn_ratio, attn_radius)]


def enumerate_kernels(space: SearchSpace, *, precisions: tuple[Precision, ...]) -> list[KernelKey]:
    """Every distinct kernel any sub-DiT of `space` runs, at each of `precisions`, sorted.

    Each op of `cost.ops` depends on the choices of at most two stages (blocks on their own
    stage; transitions, the long skips into Up blocks on a neighbour), and on depth only through
    how many blocks run and which Up blocks get a skip; so every pair of stages is varied over
    its choices at the smallest and largest depth with the third stage fixed. Tests check that
    random sub-DiTs' kernels are all covered.
    """
    keys = [KernelKey(op, p) for op in _space_ops(space) for p in precisions]
    return sorted(keys, key=lambda k: (PRECISIONS.index(k.precision), tuple(getattr(k.op, n) for n in _OP_FIELDS)))


@lru_cache(maxsize=8)
def _space_ops(space: SearchSpace) -> frozenset[Op]:
    """Distinct ops over the whole space (see `enumerate_kernels`). Cached: it takes seconds."""
    options = {s: _stage_options(space, s) for s in STAGES}
    ops_seen: set[Op] = set()
    for a, b in itertools.combinations(STAGES, 2):
        (c,) = [s for s in STAGES if s not in (a, b)]
        for sa, sb in itertools.product(options[a], options[b]):
            try:
                cfg = SubnetConfig(**{a: sa, b: sb, c: options[c][0]})
            except ValueError:
                continue
            ops_seen.update(ops(cfg, space))
    return frozenset(ops_seen)
