"""How a fresh study starts: from the feasible region (the LUT is nearly free), or plainly.

Uniform sampling puts most of a tight budget's first generation over the budget, and a constrained
sampler learns little from trials it cannot score. So with the feasible start a fresh study
enqueues `startup_trials` sub-DiTs whose predicted latency bound fits: the fastest sub-DiT, then
uniform samples kept only if they fit (rejection sampling, at most `max_draws` draws), then, where
the feasible region is too small for that, mutations of the feasible ones found so far (at most
`max_draws` more). The random sampler has no startup phase, so for it the feasible start applies to
every trial: `FeasibleRandomSampler` draws uniformly among the sub-DiTs that fit. The plain start
enqueues the fastest sub-DiT only (always feasible) and leaves the rest to the sampler.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial

from hwnas.latency import LatencyPrediction
from hwnas.search.objective import config_from_params, params_from_config
from hwnas.search.study import SamplerName, StartName, make_sampler
from hwnas.space import STAGES, SearchSpace, StageConfig, SubnetConfig

STARTUP_TRIALS: dict[SamplerName, int] = {"tpe": 10, "gp": 10}
"""Random startup trials of the model-based samplers (`make_sampler`); NSGA-II's and NSGA-III's is their
population."""


def startup_trials(sampler: SamplerName, *, population_size: int) -> int:
    """How many trials `sampler` draws before its population or model takes over; the random sampler
    gets 1, the fastest sub-DiT (`FeasibleRandomSampler` keeps the rest of its trials feasible)."""
    if sampler == "random":
        return 1
    if sampler in ("nsga2", "nsga3"):
        return population_size
    return STARTUP_TRIALS[sampler]


def fits_budget(latency: Callable[[SubnetConfig], LatencyPrediction], *, budget_ms: float,
                confidence: float | None) -> Callable[[SubnetConfig], bool]:
    """Is a sub-DiT's latency bound within `budget_ms`? The bound is the one-sided `confidence` upper
    bound (`LatencyPrediction.upper_ms`), or the point prediction where `confidence` is None (as the
    trial's constraint, `run_trial`)."""

    def fits(cfg: SubnetConfig) -> bool:
        pred = latency(cfg)
        return (pred.total_ms if confidence is None else pred.upper_ms(confidence)) <= budget_ms

    return fits


def feasible_start(space: SearchSpace, latency: Callable[[SubnetConfig], LatencyPrediction], *,
                   fastest: SubnetConfig, budget_ms: float, confidence: float | None, n: int, seed: int,
                   max_draws: int = 20_000,
                   within_bounds: Callable[[SubnetConfig], bool] | None = None) -> list[SubnetConfig]:
    """Up to `n` distinct sub-DiTs whose latency bound is within `budget_ms` (`fits_budget`), `fastest` first.

    `within_bounds` (the constraints beyond latency, `hwnas.search.constraints`) must hold too where
    given; `fastest` must then be the fastest sub-DiT that meets them. The same `seed` gives the same
    list. Fewer than `n` only where neither stage finds more within `max_draws` draws.
    """
    rng = random.Random(seed)
    in_budget = fits_budget(latency, budget_ms=budget_ms, confidence=confidence)

    def fits(cfg: SubnetConfig) -> bool:
        return in_budget(cfg) and (within_bounds is None or within_bounds(cfg))

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


def feasible_set(space: SearchSpace, fits: Callable[[SubnetConfig], bool]) -> list[SubnetConfig]:
    """Every sub-DiT of `space` that `fits` accepts, without predicting them all.

    Relies on latency being monotone in each stage's width, depth and FFN ratio (`fastest_candidates`
    relies on it too): for each attention kind and radius of every stage, a breadth-first walk from
    the smallest width/depth/FFN ratio steps one choice up at a time and only from sub-DiTs that fit,
    so it predicts the feasible sub-DiTs and their infeasible upper neighbours only. In the order found.
    """
    numeric = ("width", "depth", "ffn_ratio")
    levels = [sorted(getattr(space.stages[st], k)) for st in STAGES for k in numeric]  # 9 axes
    attn_options = [[(a, r) for a in space.stages[st].attn
                     for r in (space.stages[st].radius if a in ("assa", "bna") else (0,))] for st in STAGES]
    out: list[SubnetConfig] = []
    for attn in itertools.product(*attn_options):
        def config(index: tuple[int, ...], attn: tuple[tuple[str, int], ...] = attn) -> SubnetConfig:
            stages = {st: StageConfig(width=levels[3 * i][index[3 * i]], depth=levels[3 * i + 1][index[3 * i + 1]],
                                      ffn_ratio=levels[3 * i + 2][index[3 * i + 2]], attn=attn[i][0],  # type: ignore[arg-type]
                                      radius=attn[i][1]) for i, st in enumerate(STAGES)}
            return SubnetConfig(**stages)

        start = (0,) * len(levels)
        seen, todo = {start}, deque([start])
        while todo:
            index = todo.popleft()
            cfg = config(index)
            if not fits(cfg):
                continue
            out.append(cfg)
            for axis in range(len(levels)):
                if index[axis] + 1 < len(levels[axis]):
                    up = index[:axis] + (index[axis] + 1,) + index[axis + 1:]
                    if up not in seen:
                        seen.add(up)
                        todo.append(up)
    return out


def first_trials(space: SearchSpace, latency: Callable[[SubnetConfig], LatencyPrediction], *, start: StartName,
                 sampler: SamplerName, fastest: SubnetConfig, budget_ms: float, confidence: float | None,
                 population_size: int, seed: int,
                 within_bounds: Callable[[SubnetConfig], bool] | None = None) -> list[SubnetConfig]:
    """The sub-DiTs a fresh study enqueues: the fastest only (`plain`), or the sampler's startup trials,
    all predicted within the budget and `within_bounds` (`feasible`, `feasible_start`)."""
    if start == "plain":
        return [fastest]
    return feasible_start(space, latency, fastest=fastest, budget_ms=budget_ms, confidence=confidence,
                          n=startup_trials(sampler, population_size=population_size), seed=seed,
                          within_bounds=within_bounds)


class FeasibleRandomSampler(optuna.samplers.BaseSampler):
    """Uniform random sub-DiTs (`SearchSpace.sample`) redrawn until `fits` accepts one: rejection
    sampling against the LUT, so every trial is predicted within the budget.

    Trial k of a study draws from its own generator seeded by (`seed`, k), so a resumed study proposes
    what an uninterrupted one would have. After `max_draws` rejected draws the last draw is proposed
    (the trial's constraint then marks it infeasible).
    """

    def __init__(self, space: SearchSpace, fits: Callable[[SubnetConfig], bool], *, seed: int,
                 max_draws: int = 100_000) -> None:
        self._space, self._fits, self._seed, self._max_draws = space, fits, seed, max_draws
        self._proposal: tuple[int, dict[str, Any]] | None = None  # (trial number, its parameters)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        """The trial's sub-DiT is drawn at its first parameter; the others read from it."""
        if self._proposal is None or self._proposal[0] != trial.number:
            self._proposal = (trial.number, params_from_config(self.draw(trial.number), self._space))
        return self._proposal[1][param_name]

    def draw(self, number: int) -> SubnetConfig:
        """Trial `number`'s sub-DiT."""
        rng = random.Random(self._seed * 1_000_003 + number)
        cfg = self._space.sample(rng)
        for _ in range(self._max_draws - 1):
            if self._fits(cfg):
                break
            cfg = self._space.sample(rng)
        return cfg


class _FeasibleChildren:
    """A genetic sampler whose children are new sub-DiTs predicted within the budget: a child is bred as
    the sampler breeds it (crossover, then mutation: a mutated choice drawn uniformly, as its independent
    sampler would) and bred again while `fits` rejects it or the study already has its sub-DiT (a repeat
    costs a trial and teaches nothing), at most `tries` times; then a uniform draw from the feasible
    region (`FeasibleRandomSampler`). Generation 0 (no parents yet) is left to the start."""

    def __init__(self, space: SearchSpace, fits: Callable[[SubnetConfig], bool], *, seed: int, tries: int = 50,
                 **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)  # type: ignore[call-arg]
        self._space, self._fits, self._seed, self._tries = space, fits, seed, tries
        self._fallback_draws = FeasibleRandomSampler(space, fits, seed=seed)
        self._ids: dict[int, str] = {}  # trial number -> sub-DiT id, of the study's trials seen so far

    def _study_ids(self, study: optuna.Study) -> set[str]:
        running = set()
        for t in study.get_trials(deepcopy=False):
            if t.number in self._ids or not t.params:
                continue
            try:
                config_id = config_from_params(t.params, self._space).id
            except KeyError:  # another worker's running trial has not suggested every choice yet
                continue
            if t.state.is_finished():
                self._ids[t.number] = config_id
            else:
                running.add(config_id)
        return set(self._ids.values()) | running

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        rng = random.Random(self._seed * 1_000_003 + trial.number)
        seen = self._study_ids(study)
        for _ in range(self._tries):
            params: dict[str, Any] = super().sample_relative(study, trial, search_space)  # type: ignore[misc]
            if not params:
                return params
            full = {name: params[name] if name in params else rng.choice(dist.choices)  # type: ignore[attr-defined]
                    for name, dist in search_space.items()}
            cfg = config_from_params(full, self._space)
            if cfg.id not in seen and self._fits(cfg):
                return full
        return params_from_config(self._fallback_draws.draw(trial.number), self._space)


class FeasibleNSGAIISampler(_FeasibleChildren, optuna.samplers.NSGAIISampler):
    """NSGA-II whose children are predicted within the budget (`_FeasibleChildren`)."""


class FeasibleNSGAIIISampler(_FeasibleChildren, optuna.samplers.NSGAIIISampler):
    """NSGA-III whose children are predicted within the budget (`_FeasibleChildren`)."""


def search_sampler(sampler: SamplerName, *, start: StartName, space: SearchSpace,
                   fits: Callable[[SubnetConfig], bool], seed: int,
                   population_size: int) -> optuna.samplers.BaseSampler:
    """The search's sampler: Optuna's `sampler` (`make_sampler`), except that with the feasible start the
    random sampler draws every trial from the feasible region (`FeasibleRandomSampler`) and NSGA-II and
    NSGA-III breed only children predicted within the budget (`_FeasibleChildren`)."""
    if start == "feasible" and sampler == "random":
        return FeasibleRandomSampler(space, fits, seed=seed)
    if start == "feasible" and sampler == "nsga2":
        return FeasibleNSGAIISampler(space, fits, seed=seed, population_size=population_size)
    if start == "feasible" and sampler == "nsga3":
        return FeasibleNSGAIIISampler(space, fits, seed=seed, population_size=population_size)
    return make_sampler(sampler, seed=seed, population_size=population_size)
