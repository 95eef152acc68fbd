"""Adaptive timing: a steady kernel stops at the minimum of rounds, a noisy one runs on to the maximum."""

from __future__ import annotations

import itertools
import time

import pytest

from hwnas.latency.adaptive import FIXED_30, StopRule, time_evaluated, time_rounds


@pytest.mark.parametrize(("field", "value"), [
    ("rel_ci", 0.0), ("rel_ci", 1.5), ("confidence", 1.0), ("min_rounds", 1), ("max_rounds", 3),
    ("per_round", 0), ("min_repeat_ms", -1.0),
])
def test_bad_rule_names_the_value(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=repr(value).replace(".", r"\.")):
        StopRule(**{field: value, **({"min_rounds": 4} if field == "max_rounds" else {})})  # type: ignore[arg-type]


@pytest.mark.parametrize(("medians", "tight"), [
    ([1.0, 1.0, 1.0], False),  # fewer than min_rounds
    ([1.0, 1.0, 1.0, 1.0], True),
    ([1.0, 1.01, 0.99, 1.0], True),  # half-width 2.353 * 0.0082 / 2 = 0.96% of the median
    ([1.0, 1.1, 0.9, 1.0], False),  # 9.6%
    ([1.0, 1.1, 0.9, 1.0, 1.1], False),
    ([1.0, 2.0] * 3, True),  # max_rounds reached
])
def test_tight_once_the_interval_is_within_rel_ci(medians: list[float], tight: bool) -> None:
    assert StopRule(rel_ci=0.02, min_rounds=4, max_rounds=6).tight(medians) is tight


def test_fixed_rule_is_the_old_thirty_repeats() -> None:
    assert FIXED_30.min_rounds == FIXED_30.max_rounds == 5 and 5 * FIXED_30.per_round == 30
    assert "5 rounds of 6 repeats" in FIXED_30.describe()


def _busy(ms: float) -> None:
    end = time.thread_time() + ms / 1e3
    while time.thread_time() < end:
        pass


def test_steady_call_stops_early_and_noisy_call_runs_to_the_maximum() -> None:
    rule = StopRule(rel_ci=0.05, min_rounds=3, max_rounds=8, per_round=2, min_repeat_ms=0)
    calls = itertools.count()  # one calibration call, then two repeats per round: rounds alternate 1 and 2 ms

    def noisy_call() -> None:
        _busy(1.0 if (next(calls) - 1) // 2 % 2 == 0 else 2.0)

    steady, noisy = time_rounds([(lambda: _busy(1.0), []), (noisy_call, [])], rule)
    assert steady.n == 3 * 2 and steady.median_ms == pytest.approx(1.0, rel=0.3)
    assert noisy.n == 8 * 2 and noisy.cv > steady.cv and noisy.p90_ms >= 1.5


def test_evaluated_rounds_stop_by_the_same_rule() -> None:
    rounds = iter([[1e-3, 1e-3], [1.1e-3, 1.1e-3], [1e-3, 1e-3]] + [[1e-3, 3e-3]] * 20)
    rule = StopRule(rel_ci=0.1, min_rounds=3, max_rounds=10, per_round=2)  # half-width 9.4% after 3 rounds
    t = time_evaluated(lambda: next(rounds), rule)
    assert t.n == 6 and t.median_ms == pytest.approx(1.0) and t.p90_ms == pytest.approx(1.1)
    alternating = itertools.cycle([[1e-3, 1e-3], [3e-3, 3e-3]])
    t = time_evaluated(lambda: next(alternating), StopRule(min_rounds=2, max_rounds=4, per_round=2))
    assert t.n == 8 and t.median_ms == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no repeats"):
        time_evaluated(lambda: [], rule)
