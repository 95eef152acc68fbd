from __future__ import annotations

import math
import random
from pathlib import Path

import optuna
import pandas as pd
import pytest

from hwnas.search import (
    QualityModel,
    config_from_params,
    hypervolume_2d,
    params_from_config,
    pareto_frame,
    run_search,
)
from hwnas.space import load_space

VOLATILE = ["quality_cpu_s", "latency_cpu_s", "worker"]


def test_params_round_trip(tiny_env) -> None:  # type: ignore[no-untyped-def]
    space = load_space(tiny_env.experiment)
    rng = random.Random(0)
    for cfg in [space.smallest(), space.largest(), *(space.sample(rng) for _ in range(30))]:
        assert config_from_params(params_from_config(cfg, space), space) == cfg


def test_seeded_search_repeats_exactly(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the plain start, so that some trials are over the budget (the feasible start proposes none)
    a = run_search(tiny_env.settings(start="plain"), out=tmp_path / "a", report=False)
    b = run_search(tiny_env.settings(start="plain"), out=tmp_path / "b", report=False)
    ta = pd.read_csv(tmp_path / "a" / "trials.csv").drop(columns=VOLATILE)
    tb = pd.read_csv(tmp_path / "b" / "trials.csv").drop(columns=VOLATILE)
    pd.testing.assert_frame_equal(ta, tb)
    assert a["best"] == b["best"]
    assert len(ta) == 12 and ta["feasible"].any() and (~ta["feasible"]).any()
    # the best pick fits the budget and is the lowest val loss among feasible trials
    assert a["best"]["latency_ms"] <= tiny_env.budget_ms
    # feasible means: the one-sided 90% upper bound (the default confidence) is within the budget
    assert (ta["feasible"] == (ta["latency_ms_hi"] <= tiny_env.budget_ms)).all()
    assert (ta["latency_ms_hi"] > ta["latency_ms"]).all()
    assert a["best"]["latency_ms_hi"] <= tiny_env.budget_ms and a["best"]["p_within_budget"] >= 0.9
    assert a["settings"]["confidence"] == 0.9 and a["settings"]["guidance"] == "distilled"
    assert a["best"]["quality"] == pytest.approx(ta.loc[ta["feasible"], "quality"].min())
    c = run_search(tiny_env.settings(start="plain", seed=1), out=tmp_path / "c", report=False)
    tc = pd.read_csv(tmp_path / "c" / "trials.csv")
    assert list(tc["config_id"]) != list(ta["config_id"])
    assert c["settings"]["study"] != a["settings"]["study"]


def test_quality_cached_by_config_id(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = run_search(tiny_env.settings(), out=tmp_path / "r", report=False)
    study = optuna.load_study(study_name=first["settings"]["study"], storage=first["settings"]["storage"])
    feasible = [t for t in study.trials if t.user_attrs["hwnas"]["feasible"]]
    for t in feasible[:2]:  # the same sub-DiTs again, and one with a radius that global attention ignores
        study.enqueue_trial(t.params)
    again = run_search(tiny_env.settings(n_trials=14), out=tmp_path / "r", report=False)
    t = pd.read_csv(tmp_path / "r" / "trials.csv")
    ev = t[t["quality_evaluated"]]
    assert len(t) == 14
    assert ev["quality_cached"].sum() == len(ev) - ev["config_id"].nunique() >= 2
    assert list(t["quality_cached"].iloc[-2:]) == [True, True]
    assert (ev.loc[ev["quality_cached"], "quality_cpu_s"] == 0).all()
    assert (ev.groupby("config_id")["quality"].nunique() == 1).all()
    assert t.loc[~t["feasible"], "quality"].isna().all()  # over budget: never evaluated
    cost = again["cost"]
    assert cost["quality_evaluations"] == ev["config_id"].nunique()
    assert cost["quality_cache_hits"] == int(ev["quality_cached"].sum())
    assert cost["latency_cpu_s"] > 0 and cost["quality_cpu_s"] > 0 and cost["wall_s"] > 0


def test_quality_model_cache_unit(tiny_env) -> None:  # type: ignore[no-untyped-def]
    from hwnas.metrics.val_loss import make_val_set
    from hwnas.train import load_supernet

    net = load_supernet(tiny_env.checkpoint)
    q = QualityModel(net=net, val=make_val_set(net, n=4))
    cfg = net.space.smallest()
    first, cached1 = q(cfg)
    second, cached2 = q(cfg)
    assert (cached1, cached2) == (False, True) and first == second and q.evaluations == 1 and q.hits == 1


def test_rerun_of_finished_search_adds_no_trials(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = run_search(tiny_env.settings(), out=tmp_path / "x", report=False)
    again = run_search(tiny_env.settings(), out=tmp_path / "x", report=False)
    assert again["cost"]["trials"] == first["cost"]["trials"] == 12
    assert len(again["cost"]["sessions"]) == 2 and again["best"] == first["best"]


@pytest.mark.parametrize("sampler", ["nsga3", "tpe", "gp"])
def test_other_samplers_run(tiny_env, tmp_path: Path, sampler: str) -> None:  # type: ignore[no-untyped-def]
    res = run_search(tiny_env.settings(sampler=sampler, n_trials=12), out=tmp_path / sampler, report=False)
    assert res["cost"]["trials"] == 12 and res["best"] is not None


def test_local_workers_share_one_study(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run_search(tiny_env.settings(workers=2, n_trials=16), out=tmp_path / "w", report=False)
    study = optuna.load_study(study_name=res["settings"]["study"], storage=res["settings"]["storage"])
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert 16 <= len(complete) <= 17  # may overshoot by workers - 1
    assert len({t.number for t in complete}) == len(complete)
    # the main process waits for the spawned worker to load its supernet: both run trials
    assert len({t.user_attrs["worker"] for t in complete}) == 2


def test_pareto_and_hypervolume() -> None:
    trials = pd.DataFrame({
        "trial": range(6), "config_id": list("abcdea"), "quality": [3.0, 2.0, 2.5, 1.0, math.nan, 3.0],
        "latency_ms": [1.0, 2.0, 3.0, 4.0, 0.5, 1.0], "feasible": [True, True, True, True, False, True],
        "quality_evaluated": [True, True, True, True, False, True],
    })
    front = pareto_frame(trials)
    assert list(front["config_id"]) == ["a", "b", "d"] and list(front["pick"]) == [0, 1, 2]
    pts = list(zip(front["quality"], front["latency_ms"]))
    # ref (4, 5): strips (4-3)*(5-1) + (3-2)*(5-2) + (2-1)*(5-4)
    assert hypervolume_2d(pts, (4.0, 5.0)) == pytest.approx(4 + 3 + 1)
    assert hypervolume_2d(pts + [(2.5, 3.0), (9.0, 0.1)], (4.0, 5.0)) == pytest.approx(8)
    assert hypervolume_2d([], (1.0, 1.0)) == 0.0


def test_proxy_caveat_names_the_patch_bottleneck() -> None:
    from hwnas.search.run import proxy_caveat

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    caveat = proxy_caveat(load_space(experiments / "shapes-32.toml"))
    assert "48 values" in caveat and "0.375/0.5/0.625" in caveat and "24/32/40 channels" in caveat
    assert proxy_caveat(load_space(experiments / "snapgenpp-1024.toml")) == ""
