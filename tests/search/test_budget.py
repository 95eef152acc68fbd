from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from hwnas.search import (
    InfeasibleBudgetError,
    SearchSettings,
    check_budget,
    parse_budget_ms,
    prepare,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("text, expected_ms", [
    ("1.8s", 1800.0), ("1800ms", 1800.0), ("1.8", 1800.0), ("2", 2000.0), (" 950ms ", 950.0), ("0.5s", 500.0),
    ("1e3ms", 1000.0), (".25s", 250.0), ("3 s", 3000.0), ("+1.8s", 1800.0),
])
def test_parse_budget_valid(text: str, expected_ms: float) -> None:
    assert parse_budget_ms(text) == pytest.approx(expected_ms)


@pytest.mark.parametrize(("text", "expected_ms"), [
    ("60", 60_000.0), ("59.9", 59_900.0), ("0.05", 50.0), ("60s", 60_000.0), ("1800s", 1_800_000.0),
    ("1800ms", 1800.0), ("60.5ms", 60.5),
])
def test_bare_numbers_up_to_60_are_seconds(text: str, expected_ms: float) -> None:
    assert parse_budget_ms(text) == pytest.approx(expected_ms)


@pytest.mark.parametrize(("text", "message"), [
    ("1800", "latency budget 1800: seconds or milliseconds? write 1800ms (= 1.8s) or 1800s"),
    ("+1800", "latency budget 1800: seconds or milliseconds? write 1800ms (= 1.8s) or 1800s"),
    ("60.5", "latency budget 60.5: seconds or milliseconds? write 60.5ms or 60.5s"),
    ("950", "latency budget 950: seconds or milliseconds? write 950ms or 950s"),
    ("1e3", "latency budget 1e3: seconds or milliseconds? write 1e3ms (= 1s) or 1e3s"),
])
def test_ambiguous_bare_numbers_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_budget_ms(text)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("text", [
    "", "fast", "1.8 sec", "1.8min", "s", "ms", "1,8s", "1.8.1s", "0", "0s", "0ms", "-1.8s", "-5", "1e999", "nan",
    "inf", "1.8 s s",
])
def test_parse_budget_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="budget"):
        parse_budget_ms(text)


def test_check_budget_names_fastest_and_nearest_preset() -> None:
    from hwnas.latency import load_profile, load_table
    from hwnas.space import load_space

    space = load_space(ROOT / "experiments" / "snapgenpp-1024.toml")
    table = load_table(load_profile("pixel8", profile_dir=ROOT / "device_profiles"), space.name,
                       table_dir=ROOT / "latency_tables")
    feas = check_budget(1.0, table=table, space=space, steps=4, precision="fp16")
    assert not feas.feasible and 0 < feas.fastest_ms < feas.preset_ms["tiny"]
    assert feas.nearest_preset == "tiny"
    assert check_budget(feas.fastest_ms, table=table, space=space, steps=4, precision="fp16").feasible
    with pytest.raises(InfeasibleBudgetError, match=r"fastest achievable latency is [0-9,]+ ms"):
        prepare(SearchSettings(device="pixel8", budget_ms=1.0, profile_dir=str(ROOT / "device_profiles"),
                               table_dir=str(ROOT / "latency_tables"), experiment=str(ROOT / "experiments" /
                                                                                      "snapgenpp-1024.toml")))


@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.99])
def test_check_budget_with_confidence_uses_upper_bounds(confidence: float) -> None:
    from hwnas.latency import load_profile, load_table, predict_latency_ms
    from hwnas.space import load_space

    space = load_space(ROOT / "experiments" / "snapgenpp-1024.toml")
    table = load_table(load_profile("pixel8", profile_dir=ROOT / "device_profiles"), space.name,
                       table_dir=ROOT / "latency_tables")
    point = check_budget(1.0, table=table, space=space, steps=4, precision="fp16")
    bound = check_budget(1.0, table=table, space=space, steps=4, precision="fp16", confidence=confidence)
    pred = predict_latency_ms(bound.fastest, table, steps=4, precision="fp16", space=space)
    assert bound.fastest_ms == pytest.approx(pred.upper_ms(confidence))
    assert pred.prob_within(bound.fastest_ms) == pytest.approx(confidence)
    assert (bound.fastest_ms > point.fastest_ms) == (confidence > 0.5)
    assert check_budget(point.fastest_ms, table=table, space=space, steps=4, precision="fp16",
                        confidence=0.9).feasible is False
    assert "upper bounds at" in bound.message(device="pixel8", steps=4, precision="fp16")
    cfg = check_budget(1.0, table=table, space=space, steps=4, precision="fp16", guidance="cfg")
    assert cfg.fastest_ms > point.fastest_ms


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.1])
def test_settings_refuse_bad_confidence(bad: float) -> None:
    with pytest.raises(ValueError, match="confidence must be between 0 and 1"):
        SearchSettings(device="pixel8", budget_ms=1800.0, confidence=bad)


def _cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hwnas.cli", "search", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    return proc, time.perf_counter() - start


def test_cli_infeasible_budget_exits_2_quickly() -> None:
    proc, wall_s = _cli("--device", "pixel8", "--budget", "1ms")
    assert proc.returncode == 2, proc.stderr
    assert "fastest achievable latency is" in proc.stderr and "tiny" in proc.stderr
    assert wall_s < 15  # no supernet loaded, no trial run


@pytest.mark.parametrize("args, needle", [
    (("--device", "pixel9", "--budget", "1.8s"), "known devices: "),
    (("--device", "pixel8", "--budget", "0"), "must be positive"),
    (("--device", "pixel8", "--budget", "fast"), "cannot parse latency budget 'fast'"),
    (("--device", "pixel8", "--budget", "1800"), "latency budget 1800: seconds or milliseconds? write 1800ms"),
    (("--device", "pixel8", "--budget", "1.8s", "--resolution", "512"), "offers resolution 1024 only"),
])
def test_cli_usage_errors(args: tuple[str, ...], needle: str) -> None:
    proc, _ = _cli(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr
    if "pixel9" in args:
        assert "pixel8" in proc.stderr and "iphone16promax" in proc.stderr
