"""The first generation of a fresh study, drawn from the feasible region (the LUT is nearly free).

Uniform sampling puts most of a tight budget's first generation over the budget, and a constrained
sampler learns little from trials it cannot score. So a fresh study enqueues `startup_trials`
sub-DiTs whose predicted latency bound fits: the fastest sub-DiT, then uniform samples kept only if
they fit (rejection sampling, at most `max_draws` draws), then, where the feasible region is too
small for that, mutations of the feasible ones found so far (at most `max_draws` more).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from hwnas.latency import LatencyPrediction
from hwnas.search.study import SamplerName
from hwnas.space import SearchSpace, SubnetConfig

STARTUP_TRIALS: dict[SamplerName, int] = {"tpe": 10, "gp": 10}
"""Random startup trials of the model-based samplers (`make_sampler`); NSGA-II's is its population."""


def startup_trials(sampler: SamplerName, *, population_size: int) -> int:
    """How many trials `sampler` draws before its population or model takes over; the random sampler
    (the baseline) gets 1, the fastest sub-DiT only, so that it stays plain random sampling."""
    if sampler == "random":
        return 1
    if sampler == "nsga2":
        return population_size
    return STARTUP_TRIALS[sampler]


def feasible_start(space: SearchSpace, latency: Callable[[SubnetConfig], LatencyPrediction], *,
                   fastest: SubnetConfig, budget_ms: float, confidence: float | None, n: int, seed: int,
                   max_draws: int = 2000,
                   within_bounds: Callable[[SubnetConfig], bool] | None = None) -> list[SubnetConfig]:
    """Up to `n` distinct sub-DiTs whose latency bound is within `budget_ms`, `fastest` first.

    `within_bounds` (the constraints beyond latency, `hwnas.search.constraints`) must hold too where
    given; `fastest` must then be the fastest sub-DiT that meets them.

    The bound is the one-sided `confidence` upper bound (`LatencyPrediction.upper_ms`), or the point
    prediction where `confidence` is None (the trial's constraint, `run_trial`). The same `seed`
    gives the same list. Fewer than `n` only where neither stage finds more within `max_draws` draws.
    """
    rng = random.Random(seed)

    def fits(cfg: SubnetConfig) -> bool:
        pred = latency(cfg)
        bound = pred.total_ms if confidence is None else pred.upper_ms(confidence)
        return bound <= budget_ms and (within_bounds is None or within_bounds(cfg))

    picked = {fastest.id: fastest}
    draw: Callable[[], SubnetConfig]
    for draw in (lambda: space.sample(rng), lambda: space.mutate(rng.choice(list(picked.values())), rng)):
        for _ in range(max_draws):
            if len(picked) >= n:
                return list(picked.values())
            cfg = draw()
            if cfg.id not in picked and fits(cfg):
                picked[cfg.id] = cfg
    return list(picked.values())[:n]
