from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from hwnas.data.shapes import (
    CATEGORIES,
    COLORS,
    SHAPES,
    SPLITS,
    ObjectSpec,
    PromptSpec,
    list_prompts,
    parse_prompt,
    render,
    sample_scene,
)
from hwnas.metrics.compositional import FAILURES, check, detect, score

_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
_ACROSS = {"left of": "above", "right of": "below", "above": "right of", "below": "left of"}


def _real(resolution: int, per_category: int, seed: int) -> tuple[list[np.ndarray], list[PromptSpec]]:
    """Rendered dataset images over every split and category."""
    rng = np.random.default_rng(seed)
    images, specs = [], []
    for category in CATEGORIES:
        prompts = [p for s in SPLITS for p in list_prompts(s, category=category)]
        for _ in range(per_category):
            spec = prompts[rng.integers(len(prompts))]
            images.append(render(spec, resolution, rng))
            specs.append(spec)
    return images, specs


@pytest.mark.parametrize("resolution, per_category", [(16, 30), (32, 120), (64, 30)])
def test_real_images_score_at_least_99_percent(resolution: int, per_category: int) -> None:
    images, specs = _real(resolution, per_category, seed=resolution)
    result = score(images, specs)
    assert result.n == len(specs) and result.counts == {c: per_category for c in CATEGORIES}
    assert result.accuracy >= 0.99, result.per_category
    assert min(result.per_category.values()) >= 0.97, result.per_category


def test_mild_blur_is_tolerated() -> None:
    """Generated samples are softer than renders; sigma 0.8 px at 32x32 must not change verdicts."""
    images, specs = _real(32, 20, seed=5)
    blurred = [
        ndimage.gaussian_filter(im.astype(np.float32), (0.8, 0.8, 0)).round().astype(np.uint8) for im in images
    ]
    assert score(blurred, specs).accuracy >= 0.97


def _next(items: tuple, item: object, avoid: tuple = ()) -> object:
    return next(x for x in items[items.index(item) + 1 :] + items if x != item and x not in avoid)


def _mismatches(spec: PromptSpec) -> list[PromptSpec]:
    """Prompts the image of spec must not satisfy: a color, shape, count or relation changed."""
    objs, out = spec.objects, []
    for i, o in enumerate(objs):
        others = tuple(x.shape for j, x in enumerate(objs) if j != i)
        swapped = list(objs)
        swapped[i] = replace(o, shape=_next(SHAPES, o.shape, others))
        out.append(replace(spec, objects=tuple(swapped)))
        if o.color is not None:
            swapped[i] = replace(o, color=_next(COLORS, o.color))
            out.append(replace(spec, objects=tuple(swapped)))
    if spec.category == "counting":
        out.append(replace(spec, objects=(replace(objs[0], count=5 - objs[0].count),)))
    if spec.category == "color_attr":  # the colors bound to the other shapes
        a, b = objs
        out.append(replace(spec, objects=(replace(a, color=b.color), replace(b, color=a.color))))
    if spec.relation is not None:
        out.append(replace(spec, relation=_OPPOSITE[spec.relation]))
        out.append(replace(spec, relation=_ACROSS[spec.relation]))
        out.append(replace(spec, objects=objs[::-1]))
    return out


def test_mismatched_prompts_are_rejected() -> None:
    images, specs = _real(32, 40, seed=3)
    judged = [check(img, wrong).correct for img, spec in zip(images, specs) for wrong in _mismatches(spec)]
    assert len(judged) > 500
    assert np.mean(judged) <= 0.02, np.mean(judged)  # accepted wrong prompts


@pytest.mark.parametrize("kind", ["blank", "white", "noise", "gray_noise"])
def test_blank_and_noise_images_fail(kind: str) -> None:
    rng = np.random.default_rng(0)
    image = {
        "blank": np.zeros((32, 32, 3), np.uint8),
        "white": np.full((32, 32, 3), 255, np.uint8),
        "noise": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "gray_noise": np.repeat(rng.integers(0, 256, (32, 32, 1), dtype=np.uint8), 3, axis=2),
    }[kind]
    specs = [p for c in CATEGORIES for p in list_prompts("heldout", category=c)[:5]]
    assert score([image] * len(specs), specs).accuracy == 0.0


def test_layouts_and_formats_agree() -> None:
    """uint8 HWC, float [-1, 1] HWC and float CHW give the same detections."""
    spec = parse_prompt("two magenta squares")
    img = render(spec, 32, np.random.default_rng(0))
    as_float = img.astype(np.float32) / 127.5 - 1.0
    found = detect(img)
    assert [o.shape for o in found] == ["square", "square"] and {o.color for o in found} == {"magenta"}
    assert detect(as_float) == detect(as_float.transpose(2, 0, 1)) == found
    assert check(as_float, spec).correct and check(as_float, spec).reason == ""
    assert score(np.stack([img, img]), [spec, spec]).accuracy == 1.0


def test_detected_geometry() -> None:
    scene = sample_scene(parse_prompt("a yellow triangle above a cyan circle"), np.random.default_rng(4))
    found = {o.shape: o for o in detect(render(scene, 64))}
    for obj in scene.objects:
        got = found[obj.shape]
        assert got.color == obj.color
        assert np.allclose(got.center, obj.center, atol=0.03)
        assert np.allclose(got.size, 2 * obj.size, atol=0.05)


def test_counting_rejects_extra_objects_of_the_shape() -> None:
    scene = sample_scene(parse_prompt("three red circles"), np.random.default_rng(0))
    img = render(scene, 32)
    assert check(img, parse_prompt("three red circles")).correct
    assert not check(img, parse_prompt("two red circles")).correct


def test_score_validates_and_aggregates() -> None:
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        score([np.zeros((8, 8, 3), np.uint8)] * 2, [parse_prompt("a circle")])
    with pytest.raises(ValueError, match="shape"):
        check(np.zeros((8, 8)), parse_prompt("a circle"))
    empty = score([], [])
    assert empty.n == 0 and empty.accuracy == 0.0 and empty.per_category == {}
    good = render(parse_prompt("a circle"), 32, np.random.default_rng(0))
    square = PromptSpec("single_object", (ObjectSpec("square"),))
    mixed = score([good, good], [parse_prompt("a circle"), square])
    assert mixed.accuracy == 0.5 and mixed.counts == {"single_object": 2} and mixed.category_mean == 0.5


@pytest.mark.parametrize("drawn, asked, failure", [
    ("a red circle", "a triangle", "shape"),
    ("a red circle", "a blue circle", "color"),
    ("a red circle and a blue square", "a red square and a blue circle", "color"),
    ("three red circles", "two red circles", "count"),
    ("three red circles", "two blue circles", "count"),
    ("a red circle", "two red squares", "shape"),
    ("a red circle left of a blue square", "a red circle right of a blue square", "relation"),
])
def test_a_failure_names_its_first_unmet_requirement(drawn: str, asked: str, failure: str) -> None:
    image = render(sample_scene(parse_prompt(drawn), np.random.default_rng(1)), 32)
    result = check(image, parse_prompt(asked))
    assert not result.correct and result.failure == failure, result.reason
    assert check(image, parse_prompt(drawn)).failure is None


def test_score_counts_failures_and_the_shapes_it_read() -> None:
    circle = render(sample_scene(parse_prompt("a red circle"), np.random.default_rng(0)), 32)
    bar = np.zeros((32, 32, 3), np.uint8)
    bar[12:16, 4:28] = (230, 30, 30)  # 4 x 24 px: too elongated to be a shape
    assert [o.shape for o in detect(bar)] == [None]
    specs = [parse_prompt(t) for t in ("a red circle", "a blue circle", "a triangle", "a red circle")]
    result = score([circle, circle, circle, bar], specs)
    assert result.accuracy == 0.25
    assert result.failures == {"shape": 2, "color": 1, "count": 0, "relation": 0}
    assert set(result.failures) == set(FAILURES)
    assert result.shapes_read == 3 / 4
    assert score([np.zeros((32, 32, 3), np.uint8)], [parse_prompt("a circle")]).shapes_read is None


def test_eval_prompts_span_each_category_of_a_split() -> None:
    from hwnas.metrics.evaluate import eval_prompts

    prompts = eval_prompts(120, seed=0)
    assert prompts == eval_prompts(120, seed=0) and prompts != eval_prompts(120, seed=1)
    assert {p.category for p in prompts[:6]} == set(CATEGORIES)  # the categories in turn
    held = set(list_prompts("heldout"))
    assert set(prompts) <= held
    position = [p for p in prompts if p.category == "position"]
    assert len(position) == 20 and len(set(position)) == 20  # 20 of 266, all different
    assert len({(o.color, o.shape) for p in position for o in p.objects}) >= 10  # across colors and shapes
    single = list_prompts("heldout", category="single_object")
    assert [p for p in prompts if p.category == "single_object"] == single * 20  # cycled
    train = eval_prompts(12, split="train", seed=0)
    assert set(train) <= set(list_prompts("train")) and {p.category for p in train} == set(CATEGORIES)
