"""Constraints beyond latency: parsing of the bounds, the footprint cost model, refusal of impossible
bounds, a trial over a bound is infeasible, and the bounds belong to a run's identity."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner

from hwnas.cli import main
from hwnas.cost import count_params
from hwnas.search import (
    BoundError,
    Bounds,
    SearchSettings,
    footprint,
    parse_bounds,
    parse_bytes,
    parse_count,
    prepare,
    run_search,
)
from hwnas.search.budget import fastest_candidates
from hwnas.search.constraints import check_bounds, fastest_within, smallest_footprint
from hwnas.search.run import RunConflictError
from hwnas.space import STAGES, load_space

ROOT = Path(__file__).resolve().parents[2]
SNAPGEN = load_space(ROOT / "experiments" / "snapgenpp-1024.toml")


@pytest.mark.parametrize(("text", "count"), [
    ("300M", 300_000_000), ("0.3B", 300_000_000), ("300000000", 300_000_000), ("300m", 300_000_000),
    ("1.5k", 1_500), ("2G", 2_000_000_000), ("3e8", 300_000_000), (" 7b ", 7_000_000_000),
])
def test_parse_count(text: str, count: int) -> None:
    assert parse_count(text) == count


@pytest.mark.parametrize(("text", "message"), [
    ("300MB", "is a size in bytes.*write 300M"), ("1.2GiB", "is a size in bytes"), ("1.5", "not a whole number"),
    ("fast", "cannot parse"), ("300X", "unknown unit 'X'"), ("0", "must be positive"), ("-3M", "must be positive"),
    ("nanM", "cannot parse"),
])
def test_parse_count_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_count(text)
    assert repr(text) in str(info.value) and "--max-params" in str(info.value)


@pytest.mark.parametrize(("text", "size"), [
    ("150MB", 150_000_000), ("1.2GB", 1_200_000_000), ("512MiB", 512 * 2**20), ("2kB", 2_000), ("2KB", 2_000),
    ("1000", 1_000), ("64 B", 64), ("1GiB", 2**30),
])
def test_parse_bytes(text: str, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize(("text", "message"), [
    ("150M", "no byte unit.*150MB"), ("150Mb", "megabits.*150MB"), ("1gb", "gigabits.*1GB"),
    ("150XB", "unknown unit"), ("1.5", "not a whole number"), ("", "cannot parse"), ("-1MB", "must be positive"),
])
def test_parse_bytes_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_bytes(text, option="--max-size")


def test_parse_bounds_names_the_option() -> None:
    assert parse_bounds() == Bounds()
    assert parse_bounds(max_params="1M", max_memory="1GB").active == {"max_params": 10**6,
                                                                       "max_memory_bytes": 10**9}
    with pytest.raises(ValueError, match="--max-memory '1Gb'"):
        parse_bounds(max_memory="1Gb")
    with pytest.raises(ValueError, match="max_params must be a positive whole number"):
        SearchSettings(device="pixel8", budget_ms=1800.0, max_params=0)


def _bigger(cfg, space, rng):  # type: ignore[no-untyped-def]
    """`cfg` with one stage's width, depth or FFN ratio raised to a larger choice (or `cfg` if none is)."""
    stage = rng.choice(STAGES)
    attr = rng.choice(("width", "depth", "ffn_ratio"))
    options = [v for v in getattr(space.stages[stage], attr) if v > getattr(cfg.stage(stage), attr)]
    if not options:
        return cfg
    return replace(cfg, **{stage: replace(cfg.stage(stage), **{attr: rng.choice(options)})})


@pytest.mark.parametrize("precision", ["fp16", "w4a16"])
def test_footprint_grows_with_size_so_the_minimal_subdits_give_the_floor(precision: str) -> None:
    """`smallest_footprint` over `fastest_candidates` is the space's minimum only because every
    quantity grows with width, depth and FFN ratio; checked on random sub-DiTs."""
    rng = random.Random(0)
    floor = smallest_footprint(fastest_candidates(SNAPGEN), SNAPGEN, precision=precision)
    for _ in range(150):
        cfg = SNAPGEN.sample(rng)
        fp = footprint(cfg, SNAPGEN, precision=precision)
        assert fp.params == count_params(cfg, SNAPGEN)
        assert fp.size_bytes == fp.params * {"fp16": 2, "w4a16": 0.5}[precision]
        assert fp.memory_bytes > fp.size_bytes
        for name in ("max_params", "max_size_bytes", "max_memory_bytes"):
            assert fp.value(name) >= floor[name][0]
        big = footprint(_bigger(cfg, SNAPGEN, rng), SNAPGEN, precision=precision)
        assert (big.params, big.size_bytes, big.memory_bytes) >= (fp.params, fp.size_bytes, fp.memory_bytes)
        assert big.memory_bytes >= fp.memory_bytes


def test_long_skips_are_held_until_their_up_block() -> None:
    """Deeper Down stages hold more pending skips: memory grows by more than the extra block's own tensors."""
    space = load_space(ROOT / "experiments" / "shapes-32.toml")
    base = space.smallest()
    mems = []
    for depth in sorted(space.stages["down"].depth):
        cfg = replace(base, down=replace(base.down, depth=depth),
                      up=replace(base.up, depth=max(space.stages["up"].depth)))
        mems.append(footprint(cfg, space, precision="fp32").memory_bytes
                    - footprint(cfg, space, precision="fp32").size_bytes)
    assert mems == sorted(mems) and mems[-1] > mems[0]


def test_check_bounds_refuses_below_the_smallest_and_above_ram() -> None:
    floor = smallest_footprint(fastest_candidates(SNAPGEN), SNAPGEN, precision="fp16")
    least = floor["max_params"][0]
    check_bounds(Bounds(max_params=least), floor, precision="fp16", experiment=SNAPGEN.name)
    with pytest.raises(BoundError, match=rf"smallest achievable is {least:,} parameters; give --max-params") as info:
        check_bounds(Bounds(max_params=least - 1), floor, precision="fp16", experiment=SNAPGEN.name)
    suggested = str(info.value).split("give --max-params ")[1].split(" ")[0]
    check_bounds(Bounds(max_params=parse_count(suggested)), floor, precision="fp16", experiment=SNAPGEN.name)
    with pytest.raises(BoundError, match="--max-size 150 B is below.*bytes on disk at fp16"):
        check_bounds(Bounds(max_size_bytes=150), floor, precision="fp16", experiment=SNAPGEN.name)
    check_bounds(Bounds(max_memory_bytes=8 * 2**30), floor, precision="fp16", experiment=SNAPGEN.name,
                 ram_bytes=8 * 2**30)
    with pytest.raises(BoundError, match="exceeds the RAM of pixel8.*8 GiB"):
        check_bounds(Bounds(max_memory_bytes=8 * 2**30 + 1), floor, precision="fp16", experiment=SNAPGEN.name,
                     ram_bytes=8 * 2**30, device="pixel8")


def test_fastest_within_refuses_bounds_that_exclude_the_budget() -> None:
    candidates = fastest_candidates(SNAPGEN)
    fps = {c.id: footprint(c, SNAPGEN, precision="fp16").params for c in candidates}
    heavy = max(candidates, key=lambda c: fps[c.id])
    # a made-up latency: only the heaviest minimal sub-DiT fits the budget
    latency = {c.id: (1.0 if c.id == heavy.id else 10.0) for c in candidates}
    pick = fastest_within(candidates, SNAPGEN, precision="fp16", bounds=Bounds(max_params=fps[heavy.id]),
                          latency_ms=lambda c: latency[c.id], budget_ms=5.0)
    assert pick == heavy
    with pytest.raises(BoundError, match="no sub-DiT meets the budget and --max-params"):
        fastest_within(candidates, SNAPGEN, precision="fp16", bounds=Bounds(max_params=fps[heavy.id] - 1),
                       latency_ms=lambda c: latency[c.id], budget_ms=5.0)


def test_prepare_refuses_a_memory_bound_above_the_device_ram() -> None:
    with pytest.raises(BoundError, match="exceeds the RAM of pixel8"):
        prepare(SearchSettings(device="pixel8", budget_ms=1800.0, max_memory_bytes=9 * 2**30))


def _tiny_params(tiny_env) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    space = load_space(tiny_env.experiment)
    rng = random.Random(1)
    params = sorted(footprint(space.sample(rng), space, precision="fp16").params for _ in range(200))
    return params[len(params) // 3], space.size


def test_a_trial_over_max_params_is_infeasible(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bound, _ = _tiny_params(tiny_env)
    # a budget every sub-DiT meets: only the parameter bound decides feasibility; random proposals (NSGA-II
    # soon proposes only feasible ones)
    result = run_search(tiny_env.settings(budget_ms=tiny_env.largest_ms * 2, max_params=bound, sampler="random"),
                        out=tmp_path / "r", report=False)
    t = pd.read_csv(tmp_path / "r" / "trials.csv")
    assert (t["latency_ms_hi"] <= tiny_env.largest_ms * 2).all()
    assert (t["feasible"] == (t["params"] <= bound)).all()
    assert (~t["feasible"]).any() and t["feasible"].any()
    assert t.loc[~t["feasible"], "quality"].isna().all() and t.loc[t["feasible"], "quality"].notna().all()
    study = optuna.load_study(study_name=result["settings"]["study"], storage=result["settings"]["storage"])
    for trial in study.trials:
        a = trial.user_attrs["hwnas"]
        assert trial.system_attrs["constraints:params_over_max"] == pytest.approx(a["params"] / bound - 1)
    assert result["best"]["params"] <= bound and result["best"]["constraints"] == [f"params <= {bound / 1e3:.4g}K"]
    settings = json.loads((tmp_path / "r" / "settings.json").read_text())
    assert settings["identity"]["max_params"] == bound and settings["constraints"] == result["best"]["constraints"]
    presets = pd.read_csv(tmp_path / "r" / "presets.csv")
    assert (presets["feasible"] == (presets["params"] <= bound)).all()


def test_unset_bounds_leave_the_identity_as_before() -> None:
    """Runs made before the constraints existed keep their identity (and so still resume)."""
    ident = SearchSettings(device="pixel8", budget_ms=1800.0).identity()
    assert set(ident) == {"device", "budget_ms", "experiment", "checkpoint", "steps", "precision", "resolution",
                          "confidence", "guidance", "sampler", "population_size", "seed", "val_images",
                          "sample_steps", "sample_prompts"}
    bounded = SearchSettings(device="pixel8", budget_ms=1800.0, max_size_bytes=10**8).identity()
    assert bounded == {**ident, "max_size_bytes": 10**8}


def test_other_bounds_are_another_run(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bound, _ = _tiny_params(tiny_env)
    reports = tmp_path / "reports"
    first = run_search(tiny_env.settings(n_trials=3, max_params=bound), reports_dir=reports, report=False)
    again = run_search(tiny_env.settings(n_trials=3, max_params=bound), reports_dir=reports, report=False)
    assert again["run_dir"] == first["run_dir"] and again["notes"] == [f"resuming {first['run_dir']}"]
    other = run_search(tiny_env.settings(n_trials=3, max_params=bound + 1), reports_dir=reports, report=False)
    assert other["run_dir"] != first["run_dir"] and other["settings"]["identity"]["max_params"] == bound + 1
    unbounded = run_search(tiny_env.settings(n_trials=3), reports_dir=reports, report=False)
    assert unbounded["run_dir"] not in (first["run_dir"], other["run_dir"])
    with pytest.raises(RunConflictError, match="max_params.*--force"):
        run_search(tiny_env.settings(n_trials=3), out=Path(first["run_dir"]), report=False)


@pytest.mark.parametrize("args", [
    ["--max-params", "300MB"], ["--max-params", "0.3"], ["--max-size", "150M"], ["--max-size", "1.2Gb"],
    ["--max-memory", "lots"], ["--max-params", "1M"], ["--max-size", "150"], ["--max-memory", "50GB"],
    ["--max-memory", "0MB"],
])
def test_bad_bounds_are_one_line_exit_2_before_any_run(args: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["search", "--device", "pixel8", "--budget", "1.8s", *args,
                                       "--reports", str(tmp_path / "reports")])
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: ") and args[0] in err, err
    assert "Traceback" not in result.output and not (tmp_path / "reports").exists()
    if args[1] in ("1M", "150"):  # below the smallest sub-DiT: the smallest achievable value is named
        assert "smallest achievable is" in err
