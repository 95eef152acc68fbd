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
    ("nsga2", 16, 16), ("nsga2", 4, 4), ("tpe", 16, 10), ("gp", 4, 10), ("random", 16, 1),
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
    settings = tiny_env.settings(population_size=6)
    a = run_search(settings, out=tmp_path / "a", report=False)
    study = optuna.load_study(study_name=a["settings"]["study"], storage=a["settings"]["storage"])
    enqueued = [t for t in study.trials if "fixed_params" in t.system_attrs]
    assert [t.number for t in enqueued] == list(range(6))  # the population, first
    assert config_from_params(enqueued[0].params, space) == prepare(settings).feasibility.fastest
    assert all(t.user_attrs["hwnas"]["feasible"] for t in enqueued)
    # they are NSGA-II's generation 0, so its first offspring are bred from them
    assert [t.system_attrs["NSGAIISampler:generation"] for t in study.trials[:7]] == [0] * 6 + [1]
    # a seeded run repeats, the enqueued trials included
    b = run_search(settings, out=tmp_path / "b", report=False)
    volatile = ["quality_cpu_s", "latency_cpu_s", "worker"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "trials.csv").drop(columns=volatile),
                                  pd.read_csv(tmp_path / "b" / "trials.csv").drop(columns=volatile))
    assert a["best"] == b["best"]
    # resuming (more trials) enqueues nothing new
    run_search(tiny_env.settings(population_size=6, n_trials=14), out=tmp_path / "a", report=False)
    study = optuna.load_study(study_name=a["settings"]["study"], storage=a["settings"]["storage"])
    assert len(study.trials) == 14 and sum("fixed_params" in t.system_attrs for t in study.trials) == 6


def test_random_sampler_stays_random(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a = run_search(tiny_env.settings(sampler="random"), out=tmp_path / "r", report=False)
    study = optuna.load_study(study_name=a["settings"]["study"], storage=a["settings"]["storage"])
    assert [t.number for t in study.trials if "fixed_params" in t.system_attrs] == [0]  # the fastest only
