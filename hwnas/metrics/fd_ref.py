"""`fd_ref`: Frechet distance in the features of a small reference classifier hwnas trains itself.

This is not FID: there are no Inception weights here. The reference network is a small CNN trained
once on the dataset's images to say what each image shows (`train_reference` says which images); its penultimate 128-d
activations are the feature space. FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), as in
Heusel et al. 2017, computed on those features. Values are only comparable for the same reference
network, dataset and resolution (the checkpoint's metadata names them).

What it learns to say (`target` in the metadata):

- `scene` (the shapes dataset): what the image determines. Which of the 18 (colour, shape) pairs
  the scene holds, how many objects (1-3; with one pair present, that many of it), and for two
  objects of different pairs the relation of the one first in `SCENE_PAIRS` order to the other
  where the layout makes it clear (`clear_relation`), else none. Presence and the object count are
  separate outputs so that they compose: "three green triangles" is a val prompt whose count of
  green triangles no train image shows (a count per pair reached 64% on val against 95% on train).
  A caption is not a function of its image: "a red circle left of a blue square" and "a blue square
  left of a red circle" have the same words, "a circle and a square" draws the same scenes as "a red
  circle and a blue square", and a position prompt's layout is one an "and" prompt can draw too;
  the first reference networks, trained on a caption's bag of words, matched 25-35% of val captions
  exactly. Its accuracy is the exact scene match (presence, object count and relation all right).
- `words` (other datasets, whose captions their images determine, e.g. the digit's name): the bag
  of words of the caption (multi-label); its accuracy is the exact caption match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg
from torch import nn

from hwnas.data import Tokenizer, make_dataset
from hwnas.data.shapes import (
    COLORS,
    RELATIONS,
    SHAPES,
    SPLITS,
    Scene,
    ShapesDataset,
    Split,
    clear_relation,
    render,
    to_tensor,
)
from hwnas.train.checkpoint import load_weights, save_weights

FEATURE_DIM = 128
WEIGHTS_DIR = "fd_ref"
SCENE_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES)
"""The (colour, shape) pairs a `scene` reference network counts, in this order."""
MAX_OBJECTS = 3
SCENE_OUTPUTS = len(SCENE_PAIRS) + MAX_OBJECTS + 1 + len(RELATIONS)
"""Presence logits (one per pair), object-count logits (1..MAX_OBJECTS), relation logits (not clear, then
RELATIONS)."""
NO_RELATION = -100
"""`scene_target`'s relation where the scene does not hold two different pairs (cross_entropy's ignore_index)."""


class ReferenceNet(nn.Module):
    """3 conv stages (32 -> 64 -> 128 channels, each halving the side) -> 128-d features -> `outputs`.

    With `side` (the image side / 8), the features see the whole final grid, so they keep where
    things are (relations: "left of", "above"); without it they see its spatial average (the first
    reference networks, which could not tell relations apart).
    """

    def __init__(self, *, channels: int, outputs: int, side: int | None = None) -> None:
        super().__init__()

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(8, cout), nn.SiLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1, stride=2), nn.SiLU())

        pool = [nn.Flatten()] if side is not None else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(stage(channels, 32), stage(32, 64), stage(64, 128), *pool)
        self.features = nn.Linear(128 * (side or 1) ** 2, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, outputs)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(self.features(self.body(x)))  # (B, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))  # (B, outputs) logits


def scene_target(scene: Scene) -> torch.Tensor:
    """(len(SCENE_PAIRS) + 2,) int64: each pair's presence (0/1) in `scene`, the number of objects less
    one, and the relation class of the two objects' first pair to the other (0: not clear; 1 + its
    index in RELATIONS; `NO_RELATION` unless the scene holds two different pairs; see the module
    docstring)."""
    present = [0] * len(SCENE_PAIRS)
    for o in scene.objects:
        present[SCENE_PAIRS.index((o.color, o.shape))] = 1
    relation = NO_RELATION
    objs = sorted(scene.objects, key=lambda o: SCENE_PAIRS.index((o.color, o.shape)))
    if len(objs) == 2 and (objs[0].color, objs[0].shape) != (objs[1].color, objs[1].shape):
        clear = clear_relation(objs[0], objs[1])
        relation = 0 if clear is None else 1 + RELATIONS.index(clear)
    return torch.tensor([*present, len(objs) - 1, relation])


def _scene_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Presence (B, pairs), object-count (B, MAX_OBJECTS) and relation (B, 1 + relations) logits."""
    n = len(SCENE_PAIRS)
    return logits[:, :n], logits[:, n:n + MAX_OBJECTS], logits[:, n + MAX_OBJECTS:]


def _scene_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    present, count, relation = _scene_logits(logits)
    n, rel = len(SCENE_PAIRS), target[:, -1]
    loss = (nn.functional.binary_cross_entropy_with_logits(present, target[:, :n].float()) * n
            + nn.functional.cross_entropy(count, target[:, n]))
    if (rel != NO_RELATION).any():
        loss = loss + nn.functional.cross_entropy(relation, rel, ignore_index=NO_RELATION)
    return loss


def _scene_predict(logits: torch.Tensor) -> torch.Tensor:
    """Predicted `scene_target`s; a relation only where two different pairs are predicted present."""
    present, count, relation = _scene_logits(logits)
    seen = (present > 0).long()
    rel = torch.where(seen.sum(1) == 2, relation.argmax(-1), torch.full_like(seen[:, 0], NO_RELATION))
    return torch.cat([seen, count.argmax(-1, keepdim=True), rel[:, None]], 1)


def _words_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, target)


def _words_predict(logits: torch.Tensor) -> torch.Tensor:
    return (logits > 0).float()


def _bag_of_words(tokenizer: Tokenizer, captions: list[str], max_len: int) -> torch.Tensor:
    ids = tokenizer.encode(captions, max_len=max_len)  # (B, L)
    bag = torch.zeros(len(captions), tokenizer.vocab_size)
    bag.scatter_(1, ids, 1.0)
    bag[:, :3] = 0.0  # pad, bos, unk carry no content
    return bag


def _scene_images(split: Split, *, resolution: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`size` images of `split`'s shapes prompts and their `scene_target`s."""
    data = ShapesDataset(split, resolution, size=size, seed=seed)
    scenes = [data.scene(i) for i in range(size)]  # each drawn once: the image and its target
    return (torch.stack([to_tensor(render(s, resolution)) for s in scenes]),
            torch.stack([scene_target(s) for s in scenes]))


def train_reference(dataset: str, *, resolution: int, out: str | Path, steps: int = 5000,
                    size: int = 60000, seed: int = 0) -> dict[str, float]:
    """Train the reference classifier on `size` images (AdamW, cosine learning rate, batch 128); save it
    under `out/fd_ref/`. Returns its final loss and its exact match (scene or caption, see the module
    docstring) on 1000 images of the val prompts (and, for shapes, of the held-out prompts).

    On shapes it trains on images of every prompt, train, val and held-out alike (a third each): it
    is a measuring instrument, like FID's Inception network, not the model under test, and it must
    know the held-out compositions the supernet is scored on. Its matches are on fresh layouts
    (another seed). Other datasets train on their train split."""
    torch.manual_seed(seed)
    meta: dict[str, Any] = {}
    scores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    if dataset == "shapes":
        target, outputs = "scene", SCENE_OUTPUTS
        parts = [_scene_images(split, resolution=resolution, size=size // len(SPLITS) + (i < size % len(SPLITS)),
                               seed=seed + 1) for i, split in enumerate(SPLITS)]
        images, targets = torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
        scores = {split: _scene_images(split, resolution=resolution, size=1000, seed=seed + 2)
                  for split in ("val", "heldout")}
        loss_fn, predict = _scene_loss, _scene_predict
    else:
        data = make_dataset(dataset, split="train", resolution=resolution, size=size, seed=seed + 1)
        val = make_dataset(dataset, split="val", resolution=resolution, size=1000, seed=seed + 2)
        images = torch.stack([data[i][0] for i in range(len(data))])
        captions = [data[i][1] for i in range(len(data))]
        tokenizer = Tokenizer.from_texts(captions)
        max_len = max(len(c.split()) for c in captions) + 1
        target, outputs = "words", tokenizer.vocab_size
        targets = _bag_of_words(tokenizer, captions, max_len)
        scores = {"val": (torch.stack([val[i][0] for i in range(len(val))]),
                          _bag_of_words(tokenizer, [val[i][1] for i in range(len(val))], max_len))}
        meta |= {"tokenizer": tokenizer.to_dict(), "max_len": max_len}
        loss_fn, predict = _words_loss, _words_predict

    side = resolution // 8
    net = ReferenceNet(channels=images.shape[1], outputs=outputs, side=side)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-4)
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        idx = torch.randint(len(images), (128,), generator=g)
        loss = loss_fn(net(images[idx]), targets[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        matches = {f"{split}_match": (predict(net(x)) == y).all(dim=1).float().mean().item()
                   for split, (x, y) in scores.items()}
    meta |= {"dataset": dataset, "resolution": resolution, "steps": steps, "train_images": size,
             "final_loss": loss.item(), "target": target, "outputs": outputs, **matches,
             "channels": images.shape[1], "side": side}
    save_weights(Path(out) / WEIGHTS_DIR, net.state_dict(), meta)
    return {"final_loss": loss.item(), **matches}


def load_reference(directory: str | Path) -> tuple[ReferenceNet, dict[str, Any]]:
    tensors, meta = load_weights(Path(directory) / WEIGHTS_DIR)
    outputs = int(meta["outputs"]) if "outputs" in meta else Tokenizer.from_dict(meta["tokenizer"]).vocab_size
    net = ReferenceNet(channels=int(meta["channels"]), outputs=outputs, side=meta.get("side"))
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
    """The reference network in a few words: dataset, resolution, target and its exact match on val images
    (networks from before the scene target: their exact caption match)."""
    target, match = meta.get("target", "words"), meta.get("val_match", meta.get("val_exact_match"))
    return (f"{meta['dataset']} {meta['resolution']}px, {target} target, "
            f"{'?' if match is None else f'{match:.1%}'} exact match on val")
