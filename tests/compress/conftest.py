from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from hwnas.train import Supernet, load_supernet, train


def _tiny_toml() -> str:
    spec = importlib.util.spec_from_file_location("_train_conftest", Path(__file__).parents[1] / "train" / "conftest.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.TINY_EXPERIMENT


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 16x16 supernet trained for 2 steps (quality irrelevant), then given random
    adaLN-zero weights so every path of the network carries signal."""
    root = tmp_path_factory.mktemp("tiny")
    exp = root / "tiny-16.toml"
    exp.write_text(_tiny_toml())
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
