from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_space import TINY_EXPERIMENT

# Small tensors on a shared 2-core machine: one torch thread per test process is both faster
# (no OpenMP spin-waiting against other processes) and steadier. Tests that need more set it.
torch.set_num_threads(1)


@pytest.fixture
def tiny_experiment(tmp_path: Path) -> Path:
    """The tiny experiment of tests/tiny_space.py written to a temporary TOML file."""
    path = tmp_path / "tiny-16.toml"
    path.write_text(TINY_EXPERIMENT)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 16x16 supernet trained for 2 steps, saved as a checkpoint dir (quality irrelevant;
    `tiny_net` in tests/compress gives its adaLN-zero weights random values)."""
    from hwnas.train import train

    root = tmp_path_factory.mktemp("tiny")
    exp = root / "tiny-16.toml"
    exp.write_text(TINY_EXPERIMENT)
    out = root / "ckpt"
    train(exp, out=out, steps=2, progress=False)
    return out
