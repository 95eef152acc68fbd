"""`hwnas runs`: run directories with device, budget, best and state (finished or interrupted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hwnas.cli import main
from hwnas.report import list_runs, run_state
from hwnas.search import format_ms, run_search


@pytest.fixture(scope="module")
def reports(tiny_env, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("runs") / "reports"
    run_search(tiny_env.settings(n_trials=4), out=root / "done", report=False)
    run_search(tiny_env.settings(n_trials=6, timeout_s=1e-9, seed=1), out=root / "timed-out", report=False)
    # a search killed before its first session ended: settings.json and a study, no search_cost.json
    shutil.copytree(root / "done", root / "killed")
    (root / "killed" / "search_cost.json").unlink()
    (root / "notes").mkdir()  # not a run: left out
    return root


def test_list_runs_states(reports: Path) -> None:
    runs = list_runs(reports).set_index("run_dir")
    assert sorted(Path(p).name for p in runs.index) == ["done", "killed", "timed-out"]
    by_name = {Path(p).name: r for p, r in runs.iterrows()}
    assert by_name["done"]["state"] == "finished" and by_name["done"]["why"] == "4/4 trials"
    assert by_name["timed-out"]["state"] == "interrupted" and "--timeout after 1/6" in by_name["timed-out"]["why"]
    assert by_name["killed"]["state"] == "interrupted" and "no session finished" in by_name["killed"]["why"]
    best = json.loads((reports / "done" / "best.json").read_text())
    assert by_name["done"]["best"] == best["describe"] and by_name["done"]["best_val_loss"] == best["quality"]
    assert by_name["done"]["device"] == "pixel8"
    assert by_name["done"]["budget"] == format_ms(json.loads((reports / "done" / "settings.json").read_text())
                                                  ["budget_ms"])


@pytest.mark.parametrize(("cost", "state", "why"), [
    ({}, "interrupted", "no session finished"),
    ({"trials": 10, "failed_trials": 0, "sessions": [{"stopped": "done"}]}, "finished", "10/10 trials"),
    ({"trials": 9, "failed_trials": 1, "sessions": [{}]}, "finished", "10/10 trials"),  # a run from before "stopped"
    ({"trials": 10, "failed_trials": 0, "sessions": [{"stopped": "done"}]}, "interrupted", "10/14"),  # extended
    ({"trials": 3, "failed_trials": 0, "sessions": [{"stopped": "interrupted"}]}, "interrupted", "Ctrl-C after 3/10"),
])
def test_run_state_table(cost: dict, state: str, why: str) -> None:  # type: ignore[type-arg]
    settings = {"n_trials": 14 if why == "10/14" else 10}
    got = run_state(settings, cost)
    assert got[0] == state and why in got[1]


def test_runs_lists_sweep_members_by_budget(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hwnas.search.sweep import run_sweep

    lo, hi = tiny_env.fastest_ms, tiny_env.largest_ms
    run_sweep(tiny_env.settings(n_trials=4), [lo + 0.5 * (hi - lo), hi], out=tmp_path / "sw", report=False)
    runs = list_runs(tmp_path)
    assert len(runs) == 2 and (runs["state"] == "finished").all()
    assert list(runs["budget_ms"]) == sorted(runs["budget_ms"]) and set(runs["sweep"]) == {str(tmp_path / "sw")}


def test_cli_runs_json_and_table(reports: Path) -> None:
    result = CliRunner().invoke(main, ["runs", "--reports", str(reports), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {Path(r["run_dir"]).name: r["state"] for r in rows} == {"done": "finished", "killed": "interrupted",
                                                                   "timed-out": "interrupted"}
    table = CliRunner().invoke(main, ["runs", "--reports", str(reports)])
    assert table.exit_code == 0 and "finished" in table.stdout and "interrupted" in table.stdout
    missing = CliRunner().invoke(main, ["runs", "--reports", str(reports / "nope")])
    assert missing.exit_code == 2 and "is not a folder" in missing.stderr
