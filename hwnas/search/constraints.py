"""Constraints beyond latency: parameters, size on disk and peak memory of a sub-DiT. Pure: no I/O, no torch.

    bounds = parse_bounds(max_params="300M", max_size="150MB", max_memory="1.2GB")
    fp = footprint(cfg, space, precision="fp16")   # Footprint(params, size_bytes, memory_bytes)
    fp.violations(bounds)                           # {"params_over_max": -0.4, ...}; feasible where all <= 0

Units: sizes are bytes, written with decimal (kB, MB, GB = 1e3, 1e6, 1e9) or binary (KiB, MiB,
GiB) prefixes; parameter counts take K, M, B (= G, billion) suffixes. A unit mistake (bytes for a
count, a count for a size, megabits `Mb` for megabytes) is a ValueError that quotes the value.

Peak memory of one denoising step, at the precision's weight bits and activation bytes
(`hwnas.cost.PRECISION_WEIGHT_BITS`, `PRECISION_ACT_BYTES`): all weights, plus the largest live
activation set over the step's ops in execution order. An op's live set is every main tensor it
reads or writes (`hwnas.cost.op_activation_elements`: an upper bound, all counted live at once;
attention scores fused, not materialised), plus what is held across it: the text tokens, the
timestep modulation vectors and the Down outputs still waiting for their Up block (U-ViT long
skips, freed after their last use, as a compiled graph frees them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from hwnas.cost import PRECISION_ACT_BYTES, PRECISION_WEIGHT_BITS, count_params, op_activation_elements, ops
from hwnas.space import SearchSpace, SubnetConfig

_NUMBER = r"[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_VALUE_RE = re.compile(rf"^\s*(?P<value>{_NUMBER})\s*(?P<unit>[A-Za-z]*)\s*$")
COUNT_UNITS: dict[str, int] = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
"""Suffixes of a parameter count, case-insensitive (B and G: billion, as in "0.3B")."""
BYTE_UNITS: dict[str, int] = {
    "": 1, "B": 1, "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}
"""Units of a size in bytes (a bare number is bytes)."""
_PREFIX_NAMES = {"k": "kilo", "m": "mega", "g": "giga", "t": "tera"}
FOOTPRINT_MODEL = ("hwnas.cost at the precision's weight bits and activation bytes: size = weights; peak memory = "
                   "weights + the largest live activation set of one denoising step (every tensor an op reads or "
                   "writes, plus held text tokens, modulation vectors and pending long skips; attention scores "
                   "fused, not materialised)")
"""How `footprint` counts, in words (for reports)."""
CONSTRAINT_NAMES = {"max_params": "params_over_max", "max_size_bytes": "size_over_max",
                    "max_memory_bytes": "memory_over_max"}
"""Optuna constraint name per bound; its value is the relative overshoot `value / bound - 1` (<= 0: within)."""


@dataclass(frozen=True)
class Bounds:
    """Upper bounds on a sub-DiT beyond latency; None: unbounded."""

    max_params: int | None = None
    max_size_bytes: int | None = None
    """Bytes of the weights on disk at the search's precision."""
    max_memory_bytes: int | None = None
    """Peak bytes of weights plus activations of one denoising step at the search's precision."""

    def __post_init__(self) -> None:
        for name in CONSTRAINT_NAMES:
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")

    @property
    def active(self) -> dict[str, int]:
        """The bounds that are set, by field name."""
        return {name: getattr(self, name) for name in CONSTRAINT_NAMES if getattr(self, name) is not None}

    def describe(self) -> list[str]:
        """One phrase per set bound (`params <= 300M`), for reports."""
        out = []
        if self.max_params is not None:
            out.append(f"params <= {format_count(self.max_params)}")
        if self.max_size_bytes is not None:
            out.append(f"size on disk <= {format_bytes(self.max_size_bytes)}")
        if self.max_memory_bytes is not None:
            out.append(f"peak memory <= {format_bytes(self.max_memory_bytes)}")
        return out


@dataclass(frozen=True)
class Footprint:
    """What a sub-DiT costs beyond time, at one precision (see the module docstring for memory)."""

    params: int
    size_bytes: int
    memory_bytes: int

    def value(self, bound: str) -> int:
        """The quantity a bound (`max_params`, `max_size_bytes`, `max_memory_bytes`) limits."""
        return {"max_params": self.params, "max_size_bytes": self.size_bytes,
                "max_memory_bytes": self.memory_bytes}[bound]

    def violations(self, bounds: Bounds) -> dict[str, float]:
        """Optuna constraint values of the set bounds: `value / bound - 1` (<= 0 within the bound)."""
        return {CONSTRAINT_NAMES[name]: self.value(name) / bound - 1.0 for name, bound in bounds.active.items()}

    def within(self, bounds: Bounds) -> bool:
        return all(self.value(name) <= bound for name, bound in bounds.active.items())


# Parsing ----------------------------------------------------------------------------------------


def _whole(value: float, text: str, *, option: str, hint: str) -> int:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{option} {text!r}: must be positive")
    whole = round(value)
    if abs(value - whole) > 1e-6 * max(1.0, value):
        raise ValueError(f"{option} {text!r} is not a whole number; {hint}")
    return int(whole)


def parse_count(text: str, *, option: str = "--max-params") -> int:
    """A parameter count from `300M`, `0.3B`, `300000000` (K/M/B/G suffixes, case-insensitive).

    Raises ValueError quoting `text` (with `option` in front) for a byte unit (`300MB`), an unknown
    suffix, a fraction of a parameter or a count that is not positive.
    """
    match = _VALUE_RE.match(str(text))
    if match is None:
        raise ValueError(f"{option} {text!r}: cannot parse; write a parameter count such as 300M, 0.3B or 300000000")
    value, unit = float(match["value"]), match["unit"]
    if unit.lower() in ("kb", "mb", "gb", "tb", "kib", "mib", "gib", "tib"):
        raise ValueError(f"{option} {text!r} is a size in bytes, but {option} counts parameters: write "
                         f"{match['value']}{unit[0].upper()} (or use --max-size {match['value']}{unit[0].upper()}B)")
    if unit.lower() not in COUNT_UNITS:
        raise ValueError(f"{option} {text!r}: unknown unit {unit!r}; write a parameter count such as 300M, 0.3B "
                         f"or 300000000")
    return _whole(value * COUNT_UNITS[unit.lower()], text, option=option,
                  hint=f"did you mean {match['value']}M or {match['value']}B?")


def parse_bytes(text: str, *, option: str = "--max-size") -> int:
    """A size in bytes from `150MB`, `1.2GB`, `512MiB` or a bare number of bytes.

    Raises ValueError quoting `text` (with `option` in front) for a count suffix without B (`150M`),
    bits (`150Mb`), an unknown unit or a size that is not positive.
    """
    match = _VALUE_RE.match(str(text))
    if match is None:
        raise ValueError(f"{option} {text!r}: cannot parse; write a size such as 150MB, 1.2GB or 512MiB")
    value, unit = float(match["value"]), match["unit"]
    num = match["value"]
    if unit not in BYTE_UNITS:
        prefix = unit[:1].lower()
        as_bytes = f"{num}{'k' if prefix == 'k' else prefix.upper()}B"
        if re.fullmatch(r"[kKmMgGtT]i?b", unit):
            raise ValueError(f"{option} {text!r} reads as {_PREFIX_NAMES[prefix]}bits; write {as_bytes} for bytes")
        if prefix in _PREFIX_NAMES and len(unit) == 1:
            raise ValueError(f"{option} {text!r} has no byte unit (a count?): write {as_bytes} for bytes")
        raise ValueError(f"{option} {text!r}: unknown unit {unit!r}; use B, kB, MB, GB, KiB, MiB or GiB "
                         f"(e.g. 150MB, 1.2GB)")
    return _whole(value * BYTE_UNITS[unit], text, option=option, hint=f"write bytes, or {num}MB")


def parse_bounds(*, max_params: str | None = None, max_size: str | None = None,
                 max_memory: str | None = None) -> Bounds:
    """`Bounds` from the command-line texts (None: unbounded); a ValueError names the option and value."""
    return Bounds(max_params=parse_count(max_params, option="--max-params") if max_params is not None else None,
                  max_size_bytes=parse_bytes(max_size, option="--max-size") if max_size is not None else None,
                  max_memory_bytes=parse_bytes(max_memory, option="--max-memory") if max_memory is not None else None)


def format_count(n: float) -> str:
    """`312_500_000` -> `312.5M`."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{unit}"
    return f"{n:.4g}"


def format_bytes(n: float) -> str:
    """`150_000_000` -> `150 MB` (decimal prefixes, as `parse_bytes` reads them)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n:.0f} B"


# Cost --------------------------------------------------------------------------------------------


def weight_bits(precision: str) -> int:
    if precision not in PRECISION_WEIGHT_BITS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {list(PRECISION_WEIGHT_BITS)}")
    return PRECISION_WEIGHT_BITS[precision]


def peak_activation_elements(cfg: SubnetConfig, space: SearchSpace) -> int:
    """Largest live activation set (elements) over the ops of one denoising step (module docstring)."""
    step = ops(cfg, space)
    held_always = space.text_len * space.text_dim + sum(op.chunks * op.dim for op in step if op.kind == "stage_mod")
    down = [i for i, op in enumerate(step) if op.kind == "down_block"]
    up = [i for i, op in enumerate(step) if op.kind == "up_block"]
    # Down block i's output is Up block (depth_down - 1 - i)'s skip, where that Up block exists
    skips = []  # (produced at op index, last used at op index, elements)
    for i, k in enumerate(down):
        j = len(down) - 1 - i
        if j < len(up):
            skips.append((k, up[j], step[k].tokens * step[k].dim))
    peak = 0
    for k, op in enumerate(step):
        # a skip produced by the op right before is this op's input, counted in its own elements
        held = sum(e for made, used, e in skips if made < k < used and made != k - 1)
        peak = max(peak, op_activation_elements(op) + held)
    return peak + held_always


def footprint(cfg: SubnetConfig, space: SearchSpace, *, precision: str) -> Footprint:
    """Parameters, bytes on disk and peak memory of one denoising step of `cfg` at `precision`."""
    params = count_params(cfg, space)
    size = int(params * weight_bits(precision) / 8)
    act = peak_activation_elements(cfg, space) * PRECISION_ACT_BYTES[precision]
    return Footprint(params=params, size_bytes=size, memory_bytes=size + act)


def smallest_footprint(candidates: Iterable[SubnetConfig], space: SearchSpace, *,
                       precision: str) -> dict[str, tuple[int, SubnetConfig]]:
    """Per bound name, the smallest value over `candidates` and the sub-DiT that has it.

    Pass the space's minimal sub-DiTs (`hwnas.search.budget.fastest_candidates`: the smallest width,
    depth and FFN ratio with every attention choice); every quantity here grows with width, depth and
    FFN ratio, so their minimum is the space's."""
    best: dict[str, tuple[int, SubnetConfig]] = {}
    for cfg in candidates:
        fp = footprint(cfg, space, precision=precision)
        for name in CONSTRAINT_NAMES:
            if name not in best or fp.value(name) < best[name][0]:
                best[name] = (fp.value(name), cfg)
    return best


class BoundError(ValueError):
    """A bound no sub-DiT can meet (below the smallest) or that cannot mean what it says (above the RAM)."""


_OPTION = {"max_params": "--max-params", "max_size_bytes": "--max-size", "max_memory_bytes": "--max-memory"}
_WHAT = {"max_params": "parameters", "max_size_bytes": "bytes on disk", "max_memory_bytes": "bytes of peak memory"}


def _fmt(name: str, value: float) -> str:
    return format_count(value) if name == "max_params" else format_bytes(value)


def _at_least(name: str, value: int) -> str:
    """`value` rounded up to 4 significant digits, as an option value (`45.35M`, `90.69MB`) >= `value`."""
    step = 10 ** max(0, math.floor(math.log10(value)) - 3)
    up = math.ceil(value / step) * step
    return format_count(up) if name == "max_params" else format_bytes(up).replace(" ", "")


def check_bounds(bounds: Bounds, smallest: dict[str, tuple[int, SubnetConfig]], *, precision: str,
                 experiment: str, ram_bytes: float | None = None, device: str = "",
                 ram_source: str = "") -> None:
    """Refuse a bound below the smallest sub-DiT's value (naming the smallest achievable value) or a
    `max_memory_bytes` above the device's RAM (`ram_bytes`, where the profile gives it).

    Raises BoundError, one line.
    """
    for name, bound in bounds.active.items():
        least, cfg = smallest[name]
        if bound < least:
            at = "" if name == "max_params" else f" at {precision}"
            raise BoundError(f"{_OPTION[name]} {_fmt(name, bound)} is below the smallest sub-DiT of {experiment} "
                             f"({cfg.describe()}): the smallest achievable is {least:,} {_WHAT[name]}{at}; give "
                             f"{_OPTION[name]} {_at_least(name, least)} or more")
    if bounds.max_memory_bytes is not None and ram_bytes is not None and bounds.max_memory_bytes > ram_bytes:
        raise BoundError(f"--max-memory {format_bytes(bounds.max_memory_bytes)} exceeds the RAM of "
                         f"{device or 'the device'}, {format_bytes(ram_bytes)} = {ram_bytes / 2**30:g} GiB "
                         f"({ram_source}), so it bounds nothing; check its unit "
                         f"(the smallest sub-DiT needs {format_bytes(smallest['max_memory_bytes'][0])} at {precision})")


def fastest_within(candidates: Iterable[SubnetConfig], space: SearchSpace, *, precision: str, bounds: Bounds,
                   latency_ms: Callable[[SubnetConfig], float], budget_ms: float) -> SubnetConfig:
    """The fastest of `candidates` (by `latency_ms`, the bound the search constrains) within `budget_ms`
    and `bounds`. Pass the space's minimal sub-DiTs (`smallest_footprint`): where none of them meets
    both, no sub-DiT does.

    Raises BoundError naming the first bound that no sub-DiT within the budget meets, and the least
    value those sub-DiTs need.
    """
    timed = sorted(((latency_ms(c), c) for c in candidates), key=lambda t: t[0])
    in_budget = [c for ms, c in timed if ms <= budget_ms]
    for cfg in in_budget:
        if footprint(cfg, space, precision=precision).within(bounds):
            return cfg
    least = smallest_footprint(in_budget, space, precision=precision)
    for name, bound in bounds.active.items():
        if least[name][0] > bound:
            raise BoundError(f"no sub-DiT meets the budget and {_OPTION[name]} {_fmt(name, bound)} together: those "
                             f"within the budget need at least {_fmt(name, least[name][0])} {_WHAT[name]}"
                             f"{'' if name == 'max_params' else ' at ' + precision}; give {_OPTION[name]} "
                             f"{_at_least(name, least[name][0])} or more, or a larger budget")
    raise BoundError(f"no sub-DiT meets the budget and {', '.join(bounds.describe())} together; loosen one of them")
