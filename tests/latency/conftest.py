"""Fixtures shared by the latency tests that build or time shapes-32's kernels."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwnas.latency import KernelKey, enumerate_kernels
from hwnas.space import SearchSpace, load_space

SHAPES_32 = Path(__file__).resolve().parents[2] / "experiments/shapes-32.toml"


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return load_space(SHAPES_32)


@pytest.fixture(scope="module")
def keys(space: SearchSpace) -> dict[str, KernelKey]:
    """The first kernel of each kind of shapes-32, plus an Up block that fuses a long skip."""
    out: dict[str, KernelKey] = {}
    for k in enumerate_kernels(space, precisions=("fp32",)):
        out.setdefault(k.kind, k)
        if k.kind == "up_block" and k.op.skip_dim:
            out.setdefault("up_block_skip", k)
    return out
