"""A user's own images with captions: `photo.png` + `photo.txt` in one directory.

Images (png, jpg, jpeg, webp, bmp) are read with Pillow, converted to RGB, scaled so the short side
is `resolution` and center-cropped to a square. A caption is the sidecar text file with the same
stem, whitespace collapsed; an empty caption is allowed (an unconditional example).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class FolderDataset(Dataset[tuple[torch.Tensor, str]]):
    """Images with sidecar captions, sorted by file name (subdirectories are not searched).

    Every image's caption is read up front (ValueError naming the image without one); an image is
    decoded on access (ValueError naming a file Pillow cannot read).
    Returns (image (3, H, W) float32 in [-1, 1], caption str).
    """

    def __init__(self, root: str | Path, resolution: int = 32) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"not a directory: {str(root)!r}")
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
        self.paths = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(root)!r}")
        self.texts: list[str] = []
        for p in self.paths:
            txt = p.with_suffix(".txt")
            if not txt.is_file():
                raise ValueError(f"image {str(p)!r} has no caption file {txt.name!r}")
            self.texts.append(" ".join(txt.read_text(encoding="utf-8").split()))
        self.root, self.resolution = root, resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        img = load_image(self.paths[index], self.resolution)  # (R, R, 3) uint8
        return torch.from_numpy(img).permute(2, 0, 1).float().div(127.5).sub(1.0), self.texts[index]

    @property
    def captions(self) -> list[str]:
        """The distinct captions, sorted (e.g. to build a `Tokenizer`)."""
        return sorted(set(self.texts))


def load_image(path: str | Path, resolution: int) -> np.ndarray:
    """An image file as (resolution, resolution, 3) uint8 RGB: short side scaled to `resolution`
    (bicubic, antialiased), then center-cropped. ValueError naming the file if it is unreadable."""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = resolution / min(w, h)
            nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - resolution) // 2, (nh - resolution) // 2
            im = im.crop((left, top, left + resolution, top + resolution))
            return np.array(im, dtype=np.uint8)  # a copy: the file closes on return
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from None
