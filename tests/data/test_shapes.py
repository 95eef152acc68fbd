from __future__ import annotations

import numpy as np
import pytest
import torch

from hwnas.data.shapes import (
    CATEGORIES,
    COLORS,
    HELDOUT_PAIRS,
    SHAPES,
    SPLITS,
    ObjectSpec,
    PromptSpec,
    ShapesDataset,
    all_prompts,
    list_prompts,
    parse_prompt,
    render,
    sample_scene,
)
from hwnas.data.tokenizer import words
from hwnas.metrics.compositional import check


def test_dataset_is_deterministic_per_seed() -> None:
    a, b, c = (ShapesDataset("train", 32, size=40, seed=s) for s in (7, 7, 8))
    for i in range(len(a)):
        (xa, ta), (xb, tb) = a[i], b[i]
        assert ta == tb and torch.equal(xa, xb)
    assert any(a[i][1] != c[i][1] or not torch.equal(a[i][0], c[i][0]) for i in range(len(a)))


def test_dataset_items() -> None:
    ds = ShapesDataset("heldout", 32, size=30, seed=0)
    x, caption = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() == -1.0  # black background
    assert caption in ds.captions
    assert ds.scene(3).caption == caption
    with pytest.raises(IndexError):
        ds.scene(30)


def test_captions_parse_back_to_their_spec() -> None:
    for spec in all_prompts():
        assert parse_prompt(spec.text) == spec
    loose = parse_prompt("  A Red Circle LEFT of an blue square. ")
    assert loose == parse_prompt("a red circle left of a blue square")


@pytest.mark.parametrize(
    "text",
    ["", "a", "a purple circle", "a red hexagon", "four red circles", "two red circle", "a red circle and",
     "a circle left of a square", "a red circle and a square", "a red circle and a red circle"],
)  # fmt: skip
def test_parse_prompt_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a shapes prompt"):
        parse_prompt(text)


@pytest.mark.parametrize(
    "category, objects, relation",
    [
        ("single_object", (ObjectSpec("circle", "red"),), None),  # single_object names no color
        ("colors", (ObjectSpec("circle"),), None),  # colors names one
        ("two_object", (ObjectSpec("circle"), ObjectSpec("circle")), None),  # two different objects
        ("counting", (ObjectSpec("circle", "red"),), None),  # count > 1
        ("colors", (ObjectSpec("circle", "red", 2),), None),  # count only for counting
        ("position", (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")), None),  # relation
        ("color_attr", (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")), "above"),
        ("position", (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")), "behind"),
        ("gibberish", (ObjectSpec("circle"),), None),
    ],
)
def test_prompt_spec_validation(category: str, objects: tuple, relation: str | None) -> None:
    with pytest.raises(ValueError):
        PromptSpec(category, objects, relation)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"shape": "hexagon"}, {"shape": "circle", "color": "purple"}, {"shape": "circle", "count": 4}]
)
def test_object_spec_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ObjectSpec(**kwargs)


def test_splits_partition_the_prompts() -> None:
    split_texts = {s: [p.text for p in list_prompts(s)] for s in SPLITS}
    for texts in split_texts.values():
        assert len(texts) == len(set(texts))
    sets = [set(t) for t in split_texts.values()]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set.union(*sets) == {p.text for p in all_prompts()}
    for split in ("train", "heldout"):
        assert {p.category for p in list_prompts(split)} == set(CATEGORIES)
    assert list_prompts("heldout") == list_prompts("heldout")  # fixed, no seed


def test_heldout_is_compositional_but_its_parts_are_seen() -> None:
    train = list_prompts("train")
    train_words = {w for p in train for w in words(p.text)}
    assert all(set(words(p.text)) <= train_words for p in list_prompts("heldout") + list_prompts("val"))
    seen_pairs = {(o.color, o.shape) for p in train for o in p.objects if o.color is not None}
    assert seen_pairs == {(c, s) for c in COLORS for s in SHAPES}  # every binding seen ("colors")
    multi = ("counting", "position", "color_attr")
    for p in train + list_prompts("val"):
        if p.category in multi:
            assert not any((o.color, o.shape) in HELDOUT_PAIRS for o in p.objects), p.text
    held = list_prompts("heldout", category="color_attr")
    assert any((o.color, o.shape) in HELDOUT_PAIRS for p in held for o in p.objects)


@pytest.mark.parametrize("resolution", [16, 32, 48, 64, 256])
def test_render_any_resolution(resolution: int) -> None:
    spec = parse_prompt("a red circle left of a blue square")
    img = render(spec, resolution, np.random.default_rng(0))
    assert img.shape == (resolution, resolution, 3) and img.dtype == np.uint8
    assert img.max() > 200 and (img == 0).all(axis=2).mean() > 0.5  # objects on black


def test_render_needs_rng_for_a_spec() -> None:
    with pytest.raises(ValueError, match="rng"):
        render(parse_prompt("a circle"), 32)


def test_layouts_respect_prompt() -> None:
    rng = np.random.default_rng(1)
    for spec in all_prompts()[::3]:
        scene = sample_scene(spec, rng)
        assert len(scene.objects) == spec.n_objects and scene.spec == spec
        boxes = np.array([o.box() for o in scene.objects])
        assert boxes.min() > 0.0 and boxes.max() < 1.0
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                gap_x = max(boxes[j, 0] - boxes[i, 2], boxes[i, 0] - boxes[j, 2])
                gap_y = max(boxes[j, 1] - boxes[i, 3], boxes[i, 1] - boxes[j, 3])
                assert max(gap_x, gap_y) > 0.05  # no overlap, clear gap
        for want, obj in zip([o for o in spec.objects for _ in range(o.count)], scene.objects):
            assert obj.shape == want.shape and want.color in (None, obj.color)
        if spec.relation is not None:
            (ax, ay), (bx, by) = scene.objects[0].center, scene.objects[1].center
            holds = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}
            assert holds[spec.relation] >= 0.3


def test_scene_agrees_with_caption_per_category() -> None:
    """The checker, on each category's rendered scenes, confirms the caption."""
    rng = np.random.default_rng(2)
    for category in CATEGORIES:
        for spec in list_prompts("train", category=category)[:12]:
            scene = sample_scene(spec, rng)
            result = check(render(scene, 32), parse_prompt(scene.caption))
            assert result.correct, (scene.caption, result.reason)
