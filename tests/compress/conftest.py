from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_space import TINY_EXPERIMENT

from hwnas.train import Supernet, load_supernet, train


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 16x16 supernet trained for 2 steps (quality irrelevant), then given random
    adaLN-zero weights so every path of the network carries signal."""
    root = tmp_path_factory.mktemp("tiny")
    exp = root / "tiny-16.toml"
    exp.write_text(TINY_EXPERIMENT)
    out = root / "ckpt"
    train(exp, out=out, steps=2, progress=False)
    return out


@pytest.fixture
def tiny_net(tiny_checkpoint: Path) -> Supernet:
    net = load_supernet(tiny_checkpoint)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.dit.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net
