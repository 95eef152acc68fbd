"""`fd_ref`: Frechet distance in the features of a small reference classifier hwnas trains itself.

This is not FID: there are no Inception weights here. The reference network is a small CNN
trained once on the dataset's training split to predict the bag of words of each caption
(multi-label: which colours, shapes, counts, relations, digits are mentioned); its penultimate
128-d activations are the feature space. FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2),
as in Heusel et al. 2017, computed on those features. Values are only comparable for the same
reference network, dataset and resolution (the checkpoint's metadata names them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg
from torch import nn

from hwnas.data import Tokenizer, make_dataset
from hwnas.train.checkpoint import load_weights, save_weights

FEATURE_DIM = 128
WEIGHTS_DIR = "fd_ref"


class ReferenceNet(nn.Module):
    """3 conv stages (32 -> 64 -> 128 channels, each halving the side) -> 128-d features -> words.

    With `side` (the image side / 8), the features see the whole final grid, so they keep where
    things are (captions name relations: "left of", "above"); without it they see its spatial
    average (the first reference networks, which could not tell relations apart).
    """

    def __init__(self, *, channels: int, vocab_size: int, side: int | None = None) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, stride=2), nn.SiLU())

        pool = [nn.Flatten()] if side is not None else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(stage(channels, 32), stage(32, 64), stage(64, 128), *pool)
        self.features = nn.Linear(128 * (side or 1) ** 2, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, vocab_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.features(self.body(x)))  # (B, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # (B, vocab) logits


def _bag_of_words(tokenizer: Tokenizer, captions: list[str], max_len: int) -> torch.Tensor:
    ids = tokenizer.encode(captions, max_len=max_len)  # (B, L)
    bag = torch.zeros(len(captions), tokenizer.vocab_size)
    bag.scatter_(1, ids, 1.0)
    bag[:, :3] = 0.0  # pad, bos, unk carry no content
    return bag


def train_reference(dataset: str, *, resolution: int, out: str | Path, steps: int = 4000,
                    size: int = 20000, seed: int = 0) -> dict[str, float]:
    """Train the reference classifier on `size` training images (AdamW, cosine learning rate);
    save it under `out/fd_ref/`. Returns its final loss and its exact caption match on 1000
    validation images (every word of the caption predicted, and no other)."""
    torch.manual_seed(seed)
    data = make_dataset(dataset, split="train", resolution=resolution, size=size, seed=seed + 1)
    images = torch.stack([data[i][0] for i in range(len(data))])
    captions = [data[i][1] for i in range(len(data))]
    tokenizer = Tokenizer.from_texts(captions)
    max_len = max(len(c.split()) for c in captions) + 1
    targets = _bag_of_words(tokenizer, captions, max_len)
    side = resolution // 8
    net = ReferenceNet(channels=images.shape[1], vocab_size=tokenizer.vocab_size, side=side)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-4)
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(len(images), (128,), generator=g)
        loss = nn.functional.binary_cross_entropy_with_logits(net(images[idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    val = make_dataset(dataset, split="val", resolution=resolution, size=1000, seed=seed + 2)
    vx = torch.stack([val[i][0] for i in range(len(val))])
    vy = _bag_of_words(tokenizer, [val[i][1] for i in range(len(val))], max_len)
    with torch.no_grad():
        pred = net(vx) > 0
    exact = (pred == vy.bool()).all(dim=1).float().mean().item()
    meta = {"dataset": dataset, "resolution": resolution, "steps": steps, "train_images": size,
            "final_loss": loss.item(), "val_exact_match": exact, "tokenizer": tokenizer.to_dict(),
            "max_len": max_len, "channels": images.shape[1], "side": side}
    save_weights(Path(out) / WEIGHTS_DIR, net.state_dict(), meta)
    return {"final_loss": loss.item(), "val_exact_match": exact}


def load_reference(directory: str | Path) -> tuple[ReferenceNet, dict[str, Any]]:
    tensors, meta = load_weights(Path(directory) / WEIGHTS_DIR)
    tok = Tokenizer.from_dict(meta["tokenizer"])
    net = ReferenceNet(channels=int(meta["channels"]), vocab_size=tok.vocab_size, side=meta.get("side"))
    net.load_state_dict(tensors)
    return net.eval(), meta


@torch.no_grad()
def features(net: ReferenceNet, images: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, 128) float64 features."""
    return torch.cat([net.embed(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FD between Gaussians fitted to feature sets `a` (N, F) and `b` (M, F)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(covmean).all():
        eps = 1e-6 * np.eye(len(cov_a))
        covmean = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def describe(meta: dict[str, Any]) -> str:
    return json.dumps({k: meta[k] for k in ("dataset", "resolution", "train_images", "val_exact_match")})
