"""`hwnas eval`: one quality number for one sub-DiT of a trained supernet, with its provenance."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hwnas.data import PromptSpec, make_dataset
from hwnas.data.shapes import CATEGORIES, Split, list_prompts
from hwnas.metrics.compositional import score
from hwnas.metrics.fd_ref import describe, features, frechet_distance, load_reference
from hwnas.metrics.val_loss import make_val_set, val_loss
from hwnas.paths import display_path
from hwnas.space import SubnetConfig
from hwnas.train.sample import generate
from hwnas.train.supernet import DEFAULT_CHECKPOINT, Supernet

Metric = Literal["compositional", "fd_ref", "val_loss"]


def eval_prompts(n: int, *, split: Split = "heldout", seed: int = 0) -> list[PromptSpec]:
    """`n` shapes prompts of one split, category-balanced: the categories in turn, each one's prompts
    in a seeded random order (cycled where `n` needs more), so that a large category (266 held-out
    position prompts) is drawn across its colors, shapes and relations, not from its first few."""
    rng = np.random.default_rng(seed)
    by_cat = [list_prompts(split, category=c) for c in CATEGORIES]
    shuffled = [[prompts[i] for i in rng.permutation(len(prompts))] for prompts in by_cat if prompts]
    out = []
    for i in range(n):
        group = shuffled[i % len(shuffled)]
        out.append(group[(i // len(shuffled)) % len(group)])
    return out


def evaluate(net: Supernet, cfg: SubnetConfig, *, metric: Metric, n: int = 200, steps: int = 28,
             cfg_scale: float = 4.0, seed: int = 0, checkpoint: str | Path | None = None,
             split: Split = "heldout", shift: float = 1.0) -> dict[str, Any]:
    """Score `cfg`; the result says which model, scale and data the number comes from (fd_ref also gives
    its `floor`: the distance between two sets of n real images, FD's bias at that n). `split` is the
    prompt split of the compositional checker: held-out prompts measure the model, train ones tell a
    model that has not learned its prompts from one that does not generalise. `shift` is the
    sampler's time shift (`hwnas.train.flow.shift_time`; > 1 spends more steps near noise)."""
    net.space.validate(cfg)
    ckpt = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    shown = display_path(ckpt)  # no absolute paths of this machine in the results
    start = time.perf_counter()
    result: dict[str, Any] = {"metric": metric, "config_id": cfg.id, "config": cfg.to_dict(),
                              "describe": cfg.describe(), "n": n, "seed": seed}
    if metric == "val_loss":
        val = make_val_set(net, n=n, seed=seed)
        result["value"] = val_loss(net, cfg, val)
        result["source"] = f"proxy supernet {net.space.name} ({shown}), {val.description}"
    elif metric == "compositional":
        if net.space.dataset != "shapes":
            raise ValueError(f"the compositional checker needs the shapes dataset, not {net.space.dataset!r}")
        specs = eval_prompts(n, split=split, seed=seed)
        images = generate(net, [s.text for s in specs], cfg, steps=steps, cfg_scale=cfg_scale, seed=seed,
                          shift=shift)
        res = score(images.permute(0, 2, 3, 1).numpy(), specs)
        result.update(value=res.accuracy, per_category=res.per_category, counts=res.counts,
                      failures=res.failures, shapes_read=res.shapes_read, split=split, steps=steps,
                      cfg_scale=cfg_scale, shift=shift)
        result["source"] = (f"proxy supernet {net.space.name} ({shown}), GenEval-style checker on "
                            f"{n} {'held-out' if split == 'heldout' else split} shapes prompts, "
                            f"{_sampler(steps, cfg_scale, shift)}")
    elif metric == "fd_ref":
        ref, meta = load_reference(ckpt)
        real = make_dataset(net.space.dataset, split="val", resolution=net.space.resolution, size=n,
                            seed=seed + 777)
        other = make_dataset(net.space.dataset, split="val", resolution=net.space.resolution, size=n,
                             seed=seed + 778)
        real_f = features(ref, torch.stack([real[i][0] for i in range(n)]))
        fake_x = generate(net, [real[i][1] for i in range(n)], cfg, steps=steps, cfg_scale=cfg_scale, seed=seed,
                          shift=shift)
        floor = frechet_distance(real_f, features(ref, torch.stack([other[i][0] for i in range(n)])))
        result.update(value=frechet_distance(real_f, features(ref, fake_x)), floor=floor, steps=steps,
                      cfg_scale=cfg_scale, shift=shift)
        result["source"] = (f"proxy supernet {net.space.name} ({shown}); Frechet distance in the features "
                            f"of hwnas's reference classifier ({describe(meta)}), "
                            f"{n} generated vs {n} validation images, {_sampler(steps, cfg_scale, shift)}; "
                            f"two sets of {n} validation images are {floor:.4g} apart (the floor at this n)")
    else:
        raise ValueError(f"metric must be one of compositional, fd_ref, val_loss; got {metric!r}")
    if not math.isfinite(result["value"]):
        raise ValueError(f"{metric} of {cfg.describe()} is {result['value']} (not a number): the checkpoint "
                         f"or the sampling diverged; no result reported")
    result["wall_s"] = round(time.perf_counter() - start, 2)
    return result


def _sampler(steps: int, cfg_scale: float, shift: float) -> str:
    """How the images were sampled, for a result's source."""
    return f"{steps} Euler steps, CFG {cfg_scale}" + (f", time shift {shift}" if shift != 1.0 else "")
