from __future__ import annotations

import csv
import io
import random
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from hwnas.cost import PRECISION_ACT_BYTES, PRECISION_WEIGHT_BITS, flops_per_step, ops
from hwnas.latency import (
    KEY_COLUMNS,
    PRECISIONS,
    KernelKey,
    enumerate_kernels,
    kernel_activation_bytes,
    kernel_bytes,
    kernel_counts,
    kernel_flops,
    kernel_weight_bytes,
    kernels,
    key_from_row,
    key_to_row,
)
from hwnas.space import load_space

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def space():  # type: ignore[no-untyped-def]
    return load_space(ROOT / "experiments" / "snapgenpp-1024.toml")


def _configs(space, n: int = 20):  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    return [*space.presets().values(), space.largest(), space.smallest(), *(space.sample(rng) for _ in range(n))]


def test_precisions_match_cost_tables() -> None:
    assert set(PRECISIONS) == set(PRECISION_WEIGHT_BITS) == set(PRECISION_ACT_BYTES)


def test_one_kernel_per_op(space) -> None:  # type: ignore[no-untyped-def]
    for cfg in _configs(space):
        ks = kernels(cfg, space, precision="fp16")
        assert [k.op for k in ks] == ops(cfg, space)
        assert sum(kernel_flops(k) for k in ks) == flops_per_step(cfg, space)
        assert sum(c for _, c in kernel_counts(cfg, space, precision="fp16")) == len(ks)


def test_bytes_follow_precision(space) -> None:  # type: ignore[no-untyped-def]
    op = ops(space.preset("small"), space)[-3]
    by = {p: KernelKey(op, p) for p in PRECISIONS}
    fp16 = kernel_weight_bytes(by["fp16"])
    assert fp16 == 4 * kernel_weight_bytes(by["w4a16"]) == 2 * kernel_weight_bytes(by["w8a16"])
    assert kernel_activation_bytes(by["fp32"]) == 2 * kernel_activation_bytes(by["fp16"])
    assert kernel_bytes(by["fp16"]) == kernel_weight_bytes(by["fp16"]) + kernel_activation_bytes(by["fp16"])
    assert kernel_flops(by["fp32"]) == kernel_flops(by["w4a16"])


def test_key_is_typed_frozen_hashable(space) -> None:  # type: ignore[no-untyped-def]
    key = kernels(space.preset("small"), space, precision="w4a16")[10]
    assert {key: 1}[KernelKey(key.op, "w4a16")] == 1
    with pytest.raises(FrozenInstanceError):
        key.precision = "fp16"  # type: ignore[misc]
    with pytest.raises(ValueError, match="'int3'"):
        KernelKey(key.op, "int3")  # type: ignore[arg-type]


def test_csv_round_trip(space) -> None:  # type: ignore[no-untyped-def]
    keys = {k for cfg in _configs(space) for p in PRECISIONS for k in kernels(cfg, space, precision=p)}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=KEY_COLUMNS)
    writer.writeheader()
    ordered = sorted(keys, key=lambda k: k.describe())
    writer.writerows(key_to_row(k) for k in ordered)
    back = [key_from_row(row) for row in csv.DictReader(io.StringIO(buf.getvalue()))]
    assert back == ordered


@pytest.mark.parametrize("column, value, match", [
    ("tokens", "4096.5", "tokens"),
    ("kind", "conv_block", "kind"),
    ("precision", "fp8", "fp8"),
])
def test_bad_row_names_column(space, column: str, value: str, match: str) -> None:  # type: ignore[no-untyped-def]
    row = key_to_row(kernels(space.preset("small"), space, precision="fp16")[10])
    row[column] = value
    with pytest.raises(ValueError, match=match):
        key_from_row(row)


def test_enumeration_covers_the_space(space) -> None:  # type: ignore[no-untyped-def]
    keys = enumerate_kernels(space, precisions=("fp16", "w4a16"))
    assert len(keys) == len(set(keys)) < 2000
    covered = set(keys)
    rng = random.Random(1)
    for cfg in [*_configs(space), *(space.sample(rng) for _ in range(300))]:
        for p in ("fp16", "w4a16"):
            assert set(kernels(cfg, space, precision=p)) <= covered
