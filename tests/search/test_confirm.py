from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from hwnas.metrics.val_loss import make_val_set, val_loss
from hwnas.search import SearchSettings, confirm, parse_screen, run_search
from hwnas.search.confirm import front_ranks
from hwnas.space import SubnetConfig
from hwnas.train import load_supernet


@pytest.mark.parametrize(("points", "ranks"), [
    ([], []),
    ([(1.0, 1.0)], [1]),
    ([(1.0, 2.0), (2.0, 1.0)], [1, 1]),  # a trade-off: both on the front
    ([(1.0, 1.0), (2.0, 2.0), (3.0, 3.0)], [1, 2, 3]),  # a chain
    ([(1.0, 1.0), (1.0, 1.0)], [1, 1]),  # equal points do not dominate each other
    ([(1.0, 1.0), (1.0, 2.0), (2.0, 1.0), (3.0, 3.0)], [1, 2, 2, 3]),  # ties in one objective are dominated
])
def test_front_ranks(points: list[tuple[float, float]], ranks: list[int]) -> None:
    assert front_ranks(points) == ranks


@pytest.mark.parametrize(("text", "expected"), [
    ("16x4", (16, 4)), ("8X2", (8, 2)), (" 16 ", (16, 4)), ("off", (0, 4)), ("0", (0, 4)),
])
def test_parse_screen(text: str, expected: tuple[int, int]) -> None:
    assert parse_screen(text) == expected


@pytest.mark.parametrize("text", ["x4", "16x0", "16x", "sixteen", "-1", "16x4x2", "1.5x4", ""])
def test_parse_screen_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="cannot read screen"):
        parse_screen(text)


@pytest.mark.parametrize(("kw", "match"), [
    ({"screen_images": 64}, "screen images must be between 0"), ({"screen_images": -1}, "screen images"),
    ({"screen_t": 0}, "screen t values"), ({"quality": "fid"}, "quality must be one of"),
])
def test_settings_refuse_bad_fidelities(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SearchSettings(device="pixel8", budget_ms=1800.0, **kw)


def _val_loss(tiny_env, config_json: str, *, n: int, grid: int) -> float:  # type: ignore[no-untyped-def]
    net = load_supernet(tiny_env.checkpoint)
    torch.manual_seed(0)
    return val_loss(net, SubnetConfig.from_json(config_json), make_val_set(net, n=n, grid=grid, seed=0))


def test_screened_search_picks_on_the_full_val_loss(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hwnas.report import build_report, load_run

    settings = tiny_env.settings(screen_images=3, screen_t=2, n_trials=16)
    res = run_search(settings, out=tmp_path / "s", report=False)
    run = tmp_path / "s"
    trials, confirmed = pd.read_csv(run / "trials.csv"), pd.read_csv(run / "confirmed.csv")
    pareto, best = pd.read_csv(run / "pareto.csv"), res["best"]
    # trials carry the screen, the confirmed candidates the full val loss (8 images x 8 t values here)
    row = trials[trials["quality_evaluated"]].iloc[0]
    assert row["quality"] == pytest.approx(_val_loss(tiny_env, row["config_json"], n=3, grid=2), rel=1e-5)
    cand = confirmed.iloc[-1]
    cfg_json = trials.set_index("trial").loc[cand["trial"], "config_json"]
    assert cand["quality"] == pytest.approx(_val_loss(tiny_env, cfg_json, n=8, grid=8), rel=1e-5)
    assert cand["quality_screen"] == trials.set_index("trial").loc[cand["trial"], "quality"]
    assert set(confirmed["front"]) <= {1, 2} and 1 in set(confirmed["front"])
    # the picks are the Pareto front of the confirmed values
    assert set(pareto["config_id"]) <= set(confirmed["config_id"])
    full = confirmed.set_index("config_id")["quality"]
    assert list(pareto["quality"]) == pytest.approx([full[c] for c in pareto["config_id"]])
    assert all(a > b for a, b in zip(pareto["quality"], pareto["quality"][1:]))  # by latency, each one better
    assert best["quality"] == pytest.approx(float(pareto["quality"].iloc[-1]))
    assert best["quality_fidelity"] == "full val loss (8 images x 8 t values)" and "quality_screen" in best
    assert res["settings"]["quality_fidelity"]["trials"] == "screen val loss (3 images x 2 t values)"
    build_report(run)
    data = load_run(run)
    assert len(data.confirmed) == len(confirmed) and data.fidelity["picks"] != data.fidelity["trials"]


def test_unscreened_search_confirms_nothing(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    res = run_search(tiny_env.settings(), out=tmp_path / "u", report=False)
    assert not (tmp_path / "u" / "confirmed.csv").exists()
    assert res["best"]["quality_fidelity"] == "full val loss (8 images x 8 t values)"
    assert "quality_screen" not in res["best"]


def test_rerun_with_another_metric_confirms_the_finished_search(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = run_search(tiny_env.settings(), out=tmp_path / "c", report=False)
    again = run_search(tiny_env.settings(quality="compositional", confirm_n=2), out=tmp_path / "c", report=False)
    assert again["cost"]["trials"] == first["cost"]["trials"]  # the same search: no new trials
    confirmed = pd.read_csv(tmp_path / "c" / "confirmed.csv")
    assert confirmed["compositional"].between(0, 1).all() and confirmed["quality_screen"].isna().all()
    assert "held-out shapes prompts" in confirmed["compositional_source"].iloc[0]
    assert again["best"]["compositional"] == pytest.approx(
        float(confirmed.set_index("config_id").loc[again["best"]["config_id"], "compositional"]))
    # without screening the candidates keep the trials' val loss: the same picks as before
    assert again["best"]["config_id"] == first["best"]["config_id"]
    assert json.loads((tmp_path / "c" / "best.json").read_text())["quality"] == first["best"]["quality"]


def test_confirm_reuses_earlier_metric_values(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_search(tiny_env.settings(quality="compositional", confirm_n=2), out=tmp_path / "m", report=False)
    previous = pd.read_csv(tmp_path / "m" / "confirmed.csv")
    trials = pd.read_csv(tmp_path / "m" / "trials.csv")

    def never(cfg: SubnetConfig) -> dict:
        raise AssertionError(f"{cfg.id} was scored again")

    again = confirm(trials, full=None, metric="compositional", score=never, previous=previous)
    pd.testing.assert_frame_equal(again.drop(columns="confirm_cpu_s"), previous.drop(columns="confirm_cpu_s"))
    assert all(math.isfinite(v) for v in again["compositional"])


def test_fd_ref_without_a_reference_classifier_is_refused_before_the_search(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="fd_ref needs a reference classifier"):
        run_search(tiny_env.settings(quality="fd_ref"), out=tmp_path / "f", report=False)
    assert not (tmp_path / "f" / "study.db").exists()
