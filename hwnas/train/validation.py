"""Validation flow-matching loss: the cheap quality signal used inside the search.

A `ValSet` is a fixed set of (x0, noise, t, caption) built once from the validation split: image
i is paired with t = grid[i mod len(grid)] (a fixed grid in (0, 1)) and a seeded noise, so the
loss of a sub-DiT is deterministic and comparable across sub-DiTs. Lower is better.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hwnas.data import make_dataset
from hwnas.space import SubnetConfig
from hwnas.train.flow import flow_matching_loss, interpolate
from hwnas.train.supernet import Supernet


@dataclass(frozen=True)
class ValSet:
    x0: torch.Tensor  # (N, C, h, w): images in [-1, 1], or their latents in a latent experiment
    noise: torch.Tensor  # (N, C, H, W)
    t: torch.Tensor  # (N,)
    emb: torch.Tensor  # (N, L, Ct) text embeddings
    mask: torch.Tensor  # (N, L)
    description: str


def make_val_set(net: Supernet, *, n: int = 64, grid: int = 8, seed: int = 0) -> ValSet:
    """`n` validation images of the supernet's dataset on a `grid`-point t grid (t = (k + 0.5) / grid)."""
    space = net.space
    data = make_dataset(space.dataset, split="val", resolution=space.resolution, size=n, seed=seed)
    x0 = net.to_latent(torch.stack([data[i][0] for i in range(n)]))  # (N, C, h, w)
    captions = [data[i][1] for i in range(n)]
    g = torch.Generator().manual_seed(seed + 12345)
    noise = torch.randn(x0.shape, generator=g)
    t = (torch.arange(n) % grid + 0.5) / grid
    with torch.no_grad():
        emb, mask = net.encode(captions)
    desc = f"flow-matching val loss, {space.dataset} val split, n={n}, t grid={grid}, seed={seed}"
    return ValSet(x0=x0, noise=noise, t=t, emb=emb, mask=mask, description=desc)


@torch.no_grad()
def val_loss(net: Supernet, cfg: SubnetConfig, val: ValSet, *, batch_size: int = 64) -> float:
    """Mean flow-matching loss of sub-DiT `cfg` over `val` (deterministic)."""
    net.space.validate(cfg)
    total = 0.0
    n, device = len(val.t), net.device
    for s in range(0, n, batch_size):
        x0, noise, t = (a[s:s + batch_size].to(device) for a in (val.x0, val.noise, val.t))
        v = net.dit(interpolate(x0, noise, t), t, val.emb[s:s + batch_size].to(device),
                    val.mask[s:s + batch_size].to(device), cfg)
        total += flow_matching_loss(v, x0, noise).item() * len(t)
    return total / n
