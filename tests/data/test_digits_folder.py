from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hwnas.data import make_dataset
from hwnas.data.digits import DigitsDataset, digit_caption
from hwnas.data.folder import FolderDataset, load_image


@pytest.fixture(scope="module")
def digits() -> tuple[DigitsDataset, DigitsDataset]:
    return DigitsDataset("train"), DigitsDataset("val", 16, channels=1)


def test_digits_split_and_items(digits: tuple[DigitsDataset, DigitsDataset]) -> None:
    train, val = digits
    assert len(train) + len(val) == 1797 and len(val) == 180
    x, caption = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert -1.0 <= x.min() and x.max() <= 1.0
    assert caption.startswith("a handwritten ") and caption in train.captions
    assert val[0][0].shape == (1, 16, 16)
    assert set(train.labels) == set(range(10)) and set(val.labels) == set(range(10))
    again = DigitsDataset("val", 16, channels=1)
    assert again.labels == val.labels and torch.equal(again[5][0], val[5][0])


@pytest.mark.parametrize(
    "label, caption", [(0, "a handwritten zero"), (7, "a handwritten seven"), (9, "a handwritten nine")]
)
def test_digit_caption(label: int, caption: str) -> None:
    assert digit_caption(label) == caption


@pytest.mark.parametrize(
    "kwargs", [{"split": "heldout"}, {"channels": 2}, {"resolution": 4}, {"val_fraction": 1.0}]
)
def test_digits_rejects(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DigitsDataset(**kwargs)


def _write(root: Path, stem: str, size: tuple[int, int], caption: str | None, suffix: str = ".png") -> None:
    rng = np.random.default_rng(len(stem))
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(root / f"{stem}{suffix}")
    if caption is not None:
        (root / f"{stem}.txt").write_text(caption)


def test_folder_loads_resized_images_with_captions(tmp_path: Path) -> None:
    _write(tmp_path, "b_wide", (80, 40), "a wide\n picture ")
    _write(tmp_path, "a_tall", (30, 50), "a tall one", ".jpg")
    (tmp_path / "notes.md").write_text("ignored")
    ds = FolderDataset(tmp_path, 24)
    assert len(ds) == 2 and ds.captions == ["a tall one", "a wide picture"]
    for i in range(2):
        x, _ = ds[i]
        assert x.shape == (3, 24, 24) and -1.0 <= x.min() and x.max() <= 1.0
    assert ds[1][1] == "a wide picture"
    assert load_image(tmp_path / "b_wide.png", 24).shape == (24, 24, 3)


def test_folder_missing_caption_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path, "ok", (32, 32), "fine")
    _write(tmp_path, "lonely", (32, 32), None)
    with pytest.raises(ValueError, match="lonely.png"):
        FolderDataset(tmp_path)


def test_folder_unreadable_image_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.txt").write_text("a broken image")
    ds = FolderDataset(tmp_path)
    with pytest.raises(ValueError, match="broken.png"):
        ds[0]


def test_folder_rejects_empty_or_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no images"):
        FolderDataset(tmp_path)
    with pytest.raises(ValueError, match="not a directory"):
        FolderDataset(tmp_path / "nope")


def test_make_dataset_sizes_and_splits(tmp_path: Path) -> None:
    shapes = make_dataset("shapes", split="val", size=5, seed=1)
    assert len(shapes) == 5 and shapes[0][0].shape == (3, 32, 32)
    digits = make_dataset("digits", split="val", resolution=16, size=400, seed=2)
    assert len(digits) == 400 and digits[399][0].shape == (3, 16, 16)  # 180 val images, repeated
    again = make_dataset("digits", split="val", resolution=16, size=400, seed=2)
    assert all(digits[i][1] == again[i][1] for i in range(0, 400, 37))
    for i in range(10):
        _write(tmp_path, f"img{i}", (20, 20), f"picture {i}")
    train = make_dataset("folder", split="train", root=tmp_path, resolution=16)
    val = make_dataset("folder", split="val", root=tmp_path, resolution=16)
    assert len(train) == 9 and len(val) == 1
    assert val[0][1] not in {train[i][1] for i in range(9)}


@pytest.mark.parametrize(
    "kwargs, match",
    [({"name": "cifar"}, "dataset must be one of"), ({"name": "folder"}, "needs root"),
     ({"name": "digits", "split": "test"}, "split must be"), ({"name": "digits", "size": 0}, "size")],
)  # fmt: skip
def test_make_dataset_rejects(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_dataset(**kwargs)
