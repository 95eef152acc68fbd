"""Latency budgets: parsing (`1.8s`, `1800ms`, `1.8`) and the feasibility check done before any search.

Pure: no I/O, no torch. The feasibility check needs only the LUT, so an impossible budget is
answered in well under a second, before the supernet is even loaded.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, replace

from hwnas.latency import Guidance, LatencyTable, Precision, predict_latency_ms
from hwnas.space import LOCAL_ATTNS, PRESET_WIDTHS, SearchSpace, StageConfig, SubnetConfig

BARE_SECONDS_MAX = 60.0
"""Largest bare number (no unit) read as seconds. As milliseconds it would be a budget no text-to-image
pipeline meets (one VAE decode alone takes longer), so the reading is unambiguous. Above it both readings
are plausible (a phone in ms, a Raspberry Pi in s), and a bare number is refused."""

_BUDGET_RE = re.compile(r"^\s*(?P<value>[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(?P<unit>ms|s)?\s*$")


def parse_budget_ms(text: str) -> float:
    """A latency budget in milliseconds from `1.8s`, `1800ms`, or a bare number of seconds up to
    `BARE_SECONDS_MAX` (`1.8`).

    Raises ValueError quoting `text` for anything else: a bare number above `BARE_SECONDS_MAX`
    (seconds or milliseconds?), zero, negative or non-finite budgets.
    """
    match = _BUDGET_RE.match(str(text))
    if match is None:
        raise ValueError(f"cannot parse latency budget {text!r}: use seconds or milliseconds, e.g. 1.8s, "
                         f"1800ms or 1.8 (seconds)")
    value = float(match["value"])
    if match["unit"] is None and math.isfinite(value) and value > BARE_SECONDS_MAX:
        bare = match["value"].lstrip("+")
        as_ms = f"{bare}ms" if format_ms(value) == f"{value:g}ms" else f"{bare}ms (= {format_ms(value)})"
        raise ValueError(f"latency budget {bare}: seconds or milliseconds? write {as_ms} or {bare}s "
                         f"(a bare number is read as seconds up to {BARE_SECONDS_MAX:g} only)")
    budget_ms = value if match["unit"] == "ms" else value * 1000.0
    if not math.isfinite(budget_ms) or budget_ms <= 0:
        raise ValueError(f"latency budget must be positive, got {text!r}")
    return budget_ms


def format_ms(latency_ms: float) -> str:
    """`1800.0` -> `1.8s`, `950.0` -> `950ms` (for run-directory names and messages)."""
    if latency_ms >= 1000 and latency_ms % 100 == 0:
        return f"{latency_ms / 1000:g}s"
    return f"{latency_ms:g}ms"


@dataclass(frozen=True)
class Feasibility:
    """Is any sub-DiT of the space within `budget_ms`? With the fastest one and the nearest preset."""

    budget_ms: float
    feasible: bool
    fastest: SubnetConfig
    fastest_ms: float
    nearest_preset: str
    nearest_preset_ms: float
    preset_ms: dict[str, float]
    confidence: float | None = None
    """Latencies here are one-sided upper bounds at this confidence; None: point predictions."""

    def message(self, *, device: str, steps: int, precision: str) -> str:
        head = "is feasible:" if self.feasible else "cannot be met:"
        bound = "" if self.confidence is None else f" (upper bounds at {self.confidence:.0%} confidence)"
        return (f"budget {format_ms(self.budget_ms)} on {device} ({steps} steps, {precision}) {head} the fastest "
                f"achievable latency is {self.fastest_ms:,.0f} ms{bound} (sub-DiT {self.fastest.describe()}, id "
                f"{self.fastest.id}); the closest preset is {self.nearest_preset!r} at "
                f"{self.nearest_preset_ms:,.0f} ms")


def fastest_candidates(space: SearchSpace) -> list[SubnetConfig]:
    """The smallest width/depth/FFN ratio everywhere, with every attention kind and radius of Down/Up.

    Latency is monotone in width, depth and FFN ratio; the attention kind is not ordered, so every
    kind/radius pair of the outer stages is tried (at most a few dozen predictions).
    """
    base = space.smallest()
    options: dict[str, list[StageConfig]] = {}
    for name in ("down", "up"):
        ch = space.stages[name]
        stage = base.stage(name)
        opts: list[StageConfig] = []
        for attn in ch.attn:
            radii = ch.radius if attn in LOCAL_ATTNS else (0,)
            opts.extend(replace(stage, attn=attn, radius=r) for r in radii)
        options[name] = opts or [stage]
    return [SubnetConfig(down=d, middle=base.middle, up=u)
            for d, u in itertools.product(options["down"], options["up"])]


def check_budget(budget_ms: float, *, table: LatencyTable, space: SearchSpace, steps: int,
                 precision: Precision, confidence: float | None = None,
                 guidance: Guidance = "distilled") -> Feasibility:
    """The fastest achievable latency on the table's device, and whether `budget_ms` admits it.

    With `confidence`, latencies are one-sided `confidence` upper bounds (as the search constrains them)."""
    def latency_ms(cfg: SubnetConfig) -> float:
        pred = predict_latency_ms(cfg, table, steps=steps, precision=precision, space=space, guidance=guidance)
        return pred.total_ms if confidence is None else pred.upper_ms(confidence)

    best_cfg, best_ms = None, math.inf
    for cfg in fastest_candidates(space):
        ms = latency_ms(cfg)
        if ms < best_ms:
            best_cfg, best_ms = cfg, ms
    assert best_cfg is not None
    preset_ms = {}
    for name in PRESET_WIDTHS:
        try:
            preset = space.preset(name)
        except ValueError:  # the space lacks the preset's width
            continue
        preset_ms[name] = latency_ms(preset)
    nearest = min(preset_ms, key=lambda n: abs(preset_ms[n] - best_ms)) if preset_ms else ""
    return Feasibility(budget_ms=budget_ms, feasible=best_ms <= budget_ms, fastest=best_cfg, fastest_ms=best_ms,
                       nearest_preset=nearest, nearest_preset_ms=preset_ms.get(nearest, math.nan),
                       preset_ms=preset_ms, confidence=confidence)
