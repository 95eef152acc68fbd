"""The search space: what a sub-DiT is (`SubnetConfig`) and which sub-DiTs exist (`SearchSpace`).

Pure Python, no torch. The same `SubnetConfig` goes to the model forward, to `extract_subnet`,
to the cost functions in `hwnas.cost`, to the latency predictor, into search trials and reports.

Architecture (SnapGen++, arXiv 2601.08303; see docs/platform-notes.md): three stages Down /
Middle / Up. Down and Up run at the patch-token resolution with adaptive sparse self-attention
(ASSA), the Middle runs at half the token-grid side with full self-attention. Each stage has its
own width ratio, depth and FFN ratio; Down and Up also choose their attention kind and, for the
local branch, the neighbourhood radius in blocks.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from hwnas._keys import check_keys, check_name

Stage = Literal["down", "middle", "up"]
AttnKind = Literal["assa", "bna", "global", "full"]
STAGES: tuple[Stage, ...] = ("down", "middle", "up")
LOCAL_ATTNS: tuple[AttnKind, ...] = ("assa", "bna")
"""Attention kinds with a local (blockwise, neighbourhood `radius`) branch; the others have radius 0."""
SPARSE_ATTN: tuple[AttnKind, ...] = ("assa", "bna", "global")
PRESET_WIDTHS: dict[str, float] = {"tiny": 0.375, "small": 0.5, "full": 1.0}
"""SnapGen++'s three hand-picked widths (0.375x / 0.5x / 1x), each at full depth."""


@dataclass(frozen=True)
class StageConfig:
    """One stage of a sub-DiT.

    `width` is the fraction of the experiment's maximum hidden size; `depth` the number of blocks
    kept (trailing blocks are dropped); `ffn_ratio` the FFN hidden size over the stage width;
    `attn` the self-attention kind ("full" in the Middle, one of `SPARSE_ATTN` in Down/Up);
    `radius` the blockwise-neighbourhood radius in blocks, 0 where there is no local branch.
    """

    width: float
    depth: int
    ffn_ratio: int
    attn: AttnKind
    radius: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.width, (int, float)) or not 0.0 < self.width <= 1.0:
            raise ValueError(f"width must be in (0, 1], got {self.width!r}")
        object.__setattr__(self, "width", float(self.width))
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be a positive integer, got {self.depth!r}")
        if not isinstance(self.ffn_ratio, int) or self.ffn_ratio < 1:
            raise ValueError(f"ffn_ratio must be a positive integer, got {self.ffn_ratio!r}")
        if self.attn not in get_args(AttnKind):
            raise ValueError(f"attn must be one of {get_args(AttnKind)}, got {self.attn!r}")
        if not isinstance(self.radius, int) or self.radius < 0:
            raise ValueError(f"radius must be a non-negative integer, got {self.radius!r}")
        if self.has_local and self.radius < 1:
            raise ValueError(f"attn={self.attn!r} has a local branch and needs radius >= 1, got {self.radius}")
        if not self.has_local and self.radius != 0:
            raise ValueError(f"attn={self.attn!r} has no local branch; radius must be 0, got {self.radius}")

    @property
    def has_local(self) -> bool:
        """Whether this stage's attention has a local branch (ASSA, BNA): `radius` applies."""
        return self.attn in LOCAL_ATTNS


@dataclass(frozen=True)
class SubnetConfig:
    """A sub-DiT: one `StageConfig` per stage. Frozen, hashable, JSON round-trippable."""

    down: StageConfig
    middle: StageConfig
    up: StageConfig

    def __post_init__(self) -> None:
        for name in STAGES:
            stage = getattr(self, name)
            if not isinstance(stage, StageConfig):
                raise ValueError(f"{name} must be a StageConfig, got {type(stage).__name__}")
        if self.middle.attn != "full":
            raise ValueError(f"the middle stage uses full attention, got attn={self.middle.attn!r}")
        for name in ("down", "up"):
            if getattr(self, name).attn not in SPARSE_ATTN:
                raise ValueError(
                    f"{name}.attn must be one of {SPARSE_ATTN}, got {getattr(self, name).attn!r}"
                )

    def stage(self, name: Stage) -> StageConfig:
        stage: StageConfig = getattr(self, name)
        return stage

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(self.stage(name)) for name in STAGES}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> SubnetConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a sub-DiT config is a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(STAGES)
        missing = set(STAGES) - set(data)
        if unknown or missing:
            raise ValueError(
                f"a sub-DiT config has exactly the keys {list(STAGES)}; "
                f"unknown {sorted(unknown)}, missing {sorted(missing)}"
            )
        stages = {}
        allowed = {f.name for f in fields(StageConfig)}
        for name in STAGES:
            part = data[name]
            if not isinstance(part, dict):
                raise ValueError(f"{name} must be a JSON object, got {part!r}")
            bad = set(part) - allowed
            if bad:
                raise ValueError(f"{name} has unknown keys {sorted(bad)}; allowed: {sorted(allowed)}")
            try:
                stages[name] = StageConfig(**part)
            except TypeError as exc:  # a missing field
                raise ValueError(f"{name}: {exc}") from None
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return cls(**stages)

    @classmethod
    def from_json(cls, text: str) -> SubnetConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @property
    def id(self) -> str:
        """Stable short id: the first 10 hex digits of the SHA-1 of the canonical JSON."""
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:10]

    def describe(self) -> str:
        """Compact human-readable form, e.g. `D0.5x6f4assa1-M0.5x20f3-U0.5x10f4assa1`."""

        def one(tag: str, s: StageConfig) -> str:
            attn = "" if s.attn == "full" else f"{s.attn}{s.radius or ''}"
            return f"{tag}{s.width:g}x{s.depth}f{s.ffn_ratio}{attn}"

        return "-".join(one(t, self.stage(n)) for t, n in zip("DMU", STAGES))


@dataclass(frozen=True)
class StageChoices:
    """The choices one stage offers. `preset_ffn_ratio` is the paper's FFN ratio for presets."""

    width: tuple[float, ...]
    depth: tuple[int, ...]
    ffn_ratio: tuple[int, ...]
    attn: tuple[AttnKind, ...]
    radius: tuple[int, ...]
    preset_ffn_ratio: int

    def __post_init__(self) -> None:
        for name in ("width", "depth", "ffn_ratio", "attn"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} needs at least one choice")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has repeated choices: {list(values)}")
        if self.preset_ffn_ratio not in self.ffn_ratio:
            raise ValueError(
                f"preset_ffn_ratio {self.preset_ffn_ratio} is not among ffn_ratio {list(self.ffn_ratio)}"
            )
        if any(a in LOCAL_ATTNS for a in self.attn) and not self.radius:
            raise ValueError("an attention kind with a local branch needs at least one radius")


@dataclass(frozen=True)
class SearchSpace:
    """Which sub-DiTs exist, and the maximum (supernet) sizes they are cut from.

    Shapes: images are `resolution` pixels square; the denoiser works on a latent of
    `resolution // latent_downsample` pixels with `latent_channels` channels (pixel space when
    `latent_downsample` is 1), cut into `patch_size`-square patches. Down/Up see
    `tokens_outer` tokens, the Middle `tokens_middle` (the token grid halved per side).
    """

    name: str
    dataset: str
    resolution: int
    latent_downsample: int
    latent_channels: int
    patch_size: int
    hidden_size: int
    head_dim: int
    kv_heads: int
    time_dim: int
    text_len: int
    text_dim: int
    bna_blocks: int
    kv_compress: int
    stages: dict[Stage, StageChoices] = field(hash=False)
    assumptions: str = ""

    def __post_init__(self) -> None:
        for name in ("resolution", "latent_downsample", "latent_channels", "patch_size", "hidden_size",
                     "head_dim", "kv_heads", "time_dim", "text_len", "text_dim", "bna_blocks",
                     "kv_compress"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.head_dim:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of head_dim {self.head_dim}")
        if self.heads_max % self.kv_heads:
            raise ValueError(f"kv_heads {self.kv_heads} does not divide the {self.heads_max} heads")
        if self.resolution % self.latent_downsample:
            raise ValueError(f"resolution {self.resolution} is not a multiple of latent_downsample")
        if self.head_dim % 4:
            raise ValueError(f"head_dim must be a multiple of 4 for 2D RoPE, got {self.head_dim}")
        side = self.grid_side
        if side * self.patch_size != self.latent_size:
            raise ValueError(f"latent size {self.latent_size} is not a multiple of patch_size {self.patch_size}")
        if side % 2 or side % self.kv_compress:
            raise ValueError(f"token grid {side}x{side} cannot be halved and KV-compressed by {self.kv_compress}")
        if self.tokens_outer % self.bna_blocks:
            raise ValueError(f"{self.tokens_outer} tokens do not split into {self.bna_blocks} BNA blocks")
        if set(self.stages) != set(STAGES):
            raise ValueError(f"the space needs choices for exactly the stages {list(STAGES)}")
        for name, ch in self.stages.items():
            for w in ch.width:
                heads = w * self.heads_max
                if abs(heads - round(heads)) > 1e-9 or round(heads) < 1:
                    raise ValueError(
                        f"{name}.width {w} x {self.heads_max} heads is not a whole number of heads"
                    )
            if name == "middle" and ch.attn != ("full",):
                raise ValueError(f"middle.attn must be [\"full\"], got {list(ch.attn)}")
            if name != "middle" and not set(ch.attn) <= set(SPARSE_ATTN):
                raise ValueError(f"{name}.attn must be chosen from {list(SPARSE_ATTN)}, got {list(ch.attn)}")
            if any(r >= self.bna_blocks for r in ch.radius):
                raise ValueError(f"{name}.radius must be below bna_blocks {self.bna_blocks}")

    # Derived sizes ---------------------------------------------------------------------------

    @property
    def heads_max(self) -> int:
        return self.hidden_size // self.head_dim

    @property
    def latent_size(self) -> int:
        return self.resolution // self.latent_downsample

    @property
    def grid_side(self) -> int:
        """Token-grid side of the Down/Up stages."""
        return self.latent_size // self.patch_size

    @property
    def tokens_outer(self) -> int:
        return self.grid_side**2

    @property
    def tokens_middle(self) -> int:
        return (self.grid_side // 2) ** 2

    @property
    def patch_values(self) -> int:
        """Values one Down/Up token is embedded from: patch_size^2 x latent_channels."""
        return self.patch_size**2 * self.latent_channels

    def heads(self, width: float) -> int:
        return round(width * self.heads_max)

    def dim(self, width: float) -> int:
        """Hidden size of a stage at `width`: heads x head_dim."""
        return self.heads(width) * self.head_dim

    def kv_heads_for(self, heads: int) -> int:
        """Key/value heads of grouped-query self-attention at `heads` query heads.

        The supernet's ratio (`heads_max / kv_heads`) is kept where it divides; otherwise the
        largest divisor of `heads` not above the proportional count, so every group is equal.
        """
        target = max(1, round(heads * self.kv_heads / self.heads_max))
        return max(d for d in range(1, target + 1) if heads % d == 0)

    def max_depth(self, stage: Stage) -> int:
        return max(self.stages[stage].depth)

    def max_ffn_ratio(self, stage: Stage) -> int:
        return max(self.stages[stage].ffn_ratio)

    # Membership, sampling ---------------------------------------------------------------------

    def validate(self, cfg: SubnetConfig) -> None:
        """Raise ValueError naming the first choice of `cfg` that this space does not offer."""
        for name in STAGES:
            s, ch = cfg.stage(name), self.stages[name]
            for attr in ("width", "depth", "ffn_ratio", "attn"):
                value = getattr(s, attr)
                if value not in getattr(ch, attr):
                    raise ValueError(
                        f"{name}.{attr}={value!r} is not offered by experiment {self.name!r} "
                        f"(choices: {list(getattr(ch, attr))})"
                    )
            if s.radius and s.radius not in ch.radius:
                raise ValueError(
                    f"{name}.radius={s.radius} is not offered by experiment {self.name!r} "
                    f"(choices: {list(ch.radius)})"
                )

    def contains(self, cfg: SubnetConfig) -> bool:
        try:
            self.validate(cfg)
        except ValueError:
            return False
        return True

    def _stage_from_choice(self, name: Stage, rng: random.Random, **fixed: Any) -> StageConfig:
        ch = self.stages[name]
        attn = fixed.get("attn", rng.choice(ch.attn))
        radius = fixed.get("radius", rng.choice(ch.radius) if attn in LOCAL_ATTNS else 0)
        return StageConfig(
            width=fixed.get("width", rng.choice(ch.width)),
            depth=fixed.get("depth", rng.choice(ch.depth)),
            ffn_ratio=fixed.get("ffn_ratio", rng.choice(ch.ffn_ratio)),
            attn=attn,
            radius=radius,
        )

    def sample(self, rng: random.Random) -> SubnetConfig:
        """Uniform over each choice independently (radius only where a local branch exists)."""
        return SubnetConfig(**{n: self._stage_from_choice(n, rng) for n in STAGES})

    def mutate(self, cfg: SubnetConfig, rng: random.Random, *, prob: float = 0.2) -> SubnetConfig:
        """Resample each choice with probability `prob`; the result is always in the space."""
        stages = {}
        for name in STAGES:
            s = cfg.stage(name)
            fresh = self._stage_from_choice(name, rng)
            kept = {a: getattr(s, a) for a in ("width", "depth", "ffn_ratio", "attn")
                    if rng.random() >= prob}
            attn = kept.get("attn", fresh.attn)
            if attn in LOCAL_ATTNS:
                radius = s.radius if s.radius and rng.random() >= prob else fresh.radius or rng.choice(
                    self.stages[name].radius)
            else:
                radius = 0
            stages[name] = replace(fresh, **kept, radius=radius)
        return SubnetConfig(**stages)

    def largest(self) -> SubnetConfig:
        """The supernet itself: every choice at its maximum, ASSA at the largest radius."""
        return self._extreme(max, prefer_attn="assa")

    def smallest(self) -> SubnetConfig:
        """Every choice at its minimum; the cheapest attention (global-only where offered)."""
        return self._extreme(min, prefer_attn="global")

    def _extreme(self, pick: Any, *, prefer_attn: AttnKind) -> SubnetConfig:
        stages = {}
        for name in STAGES:
            ch = self.stages[name]
            attn = prefer_attn if prefer_attn in ch.attn else ch.attn[0]
            if name == "middle":
                attn = "full"
            stages[name] = StageConfig(
                width=pick(ch.width), depth=pick(ch.depth), ffn_ratio=pick(ch.ffn_ratio),
                attn=attn, radius=pick(ch.radius) if attn in LOCAL_ATTNS else 0,
            )
        return SubnetConfig(**stages)

    def preset(self, name: str) -> SubnetConfig:
        """SnapGen++'s presets: one width everywhere, full depth, the paper's FFN ratios, ASSA r=1."""
        if name not in PRESET_WIDTHS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESET_WIDTHS)}")
        width = PRESET_WIDTHS[name]
        stages = {}
        for stage in STAGES:
            ch = self.stages[stage]
            if width not in ch.width:
                raise ValueError(f"preset {name!r} needs width {width} in {stage}.width {list(ch.width)}")
            attn: AttnKind = "full" if stage == "middle" else "assa"
            stages[stage] = StageConfig(
                width=width, depth=max(ch.depth), ffn_ratio=ch.preset_ffn_ratio, attn=attn,
                radius=min(ch.radius) if attn == "assa" else 0,
            )
        return SubnetConfig(**stages)

    def presets(self) -> dict[str, SubnetConfig]:
        return {name: self.preset(name) for name in PRESET_WIDTHS}

    def size(self) -> int:
        """Number of distinct sub-DiTs in the space."""
        total = 1
        for name in STAGES:
            ch = self.stages[name]
            attn_options = sum(len(ch.radius) if a in LOCAL_ATTNS else 1 for a in ch.attn)
            total *= len(ch.width) * len(ch.depth) * len(ch.ffn_ratio) * attn_options
        return total


_MODEL_KEYS = {
    "resolution", "latent_downsample", "latent_channels", "patch_size", "hidden_size", "head_dim",
    "kv_heads", "time_dim", "text_len", "text_dim", "bna_blocks", "kv_compress",
}
_STAGE_KEYS = {"width", "depth", "ffn_ratio", "attn", "radius", "preset_ffn_ratio"}
_EXPERIMENT_KEYS = {"name", "dataset", "assumptions"}
EXPERIMENT_TABLES: tuple[str, ...] = ("experiment", "model", "space", "train", "vae")
"""Top-level tables of an experiment TOML: `[experiment]`, `[model]` and `[space.*]` are read here,
`[train]` by `hwnas.train.config`, `[vae]` (a latent autoencoder) by the latent data stage."""


def load_space(path: str | Path) -> SearchSpace:
    """Read `[experiment]`, `[model]` and `[space.down|middle|up]` of an experiment TOML.

    The other tables of `EXPERIMENT_TABLES` belong to other stages and are read there; any other
    top-level table, and any unknown key of the tables read here, is an error naming it and the
    nearest known name. Any error names the file and the field.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"{path}: experiment file not found") from None
    return parse_space(text, source=str(path))


def parse_space(text: str, *, source: str = "<experiment>") -> SearchSpace:
    """`load_space` on the text of an experiment TOML (e.g. one stored in a checkpoint)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from None
    try:
        return _space_from_dict(raw)
    except (KeyError, TypeError, ValueError) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        raise ValueError(f"{source}: {msg}") from None


def _space_from_dict(raw: dict[str, Any]) -> SearchSpace:
    check_keys(raw, EXPERIMENT_TABLES)
    exp = _table(raw, "experiment")
    check_keys(exp, _EXPERIMENT_KEYS, where="experiment")
    model = _table(raw, "model")
    check_keys(model, _MODEL_KEYS, where="model")
    missing = _MODEL_KEYS - set(model)
    if missing:
        raise ValueError(f"[model] is missing {sorted(missing)}")
    space = _table(raw, "space")
    check_keys(space, STAGES, where="space")
    stages: dict[Stage, StageChoices] = {}
    for name in STAGES:
        part = _table(space, name, prefix="space.")
        check_keys(part, _STAGE_KEYS, where=f"space.{name}")
        try:
            stages[name] = StageChoices(
                width=tuple(float(w) for w in part["width"]),
                depth=tuple(int(d) for d in part["depth"]),
                ffn_ratio=tuple(int(r) for r in part["ffn_ratio"]),
                attn=tuple(part.get("attn", ["full"] if name == "middle" else list(SPARSE_ATTN))),
                radius=tuple(int(r) for r in part.get("radius", [])),
                preset_ffn_ratio=int(part["preset_ffn_ratio"]),
            )
        except KeyError as exc:
            raise ValueError(f"[space.{name}] is missing {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ValueError(f"[space.{name}] {exc}") from None
    for key in ("name", "dataset"):
        if not isinstance(exp.get(key), str):
            raise ValueError(f"[experiment] needs a string {key!r}")
    check_name(exp["name"], what="[experiment] name")
    return SearchSpace(
        name=exp["name"], dataset=exp["dataset"], stages=stages,
        assumptions=str(exp.get("assumptions", "")), **{k: model[k] for k in _MODEL_KEYS},
    )


def _table(raw: dict[str, Any], key: str, *, prefix: str = "") -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"missing table [{prefix}{key}]")
    return value


def load_config(path: str | Path) -> SubnetConfig:
    """Read a `SubnetConfig` from a JSON file; errors name the file."""
    path = Path(path)
    try:
        return SubnetConfig.from_json(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: config file not found") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


NAMED_CONFIGS: tuple[str, ...] = (*PRESET_WIDTHS, "largest", "smallest")
"""The sub-DiTs `resolve_config` knows by name: SnapGen++'s presets and the two extremes of a space."""


def resolve_config(space: SearchSpace, text: str) -> SubnetConfig:
    """The sub-DiT that `text` names, checked against `space`: a preset (tiny|small|full), largest or
    smallest, the id of one of those, inline SubnetConfig JSON (`{...}`), or a JSON file. Raises
    ValueError that quotes `text` and lists what it could have been."""
    text = text.strip()
    if text.startswith("{"):
        cfg = SubnetConfig.from_json(text)
    elif text.endswith(".json") or Path(text).is_file():
        cfg = load_config(text)
    elif text in NAMED_CONFIGS:
        cfg = _named_config(space, text)
    else:
        by_id = {}
        for name in NAMED_CONFIGS:
            try:
                by_id[_named_config(space, name).id] = name
            except ValueError:  # a preset this space cannot express has no id here either
                continue
        if text not in by_id:
            raise ValueError(f"unknown config {text!r}: not one of {', '.join(NAMED_CONFIGS)}, the id of one of "
                             f"those, config JSON, nor a JSON file")
        cfg = _named_config(space, by_id[text])
    space.validate(cfg)
    return cfg


def _named_config(space: SearchSpace, name: str) -> SubnetConfig:
    if name == "largest":
        return space.largest()
    return space.smallest() if name == "smallest" else space.preset(name)

