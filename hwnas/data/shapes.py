"""The built-in "shapes" text-to-image dataset: procedural scenes with GenEval-style prompts.

A scene holds 1-3 flat objects (circle, square, triangle) in six saturated colors on a black
background. Every scene comes from a structured prompt (`PromptSpec`) in one of GenEval's six
categories (Ghosh et al., "GenEval", NeurIPS 2023):

    single_object   "a circle"                              (color free)
    two_object      "a circle and a square"                  (colors free)
    counting        "two green triangles", "three blue circles"
    colors          "a yellow square"
    position        "a red circle left of a blue square"     (also right of / above / below)
    color_attr      "a red square and a blue circle"         (color bound to the right shape)

Scenes live in unit coordinates (x right, y down, both in [0, 1]), so one scene renders at any
resolution. Layouts are sampled from a prompt with a seeded `numpy.random.Generator`; the same
seed gives the same images. `hwnas.metrics.compositional` checks an image against a `PromptSpec`.

Prompt splits (`list_prompts`) are disjoint sets of prompt texts. Held-out prompts include novel
compositions: the color-shape pairs in `HELDOUT_PAIRS` never occur in a train/val counting,
position or color-attribution prompt, though each of them is a train "colors" prompt, so every
color, shape and color-shape pair is seen in training.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Literal, TypeVar, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

Shape = Literal["circle", "square", "triangle"]
Color = Literal["red", "yellow", "green", "cyan", "blue", "magenta"]
Category = Literal["single_object", "two_object", "counting", "colors", "position", "color_attr"]
Relation = Literal["left of", "right of", "above", "below"]
Split = Literal["train", "val", "heldout"]
_W = TypeVar("_W", bound=str)

SHAPES: tuple[Shape, ...] = get_args(Shape)
COLORS: tuple[Color, ...] = get_args(Color)
CATEGORIES: tuple[Category, ...] = get_args(Category)
RELATIONS: tuple[Relation, ...] = get_args(Relation)
SPLITS: tuple[Split, ...] = get_args(Split)
COLOR_RGB: dict[Color, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "yellow": (230, 230, 30),
    "green": (30, 230, 30),
    "cyan": (30, 230, 230),
    "blue": (30, 30, 230),
    "magenta": (230, 30, 230),
}
"""sRGB (0-255). Hues 60 degrees apart, equal brightness, so color survives blur and small size."""
BACKGROUND_RGB: tuple[int, int, int] = (0, 0, 0)
NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three"}
HELDOUT_PAIRS: frozenset[tuple[Color, Shape]] = frozenset(
    {("red", "triangle"), ("green", "circle"), ("blue", "square")}
)
SIZE_RANGE: tuple[float, float] = (0.13, 0.19)
"""Object half-extent (circle radius, half the side of a square/triangle box), unit coordinates.
At 32x32 px that is a 4.2-6.1 px radius."""

_SIZE_MAX_CROWDED = 0.16  # half-extent cap with 3 objects, so they fit with clear gaps
_BORDER = 0.04  # object box to image edge, unit coordinates
_GAP = 0.08  # between object boxes (2.5 px at 32x32), so components never merge
_REL_MIN = 0.3  # centre offset along a position relation's axis
_REL_PERP = 0.5  # max |offset across| / |offset along| for a position relation
_VAL_FRACTION = 0.1
_HELDOUT_FRACTION = 0.1
_MULTI: tuple[Category, ...] = ("counting", "position", "color_attr")


@dataclass(frozen=True)
class ObjectSpec:
    """One object a prompt asks for: a shape, a color (None: any color) and how many."""

    shape: Shape
    color: Color | None = None
    count: int = 1

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.color is not None and self.color not in COLORS:
            raise ValueError(f"color must be one of {COLORS} or None, got {self.color!r}")
        if self.count not in (1, *NUMBER_WORDS):
            raise ValueError(f"count must be one of {(1, *NUMBER_WORDS)}, got {self.count!r}")


@dataclass(frozen=True)
class PromptSpec:
    """A structured prompt: GenEval category, required objects, and for `position` the relation
    of `objects[0]` to `objects[1]` ("a red circle left of a blue square": the circle is left)."""

    category: Category
    objects: tuple[ObjectSpec, ...]
    relation: Relation | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ValueError(f"category must be one of {CATEGORIES}, got {self.category!r}")
        objs = self.objects
        n = 1 if self.category in ("single_object", "colors", "counting") else 2
        if len(objs) != n or not all(isinstance(o, ObjectSpec) for o in objs):
            raise ValueError(f"{self.category} needs {n} ObjectSpec, got {objs!r}")
        colored = all(o.color is not None for o in objs)
        counted = self.category == "counting"
        if any((o.count > 1) != counted for o in objs):
            raise ValueError(f"only counting prompts ask for count > 1, got {self.category} {objs!r}")
        if self.category in ("single_object", "two_object") and not all(o.color is None for o in objs):
            raise ValueError(f"{self.category} prompts name no color, got {objs!r}")
        if self.category in ("counting", "colors", "position", "color_attr") and not colored:
            raise ValueError(f"{self.category} prompts name every color, got {objs!r}")
        if n == 2 and (objs[0].shape, objs[0].color) == (objs[1].shape, objs[1].color):
            raise ValueError(f"the two objects must differ, got {objs!r}")
        if (self.relation is None) == (self.category == "position"):
            raise ValueError(f"a relation is needed exactly for position, got {self.relation!r}")
        if self.relation is not None and self.relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}, got {self.relation!r}")

    @property
    def text(self) -> str:
        """The caption, e.g. "a red circle left of a blue square"."""
        nouns = [_noun(o) for o in self.objects]
        if self.category == "counting":
            o = self.objects[0]
            return f"{NUMBER_WORDS[o.count]} {o.color} {o.shape}s"
        if self.category == "position":
            return f"a {nouns[0]} {self.relation} a {nouns[1]}"
        return " and ".join(f"a {x}" for x in nouns)

    @property
    def n_objects(self) -> int:
        return sum(o.count for o in self.objects)


@dataclass(frozen=True)
class ShapeObject:
    """One rendered object. `center` is (x, y) and `size` the half-extent, unit coordinates."""

    shape: Shape
    color: Color
    center: tuple[float, float]
    size: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if self.color not in COLORS:
            raise ValueError(f"color must be one of {COLORS}, got {self.color!r}")
        if not 0.0 < self.size < 0.5:
            raise ValueError(f"size (half-extent, unit coordinates) must be in (0, 0.5), got {self.size!r}")

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in unit coordinates."""
        (x, y), s = self.center, self.size
        return (x - s, y - s, x + s, y + s)


@dataclass(frozen=True)
class Scene:
    """A laid-out prompt: the objects to draw and the prompt they satisfy."""

    objects: tuple[ShapeObject, ...]
    spec: PromptSpec

    @property
    def category(self) -> Category:
        return self.spec.category

    @property
    def caption(self) -> str:
        return self.spec.text


def _noun(o: ObjectSpec) -> str:
    return o.shape if o.color is None else f"{o.color} {o.shape}"


def parse_prompt(text: str) -> PromptSpec:
    """The `PromptSpec` of a caption; the inverse of `PromptSpec.text` (case, spaces, a final
    period and "an" for "a" are tolerated). Raises ValueError quoting text that is no prompt."""
    words = ["a" if w == "an" else w for w in text.lower().strip().rstrip(".").split()]
    try:
        return _parse_words(words)
    except (ValueError, IndexError, KeyError):
        example = "'a red circle left of a blue square'"
        raise ValueError(f"not a shapes prompt: {text!r}; expected e.g. {example}") from None


def _parse_words(words: list[str]) -> PromptSpec:
    numbers = {w: n for n, w in NUMBER_WORDS.items()}
    if words[0] in numbers:
        count, color, plural = words
        if not plural.endswith("s"):
            raise ValueError(plural)
        return PromptSpec("counting", (ObjectSpec(_word(plural[:-1], SHAPES), _word(color, COLORS), numbers[count]),))
    for i in range(1, len(words)):
        for rel in RELATIONS:
            if words[i : i + len(rel.split())] == rel.split():
                a, b = _parse_noun(words[:i]), _parse_noun(words[i + len(rel.split()) :])
                if a.color is None or b.color is None:
                    raise ValueError(words)
                return PromptSpec("position", (a, b), rel)
    if "and" in words:
        i = words.index("and")
        a, b = _parse_noun(words[:i]), _parse_noun(words[i + 1 :])
        return PromptSpec("two_object" if a.color is None else "color_attr", (a, b))
    a = _parse_noun(words)
    return PromptSpec("single_object" if a.color is None else "colors", (a,))


def _parse_noun(words: list[str]) -> ObjectSpec:
    if words[0] != "a" or len(words) not in (2, 3):
        raise ValueError(words)
    return ObjectSpec(_word(words[-1], SHAPES), _word(words[1], COLORS) if len(words) == 3 else None)


def _word(word: str, choices: tuple[_W, ...]) -> _W:
    """`word` as one of `choices` (a Literal's values); ValueError if it is none of them."""
    return choices[choices.index(word)]


@functools.cache
def all_prompts() -> tuple[PromptSpec, ...]:
    """Every prompt of the dataset, in a fixed order. Two-object prompts name two different
    shapes; position and color-attribution prompts also two different colors."""
    out = [PromptSpec("single_object", (ObjectSpec(s),)) for s in SHAPES]
    out += [
        PromptSpec("two_object", (ObjectSpec(a), ObjectSpec(b))) for a in SHAPES for b in SHAPES if a != b
    ]
    out += [
        PromptSpec("counting", (ObjectSpec(s, c, n),)) for n in NUMBER_WORDS for c in COLORS for s in SHAPES
    ]
    out += [PromptSpec("colors", (ObjectSpec(s, c),)) for c in COLORS for s in SHAPES]
    pairs = [
        (ObjectSpec(s1, c1), ObjectSpec(s2, c2))
        for c1 in COLORS for s1 in SHAPES for c2 in COLORS for s2 in SHAPES
        if c1 != c2 and s1 != s2
    ]  # fmt: skip
    out += [PromptSpec("position", p, rel) for rel in RELATIONS for p in pairs]
    out += [PromptSpec("color_attr", p) for p in pairs]
    return tuple(out)


def prompt_split(spec: PromptSpec) -> Split:
    """The split a prompt belongs to (fixed; no seed). Multi-object prompts with a pair from
    `HELDOUT_PAIRS` are held out; the "colors" prompts of those pairs are train; the rest of each
    category is ranked by the SHA-1 of its text and the first 10% held out, the next 10% val
    (rounded, at least one held-out prompt per category)."""
    if spec.category in _MULTI and any((o.color, o.shape) in HELDOUT_PAIRS for o in spec.objects):
        return "heldout"
    if spec.category == "colors" and (spec.objects[0].color, spec.objects[0].shape) in HELDOUT_PAIRS:
        return "train"
    return _free_split(spec.category)[spec.text]


@functools.cache
def _free_split(category: Category) -> dict[str, Split]:
    texts = [
        p.text
        for p in all_prompts()
        if p.category == category
        and not (category in _MULTI and any((o.color, o.shape) in HELDOUT_PAIRS for o in p.objects))
        and not (category == "colors" and (p.objects[0].color, p.objects[0].shape) in HELDOUT_PAIRS)
    ]
    texts.sort(key=lambda t: hashlib.sha1(t.encode()).hexdigest())
    n_held = max(1, round(_HELDOUT_FRACTION * len(texts)))
    n_val = round(_VAL_FRACTION * len(texts))
    return {
        t: "heldout" if i < n_held else "val" if i < n_held + n_val else "train" for i, t in enumerate(texts)
    }


def list_prompts(split: Split, *, category: Category | None = None) -> list[PromptSpec]:
    """The prompts of one split (optionally one category), in the fixed order of `all_prompts`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if category is not None and category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}, got {category!r}")
    return [p for p in all_prompts() if category in (None, p.category) and prompt_split(p) == split]


def sample_scene(spec: PromptSpec, rng: np.random.Generator) -> Scene:
    """A random valid layout of a prompt: objects inside the image, boxes at least `_GAP` apart,
    free colors drawn uniformly, and for `position` the relation clearly true (centre offset >=
    `_REL_MIN` along its axis, at most `_REL_PERP` times that across it)."""
    wanted = [(o.shape, o.color) for o in spec.objects for _ in range(o.count)]
    items = [(s, c if c is not None else COLORS[rng.integers(len(COLORS))]) for s, c in wanted]
    s_max = SIZE_RANGE[1] if len(items) <= 2 else _SIZE_MAX_CROWDED
    for _ in range(10_000):
        sizes = rng.uniform(SIZE_RANGE[0], s_max, size=len(items))
        lo, hi = sizes + _BORDER, 1.0 - sizes - _BORDER
        centers = rng.uniform(lo[:, None], hi[:, None], size=(len(items), 2))
        if _layout_ok(centers, sizes, spec.relation):
            objs = tuple(
                ShapeObject(s, c, (float(x), float(y)), float(r))
                for (s, c), (x, y), r in zip(items, centers, sizes)
            )
            return Scene(objs, spec)
    raise RuntimeError(f"no layout found for {spec.text!r}")  # unreachable in practice


def _layout_ok(centers: np.ndarray, sizes: np.ndarray, relation: Relation | None) -> bool:
    n = len(sizes)
    for i in range(n):
        for j in range(i + 1, n):
            gaps = np.abs(centers[i] - centers[j]) - (sizes[i] + sizes[j])
            if gaps.max() < _GAP:
                return False
    if relation is None:
        return True
    d = centers[1] - centers[0]  # from the first object to the second, (dx, dy)
    along, across = {"left of": (d[0], d[1]), "right of": (-d[0], d[1]),
                     "above": (d[1], d[0]), "below": (-d[1], d[0])}[relation]  # fmt: skip
    return bool(along >= _REL_MIN and abs(across) <= _REL_PERP * along)


def clear_relation(a: ShapeObject, b: ShapeObject) -> Relation | None:
    """The relation of `a` to `b` that holds as clearly as a position prompt's layout makes it (centre
    offset >= `_REL_MIN` along its axis, at most `_REL_PERP` times that across), or None."""
    centers, sizes = np.array([a.center, b.center]), np.zeros(2)  # sizes 0: the box-gap test is moot
    return next((r for r in RELATIONS if _layout_ok(centers, sizes, r)), None)


def render(
    scene: Scene | PromptSpec,
    resolution: int = 32,
    rng: np.random.Generator | None = None,
    *,
    supersample: int | None = None,
) -> np.ndarray:
    """Draw a scene (or sample one from a prompt with `rng`) as a (resolution, resolution, 3)
    uint8 sRGB array. Edges are anti-aliased by averaging `supersample`^2 point samples per pixel
    (default: 4 up to 64 px, fewer above, 1 at 256 px and more)."""
    if isinstance(scene, PromptSpec):
        if rng is None:
            raise ValueError("rendering a PromptSpec samples a layout and needs rng, got rng=None")
        scene = sample_scene(scene, rng)
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
    k = supersample if supersample is not None else max(1, min(4, 256 // resolution))
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"supersample must be a positive integer, got {k!r}")
    n = resolution * k
    grid = (np.arange(n) + 0.5) / n  # sample-point coordinates, unit
    img = np.empty((resolution, resolution, 3))
    img[:] = BACKGROUND_RGB
    for obj in scene.objects:
        cover = _mask(obj, grid).reshape(resolution, k, resolution, k).mean(axis=(1, 3))  # (R, R)
        color = np.asarray(COLOR_RGB[obj.color], dtype=np.float64)
        img += cover[..., None] * (color - img)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _mask(obj: ShapeObject, grid: np.ndarray) -> np.ndarray:
    (cx, cy), s = obj.center, obj.size
    x, y = grid[None, :] - cx, grid[:, None] - cy  # (1, N), (N, 1)
    if obj.shape == "circle":
        return (x * x + y * y <= s * s).astype(np.float64)
    if obj.shape == "square":
        return ((np.abs(x) <= s) & (np.abs(y) <= s)).astype(np.float64)
    # upright isosceles triangle: apex at the top centre of the box, base along its bottom
    return ((y <= s) & (np.abs(x) <= (y + s) / 2)).astype(np.float64)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1.0)


class ShapesDataset(Dataset[tuple[torch.Tensor, str]]):
    """`size` seeded shapes scenes of one prompt split. Item i draws a category uniformly (among
    those the split has), then a prompt of it uniformly, then a layout, all from
    `numpy.random.default_rng([seed, i])`: items are independent of order and worker.

    Returns (image (3, H, W) float32 in [-1, 1], caption str).
    """

    def __init__(
        self,
        split: Split = "train",
        resolution: int = 32,
        *,
        size: int = 10_000,
        seed: int = 0,
        categories: tuple[Category, ...] = CATEGORIES,
    ) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be an integer >= 8, got {resolution!r}")
        by_cat = {c: list_prompts(split, category=c) for c in categories}
        self.prompts: dict[Category, list[PromptSpec]] = {c: p for c, p in by_cat.items() if p}
        if not self.prompts:
            raise ValueError(f"split {split!r} has no prompts in categories {categories!r}")
        self.split, self.resolution, self.size, self.seed = split, resolution, size, seed

    def __len__(self) -> int:
        return self.size

    def scene(self, index: int) -> Scene:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of size {self.size}")
        rng = np.random.default_rng([self.seed, index])
        cats = list(self.prompts)
        prompts = self.prompts[cats[rng.integers(len(cats))]]
        return sample_scene(prompts[rng.integers(len(prompts))], rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        scene = self.scene(index)
        return to_tensor(render(scene, self.resolution)), scene.caption

    @property
    def captions(self) -> list[str]:
        """The distinct captions this dataset draws from (e.g. to build a `Tokenizer`)."""
        return sorted(p.text for ps in self.prompts.values() for p in ps)
