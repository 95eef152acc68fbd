from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hwnas.train import Supernet, load_supernet


@pytest.fixture
def tiny_net(tiny_checkpoint: Path) -> Supernet:
    net = load_supernet(tiny_checkpoint)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.dit.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net
