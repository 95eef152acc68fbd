"""Timing that stops once a kernel's latency is known well enough, instead of after a fixed repeat count.

A kernel is timed in rounds of `per_round` repeats; each repeat runs it as often as it takes to last
`min_repeat_ms`. Its latency is the median of its round medians (as `bench.time_interleaved`: a burst of
interference on a shared machine spoils a round, not the estimate). From `min_rounds` on, a kernel
stops once the two-sided `confidence` Student-t interval of the mean of its round medians is within
+-`rel_ci` of their median, and at `max_rounds` in any case. `Timing.n` is the repeats it took.

Locally with one thread the clock is the calling thread's CPU time and the kernels of a batch take
turns round by round (`time_rounds`); with more threads or on a remote device it is TVM's
`time_evaluator` wall clock, one round per call (`time_evaluated`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from hwnas.latency.table import Timing


@dataclass(frozen=True)
class StopRule:
    """When to stop timing a kernel (see the module docstring); `rel_ci` is a fraction (0.02 = +-2%)."""

    rel_ci: float = 0.02
    confidence: float = 0.9
    min_rounds: int = 4
    max_rounds: int = 15
    per_round: int = 3
    min_repeat_ms: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.rel_ci < 1:
            raise ValueError(f"rel_ci must be in (0, 1), got {self.rel_ci!r}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence!r}")
        if not 2 <= self.min_rounds <= self.max_rounds:
            raise ValueError(f"need 2 <= min_rounds <= max_rounds, got {self.min_rounds!r} and {self.max_rounds!r}")
        if self.per_round < 1:
            raise ValueError(f"per_round must be >= 1, got {self.per_round!r}")
        if self.min_repeat_ms < 0:
            raise ValueError(f"min_repeat_ms must be >= 0, got {self.min_repeat_ms!r}")

    def tight(self, round_medians: Sequence[float]) -> bool:
        """True once `round_medians` (>= `min_rounds` of them) pin the latency down, or at `max_rounds`."""
        r = len(round_medians)
        if r >= self.max_rounds:
            return True
        if r < self.min_rounds:
            return False
        mid = statistics.median(round_medians)
        half = _t_quantile((1 + self.confidence) / 2, r - 1) * statistics.stdev(round_medians) / r**0.5
        return mid > 0 and half <= self.rel_ci * mid

    def describe(self) -> str:
        """The rule in words, for a table's provenance."""
        if self.min_rounds == self.max_rounds:
            return (f"{self.min_rounds} rounds of {self.per_round} repeats of >= {self.min_repeat_ms:g} ms, "
                    "median of the round medians")
        return (f"rounds of {self.per_round} repeats of >= {self.min_repeat_ms:g} ms until the "
                f"{self.confidence:.0%} t-interval of the mean round median is within +-{self.rel_ci:.0%} "
                f"({self.min_rounds}-{self.max_rounds} rounds), median of the round medians")


DEFAULT_STOP = StopRule()
"""What `hwnas lut build` uses."""

FIXED_30 = StopRule(min_rounds=5, max_rounds=5, per_round=6)
"""The fixed count builds used before: 30 repeats in 5 rounds (`bench.DEFAULT_REPEAT`, `DEFAULT_ROUNDS`)."""


@lru_cache(maxsize=256)
def _t_quantile(q: float, dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, dof))


def time_rounds(calls: Sequence[tuple[Any, Sequence[Any]]], rule: StopRule) -> list[Timing]:
    """Thread-CPU timing of warmed-up `(func, inputs)` calls taking turns round by round, each until `rule`
    says stop (the caller runs them on its own thread: one TVM thread)."""
    numbers = []
    for func, inputs in calls:
        start = time.thread_time_ns()
        func(*inputs)
        once_ns = max(time.thread_time_ns() - start, 1)
        numbers.append(max(1, int(-(-rule.min_repeat_ms * 1e6 // once_ns))))
    samples: list[list[float]] = [[] for _ in calls]
    medians: list[list[float]] = [[] for _ in calls]
    active = list(range(len(calls)))
    while active:
        for i in active:
            func, inputs = calls[i]
            this_round = []
            for _ in range(rule.per_round):
                start = time.thread_time_ns()
                for _ in range(numbers[i]):
                    func(*inputs)
                this_round.append((time.thread_time_ns() - start) / numbers[i] / 1e9)
            samples[i] += this_round
            medians[i].append(statistics.median(this_round))
        active = [i for i in active if not rule.tight(medians[i])]
    return [_timing(s, m) for s, m in zip(samples, medians)]


def time_evaluated(evaluate: Callable[[], Sequence[float]], rule: StopRule) -> Timing:
    """Timing from `evaluate()` -> per-repeat seconds of one round (a `time_evaluator` made with
    `repeat=rule.per_round`), called until `rule` says stop."""
    samples: list[float] = []
    medians: list[float] = []
    while not rule.tight(medians):
        this_round = [float(s) for s in evaluate()]
        if not this_round:
            raise ValueError("the evaluator returned no repeats")
        samples += this_round
        medians.append(statistics.median(this_round))
    return _timing(samples, medians)


def _timing(samples_s: Sequence[float], round_medians_s: Sequence[float]) -> Timing:
    """Median of the round medians; p10/p90 (nearest rank) over all repeats; CV of the round medians (ms)."""
    ms = sorted(s * 1e3 for s in samples_s)
    n = len(ms)
    mid = 1e3 * statistics.median(round_medians_s)
    p10, p90 = ms[round(0.1 * (n - 1))], ms[round(0.9 * (n - 1))]
    mean = statistics.fmean(round_medians_s)
    cv = statistics.pstdev(round_medians_s) / mean if len(round_medians_s) > 1 and mean > 0 else 0.0
    return Timing(mid, min(p10, mid), max(p90, mid), cv, n, "measured")
