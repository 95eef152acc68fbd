"""Datasets (built-in shapes and digits, a user's image folder) and the caption tokenizer.

Every dataset returns (image (C, H, W) float32 in [-1, 1], caption str) and has `captions` (the
distinct captions, to build a `Tokenizer`). The shapes prompts are structured (`PromptSpec`) so that
`hwnas.metrics.compositional` can check generated images against them. `make_dataset` builds any of
them by name with a fixed number of items.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Subset

from hwnas.data.digits import DigitsDataset, digit_caption
from hwnas.data.folder import FolderDataset, load_image
from hwnas.data.shapes import (
    CATEGORIES,
    COLOR_RGB,
    COLORS,
    HELDOUT_PAIRS,
    RELATIONS,
    SHAPES,
    SPLITS,
    Category,
    Color,
    ObjectSpec,
    PromptSpec,
    Relation,
    Scene,
    Shape,
    ShapeObject,
    ShapesDataset,
    Split,
    all_prompts,
    list_prompts,
    parse_prompt,
    prompt_split,
    render,
    sample_scene,
    to_tensor,
)
from hwnas.data.tokenizer import BOS_ID, PAD_ID, UNK_ID, Tokenizer

DatasetName = Literal["shapes", "digits", "folder"]
DATASETS: tuple[DatasetName, ...] = ("shapes", "digits", "folder")
_FOLDER_VAL_FRACTION = 0.1


def make_dataset(
    name: str,
    *,
    split: Split = "train",
    resolution: int = 32,
    size: int | None = None,
    seed: int = 0,
    root: str | Path | None = None,
) -> ShapesDataset | Subset[tuple[torch.Tensor, str]]:
    """A dataset by name (one of `DATASETS`; ValueError otherwise), with exactly `size` items when given.

    shapes: `ShapesDataset(split, resolution, size=size, seed=seed)` (size defaults to 10,000).
    digits / folder: the split's images in a seeded order, repeated if `size` exceeds them (all of
    them, in file order, when size is None); "heldout" is "val" for these. folder needs `root`; its
    val split is a fixed 10% (at least one image).
    """
    if name == "shapes":
        return ShapesDataset(split, resolution, size=10_000 if size is None else size, seed=seed)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name == "digits":
        base: DigitsDataset | FolderDataset = DigitsDataset("train" if split == "train" else "val", resolution)
        keep = np.arange(len(base))
    elif name == "folder":
        if root is None:
            raise ValueError("the folder dataset needs root=<directory of images and .txt captions>")
        base = FolderDataset(root, resolution)
        order = np.random.default_rng(0).permutation(len(base))
        n_val = max(1, round(_FOLDER_VAL_FRACTION * len(base))) if len(base) > 1 else 0
        keep = np.sort(order[n_val:] if split == "train" else order[:n_val])
        if len(keep) == 0:
            raise ValueError(f"folder {str(root)!r} has too few images for a {split!r} split")
    else:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if size is None:
        return Subset(base, keep.tolist())
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    order = np.random.default_rng(seed).permutation(keep)
    return Subset(base, np.resize(order, size).tolist())


__all__ = [
    "BOS_ID",
    "DATASETS",
    "DatasetName",
    "CATEGORIES",
    "COLORS",
    "COLOR_RGB",
    "HELDOUT_PAIRS",
    "PAD_ID",
    "RELATIONS",
    "SHAPES",
    "SPLITS",
    "UNK_ID",
    "Category",
    "Color",
    "DigitsDataset",
    "FolderDataset",
    "ObjectSpec",
    "PromptSpec",
    "Relation",
    "Scene",
    "Shape",
    "ShapeObject",
    "ShapesDataset",
    "Split",
    "Tokenizer",
    "all_prompts",
    "digit_caption",
    "list_prompts",
    "load_image",
    "make_dataset",
    "parse_prompt",
    "prompt_split",
    "render",
    "sample_scene",
    "to_tensor",
]
