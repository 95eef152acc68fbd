"""Text-to-image sampling from a supernet's sub-DiT, and image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hwnas.io import atomic_write
from hwnas.space import SubnetConfig
from hwnas.train.flow import Solver, interpolate, solve
from hwnas.train.supernet import Supernet


@torch.no_grad()
def generate(net: Supernet, prompts: list[str], cfg: SubnetConfig, *, steps: int = 28,
             cfg_scale: float = 4.0, solver: Solver = "euler", seed: int = 0, shift: float = 1.0,
             batch_size: int = 64, init: torch.Tensor | None = None, start: float = 1.0) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] for `prompts`, one per prompt; deterministic given `seed`.

    The noise of prompt i depends only on (seed, i), so a batch size change does not change it.
    In a latent experiment the ODE runs in the latent and the autoencoder decodes the result.
    With `init` images (B, 3, H, W) in [-1, 1] the ODE starts at time `start` from
    (1 - start) x0 + start noise, x0 their latents (SDEdit), and `steps` cover [start, 0].
    """
    net.space.validate(cfg)
    space = net.space
    shape = (space.latent_channels, space.latent_size, space.latent_size)
    g = torch.Generator().manual_seed(seed)
    x_start = torch.randn((len(prompts), *shape), generator=g).to(net.device)  # noise, t = 1
    if init is not None:
        if len(init) != len(prompts):
            raise ValueError(f"got {len(init)} init images for {len(prompts)} prompts")
        at = torch.full((len(prompts),), start, device=net.device)
        x_start = interpolate(net.to_latent(init.to(net.device)), x_start, at)
    elif start != 1.0:
        raise ValueError(f"start {start} < 1 needs init images")
    null = net.encode([""])
    out = []
    for first in range(0, len(prompts), batch_size):
        chunk = prompts[first:first + batch_size]
        emb, mask = net.encode(chunk)
        null_b = (null[0].expand(len(chunk), -1, -1), null[1].expand(len(chunk), -1))
        # B023: fn is solved within this iteration, so it sees this chunk's emb, mask and null_b.
        fn = lambda x, t: net.velocity(x, t, cfg, emb=emb, mask=mask, null=null_b, cfg_scale=cfg_scale)  # noqa: E731, B023
        out.append(solve(fn, x_start[first:first + len(chunk)], steps=steps, solver=solver, shift=shift,
                         start=start))
    return net.to_image(torch.cat(out)).cpu()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> (B, H, W, 3) uint8 (grey images repeated to RGB)."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(arr, 3, axis=-1) if arr.shape[-1] == 1 else arr


def save_grid(images: torch.Tensor, path: str | Path, *, ncol: int = 8, scale: int = 4,
              labels: list[str] | None = None) -> Path:
    """Write a PNG grid of `images`, each upscaled `scale`x (nearest), optionally captioned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = to_uint8(images)
    n = len(arr)
    ncol = min(ncol, n)
    nrow = (n + ncol - 1) // ncol
    size = arr.shape[1] * scale / 100
    fig, axes = plt.subplots(nrow, ncol, figsize=(ncol * size * 1.1, nrow * size * (1.35 if labels else 1.1)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(arr[i], interpolation="nearest")
            if labels:
                ax.set_title(labels[i], fontsize=6, wrap=True)
    fig.tight_layout(pad=0.3)
    path = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100))
    plt.close(fig)
    return path
