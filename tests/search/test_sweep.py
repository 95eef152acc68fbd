"""Budget sweeps: the budget list, one quality cache across the budgets, resume, identity."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from hwnas.cli import main
from hwnas.search import format_ms, run_search
from hwnas.search.run import RunConflictError
from hwnas.search.sweep import SweepResult, default_refine_trials, parse_budgets_ms, run_sweep


@pytest.mark.parametrize(("text", "budgets"), [
    ("1.8s", (1800.0,)), ("1.2s,1.8s,2.4s", (1200.0, 1800.0, 2400.0)), ("2400ms, 1.2s", (1200.0, 2400.0)),
    ("1.8,950ms", (950.0, 1800.0)),
])
def test_parse_budgets(text: str, budgets: tuple[float, ...]) -> None:
    assert parse_budgets_ms(text) == budgets


@pytest.mark.parametrize(("text", "message"), [
    ("1.2s,x,2.4s", r"element 2 'x': cannot parse latency budget"),
    ("1.2s,,2.4s", "element 2 is empty"),
    ("1.2s,1800,2.4s", "element 2 '1800': latency budget 1800: seconds or milliseconds"),
    ("1.2s,1200ms", "element 2 '1200ms' repeats '1.2s'"),
    ("1.2s,-1s", "element 2 '-1s': latency budget must be positive"),
    ("1.2s,", "element 2 is empty"),
])
def test_parse_budgets_names_the_malformed_element(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_budgets_ms(text)
    assert f"budget list {text!r}" in str(info.value)


@pytest.mark.parametrize("budget", ["1.4s,fast,2.4s", "1.4s,,2.4s", "1.4s,2400"])
def test_cli_bad_budget_list_is_one_line_exit_2(budget: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["search", "--device", "pixel8", "--budget", budget,
                                       "--reports", str(tmp_path / "r")])
    assert result.exit_code == 2 and result.stderr.startswith("Error: budget list ")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_default_refine_trials_keeps_the_sweep_within_a_quarter_more_trials() -> None:
    for n in (1, 7, 24, 96, 97):
        for k in (2, 3, 5):
            refine = default_refine_trials(n, k)
            assert refine >= 1 and (n + (k - 1) * refine <= 1.25 * n or refine == 1)
    assert default_refine_trials(96, 3) == 12


@pytest.fixture(scope="module")
def sweep(tiny_env, tmp_path_factory: pytest.TempPathFactory) -> tuple[SweepResult, tuple[float, ...]]:  # type: ignore[no-untyped-def]
    lo, hi = tiny_env.fastest_ms, tiny_env.largest_ms
    budgets = (lo + 0.3 * (hi - lo), lo + 0.6 * (hi - lo), hi)
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    return run_sweep(tiny_env.settings(n_trials=8), budgets, out=out), budgets


def test_sweep_evaluates_each_subdit_once_across_budgets(sweep) -> None:  # type: ignore[no-untyped-def]
    result, budgets = sweep
    assert [m.budget_ms for m in result.members] == sorted(budgets, reverse=True)  # loosest first
    trials = {m.budget_ms: pd.read_csv(m.run_dir / "trials.csv") for m in result.members}
    evaluated = [t.loc[t["quality_evaluated"] & ~t["quality_cached"], "config_id"] for t in trials.values()]
    ids = pd.concat(evaluated)
    assert ids.is_unique  # one quality cache: no sub-DiT is evaluated under two budgets
    assert result.quality_evaluations == len(ids) == sum(len(e) for e in evaluated)
    for m in result.members:
        t = trials[m.budget_ms]
        assert m.quality_evaluations == int((t["quality_evaluated"] & ~t["quality_cached"]).sum())
        assert (t["latency_ms_hi"][t["feasible"]] <= m.budget_ms).all()
        carried = t.iloc[:m.carried_trials]  # carried trials come first and are answered from the cache
        assert carried["feasible"].all() and carried["quality_cached"].all()
    first, *rest = result.members
    assert first.carried_trials == 0 and first.trials == 8
    assert any(m.carried_trials > 0 for m in rest)
    refine = default_refine_trials(8, 3)
    assert all(m.trials == m.carried_trials + refine for m in rest)
    # the sweep asks at most 1.25x the trials of one search beyond what it carries over (8 + 2 x 1)
    assert sum(m.trials - m.carried_trials for m in result.members) == 10
    recorded = json.loads((result.sweep_dir / "sweep.json").read_text())
    assert recorded["quality_evaluations"]["total"] == result.quality_evaluations
    assert recorded["quality_evaluations"]["per_budget"] == {format_ms(m.budget_ms): m.quality_evaluations
                                                             for m in result.members}
    assert result.compare_html is not None and result.compare_html.is_file()
    picks = sum(len(pd.read_csv(m.run_dir / "pareto.csv")) for m in result.members)
    assert len(pd.read_csv(result.compare_html.with_suffix(".csv"))) == picks


def test_sweep_resumes_without_evaluating_again(tiny_env, sweep) -> None:  # type: ignore[no-untyped-def]
    result, budgets = sweep
    again = run_sweep(tiny_env.settings(n_trials=8), budgets, out=result.sweep_dir, report=False)
    assert again.notes == (f"resuming {result.sweep_dir}",)
    assert [(m.trials, m.carried_trials) for m in again.members] == [(m.trials, m.carried_trials)
                                                                     for m in result.members]
    assert again.quality_evaluations == result.quality_evaluations


def test_a_sweep_member_is_not_a_standalone_search(tiny_env, sweep, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, budgets = sweep
    member = result.members[0]
    with pytest.raises(RunConflictError, match="sweep_budgets_ms"):
        run_search(tiny_env.settings(budget_ms=member.budget_ms, n_trials=8), out=member.run_dir, report=False)
    with pytest.raises(RunConflictError, match="a single search"):
        run_sweep(tiny_env.settings(n_trials=8), budgets[:2], out=member.run_dir)


def test_a_sweep_refuses_one_study_name_for_every_budget(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="drop --study 'mine'"):
        run_sweep(tiny_env.settings(study="mine"), [tiny_env.budget_ms, tiny_env.largest_ms], out=tmp_path / "s")
    assert not (tmp_path / "s").exists()
