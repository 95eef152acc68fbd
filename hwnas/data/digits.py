"""scikit-learn's bundled handwritten digits (UCI optdigits test set: 1,797 8x8 images, 0-16 ink)
as a text-to-image dataset with captions like "a handwritten seven". No download."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DigitSplit = Literal["train", "val"]
DIGIT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)  # fmt: skip


def digit_caption(label: int) -> str:
    """"a handwritten seven" for 7."""
    if not 0 <= label <= 9:
        raise ValueError(f"a digit label is in 0..9, got {label!r}")
    return f"a handwritten {DIGIT_WORDS[label]}"


class DigitsDataset(Dataset[tuple[torch.Tensor, str]]):
    """Handwritten digits, white ink on black, resized bilinearly from 8x8 to `resolution`.

    The split is a fixed permutation (`split_seed`) of the 1,797 images: the first `val_fraction`
    are val, the rest train. Returns (image (channels, H, W) float32 in [-1, 1], caption str).
    """

    def __init__(
        self,
        split: DigitSplit = "train",
        resolution: int = 32,
        *,
        channels: Literal[1, 3] = 3,
        val_fraction: float = 0.1,
        split_seed: int = 0,
    ) -> None:
        from sklearn.datasets import load_digits  # local: a few hundred ms, only when used

        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        digits = load_digits()
        order = np.random.default_rng(split_seed).permutation(len(digits.target))
        n_val = int(round(val_fraction * len(order)))
        keep = np.sort(order[:n_val] if split == "val" else order[n_val:])
        self.images = torch.from_numpy(digits.images[keep]).float().div(8.0).sub(1.0)  # (N, 8, 8)
        self.labels: list[int] = [int(t) for t in digits.target[keep]]
        self.split, self.resolution, self.channels = split, resolution, channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        x = self.images[index][None, None]  # (1, 1, 8, 8)
        x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False)[0]
        return x.expand(self.channels, -1, -1).contiguous(), digit_caption(self.labels[index])

    @property
    def captions(self) -> list[str]:
        """The ten captions (e.g. to build a `Tokenizer`)."""
        return [digit_caption(d) for d in range(10)]
