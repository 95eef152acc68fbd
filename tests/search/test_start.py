from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from search_tiny import PROFILES

from hwnas.latency import load_profile, load_table, predict_latency_ms
from hwnas.search import config_from_params, prepare, run_search
from hwnas.search.start import feasible_start, startup_trials
from hwnas.space import load_space


def _latency(tiny_env):  # type: ignore[no-untyped-def]
    space = load_space(tiny_env.experiment)
    table = load_table(load_profile("pixel8", profile_dir=PROFILES), space.name, table_dir=tiny_env.tables)
    return space, lambda cfg: predict_latency_ms(cfg, table, steps=4, precision="fp16", space=space)


@pytest.mark.parametrize(("sampler", "population", "expected"), [
    ("nsga2", 16, 16), ("nsga2", 4, 4), ("nsga3", 8, 8), ("tpe", 16, 10), ("gp", 4, 10), ("random", 16, 1),
])
def test_startup_trials(sampler: str, population: int, expected: int) -> None:
    assert startup_trials(sampler, population_size=population) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("confidence", [0.9, None])
def test_feasible_start_fits_and_repeats(tiny_env, confidence: float | None) -> None:  # type: ignore[no-untyped-def]
    space, latency = _latency(tiny_env)
    fastest = space.smallest()
    kw = dict(fastest=fastest, budget_ms=tiny_env.budget_ms, confidence=confidence, n=8, seed=3)
    picked = feasible_start(space, latency, **kw)  # type: ignore[arg-type]
    assert picked[0] == fastest and len(picked) == 8 and len({c.id for c in picked}) == 8
    for cfg in picked:
        pred = latency(cfg)
        assert (pred.total_ms if confidence is None else pred.upper_ms(confidence)) <= tiny_env.budget_ms
    assert feasible_start(space, latency, **kw) == picked  # type: ignore[arg-type]
    assert feasible_start(space, latency, **{**kw, "seed": 4}) != picked  # type: ignore[arg-type]


def test_feasible_start_caps_its_draws(tiny_env) -> None:  # type: ignore[no-untyped-def]
    space, latency = _latency(tiny_env)
    kw = dict(fastest=space.smallest(), budget_ms=tiny_env.budget_ms, confidence=0.9, n=4, seed=0)
    assert feasible_start(space, latency, **kw, max_draws=0) == [space.smallest()]  # type: ignore[arg-type]
    assert len(feasible_start(space, latency, **kw, max_draws=200)) == 4  # type: ignore[arg-type]
    # a budget that only the fastest just fits: never a sub-DiT over it, however few fit
    only = latency(space.smallest()).upper_ms(0.9)
    picked = feasible_start(space, latency, **{**kw, "budget_ms": only})  # type: ignore[arg-type]
    assert picked[0] == space.smallest() and all(latency(c).upper_ms(0.9) <= only for c in picked)


def test_fresh_study_enqueues_a_feasible_first_generation(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    space, _ = _latency(tiny_env)
    settings = tiny_env.settings(population_size=6, sampler="nsga2")
    a = run_search(settings, out=tmp_path / "a", report=False)
    study = optuna.load_study(study_name=a["settings"]["study"], storage=a["settings"]["storage"])
    enqueued = [t for t in study.trials if "fixed_params" in t.system_attrs]
    assert [t.number for t in enqueued] == list(range(6))  # the population, first
    assert config_from_params(enqueued[0].params, space) == prepare(settings).feasibility.fastest
    assert all(t.user_attrs["hwnas"]["feasible"] for t in enqueued)
    # they are NSGA-II's generation 0, so its first offspring are bred from them
    generation = [next(v for k, v in t.system_attrs.items() if k.endswith("NSGAIISampler:generation"))
                  for t in study.trials[:7]]
    assert generation == [0] * 6 + [1]
    # a seeded run repeats, the enqueued trials included
    b = run_search(settings, out=tmp_path / "b", report=False)
    volatile = ["quality_cpu_s", "latency_cpu_s", "worker"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "trials.csv").drop(columns=volatile),
                                  pd.read_csv(tmp_path / "b" / "trials.csv").drop(columns=volatile))
    assert a["best"] == b["best"]
    # resuming (more trials) enqueues nothing new
    run_search(tiny_env.settings(population_size=6, n_trials=14, sampler="nsga2"), out=tmp_path / "a", report=False)
    study = optuna.load_study(study_name=a["settings"]["study"], storage=a["settings"]["storage"])
    assert len(study.trials) == 14 and sum("fixed_params" in t.system_attrs for t in study.trials) == 6


def _study(result):  # type: ignore[no-untyped-def]
    return optuna.load_study(study_name=result["settings"]["study"], storage=result["settings"]["storage"])


def test_plain_start_enqueues_the_fastest_only(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = tiny_env.settings(population_size=6, start="plain")
    study = _study(run_search(settings, out=tmp_path / "p", report=False))
    assert [t.number for t in study.trials if "fixed_params" in t.system_attrs] == [0]
    assert config_from_params(study.trials[0].params, load_space(tiny_env.experiment)) == \
        prepare(settings).feasibility.fastest
    assert study.user_attrs["hwnas_settings"]["start"] == "plain"


@pytest.mark.parametrize("start", ["feasible", "plain"])
def test_random_sampler_draws_from_the_feasible_region_with_the_feasible_start(
        tiny_env, tmp_path: Path, start: str) -> None:  # type: ignore[no-untyped-def]
    res = run_search(tiny_env.settings(sampler="random", start=start, n_trials=16), out=tmp_path / start,
                     report=False)
    study = _study(res)
    assert [t.number for t in study.trials if "fixed_params" in t.system_attrs] == [0]  # the fastest, enqueued
    feasible = [t.user_attrs["hwnas"]["feasible"] for t in study.trials]
    if start == "feasible":  # rejection sampling against the LUT: every proposal fits
        assert all(feasible)
    else:  # plain uniform sampling: a quarter of the way from the fastest to the largest, most do not fit
        assert not all(feasible)


def test_feasible_random_sampler_repeats_across_a_resume(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    whole = _study(run_search(tiny_env.settings(sampler="random", n_trials=10), out=tmp_path / "a", report=False))
    run_search(tiny_env.settings(sampler="random", n_trials=4), out=tmp_path / "b", report=False)
    resumed = _study(run_search(tiny_env.settings(sampler="random", n_trials=10), out=tmp_path / "b", report=False))
    assert [t.params for t in resumed.trials] == [t.params for t in whole.trials]
    assert len({config_from_params(t.params, load_space(tiny_env.experiment)).id for t in whole.trials}) > 5


def _every_config(space):  # type: ignore[no-untyped-def]
    import itertools

    from hwnas.space import STAGES, StageConfig, SubnetConfig

    per_stage = []
    for name in STAGES:
        ch = space.stages[name]
        per_stage.append([StageConfig(width=w, depth=d, ffn_ratio=f, attn=a, radius=r)
                          for w, d, f, a in itertools.product(ch.width, ch.depth, ch.ffn_ratio, ch.attn)
                          for r in (ch.radius if a in ("assa", "bna") else (0,))])
    return [SubnetConfig(*stages) for stages in itertools.product(*per_stage)]


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 1.0])
def test_feasible_set_is_every_sub_dit_that_fits(tiny_env, fraction: float) -> None:  # type: ignore[no-untyped-def]
    from hwnas.search.start import feasible_set, fits_budget

    space, latency = _latency(tiny_env)
    budget = tiny_env.fastest_ms + fraction * (tiny_env.largest_ms - tiny_env.fastest_ms)
    calls = []

    def counted(cfg):  # type: ignore[no-untyped-def]
        calls.append(cfg)
        return latency(cfg)

    fits = fits_budget(counted, budget_ms=budget, confidence=0.9)
    found = feasible_set(space, fits)
    every = _every_config(space)
    assert len(every) == space.size()
    walked = len(calls)
    brute = {c.id for c in every if fits(c)}
    assert [c.id for c in found] == list(dict.fromkeys(c.id for c in found))  # no repeats
    assert {c.id for c in found} == brute and len(brute) >= 1
    if fraction < 1.0:  # it predicts the feasible sub-DiTs and their upper neighbours, not the whole space
        assert walked < len(every)


@pytest.mark.parametrize("sampler", ["nsga2", "nsga3"])
def test_genetic_samplers_breed_new_feasible_children(tiny_env, tmp_path: Path, sampler: str) -> None:  # type: ignore[no-untyped-def]
    space = load_space(tiny_env.experiment)
    feasible = _study(run_search(tiny_env.settings(sampler=sampler, population_size=4, n_trials=24),
                                 out=tmp_path / "f", report=False))
    ids = [config_from_params(t.params, space).id for t in feasible.trials]
    assert all(t.user_attrs["hwnas"]["feasible"] for t in feasible.trials)
    assert len(set(ids)) == len(ids)  # no sub-DiT twice: a repeat costs a trial and teaches nothing
    # the same sampler without the feasible start breeds over-budget children and repeats
    plain = _study(run_search(tiny_env.settings(sampler=sampler, population_size=4, n_trials=24, start="plain"),
                              out=tmp_path / "p", report=False))
    plain_ids = [config_from_params(t.params, space).id for t in plain.trials]
    assert not all(t.user_attrs["hwnas"]["feasible"] for t in plain.trials) or len(set(plain_ids)) < len(plain_ids)


def test_feasible_children_ignore_another_workers_half_suggested_trial(tiny_env) -> None:  # type: ignore[no-untyped-def]
    """With two workers, a trial the other worker is still suggesting has only some parameters;
    the sampler asked for the next trial must not read it as a sub-DiT (KeyError under PostgreSQL)."""
    from hwnas.search import suggest_config
    from hwnas.search.start import FeasibleNSGAIISampler

    space = load_space(tiny_env.experiment)
    sampler = FeasibleNSGAIISampler(space, lambda cfg: True, seed=0, population_size=4)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    other = study.ask()
    other.suggest_categorical("down.width", list(space.stages["down"].width))
    space.validate(suggest_config(study.ask(), space))
