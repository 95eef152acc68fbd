"""Prediction intervals: how far a table's step times are from measured ones, in log space. Pure.

A table carries an `ErrorModel`: log(measured / predicted step) ~ log_bias + log_sd * T, with T a
Student-t variable of `dof` degrees of freedom (a normal one where `dof` is None). Three kinds:

- `prior`: an estimate calibrated on nothing. A roofline from datasheet peaks is assumed within a
  factor of 2 for 90% of devices (`PRIOR_LEVEL_SD`), plus the shape error below; wide on purpose.
- `calibrated` on k measured sub-DiTs (`calibrated_error`): the level is fitted, what remains is
  the shape error between sub-DiTs. Its prior (`shape_prior`: measured on CPUs, by thread count;
  assumed elsewhere) is pooled with the k leave-one-out residuals, so one row gives a wide interval
  and ten rows set it.
- `validated` (`validated_error`): a measured table's bias and spread on held-out sub-DiTs.

Only the denoiser is uncertain here: the text encoder and VAE decoder figures are added as given.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Literal

ErrorKind = Literal["prior", "calibrated", "validated"]

PRIOR_LEVEL_SD = math.log(2.0) / 1.6449
"""Assumed: an uncalibrated roofline estimate is within a factor of 2 of the device for 90% of devices."""
PRIOR_SHAPE_SD = 0.12
"""Assumed where nothing was measured (phone NPUs and GPUs): after the level is fitted, sub-DiTs
scatter ~12% (1 sd, log) around the cost model."""
PRIOR_DOF = 3
"""How many measurements an assumed shape prior is worth: ten measured rows outweigh it three to one."""


@dataclass(frozen=True)
class ShapePrior:
    """The shape error expected of a device before its own residuals are seen: `sd` (log), worth `dof`
    measurements when pooled with them (`calibrated_error`)."""

    sd: float
    dof: float
    source: str

    def describe(self) -> str:
        return f"shape prior {self.sd:.1%}, worth {self.dof:g} measurements ({self.source})"


ASSUMED_SHAPE_PRIOR = ShapePrior(PRIOR_SHAPE_SD, PRIOR_DOF, "assumed: nothing measured for this kind of device")
MAX_PRIOR_DOF = 30.0
"""Cap on what runtimes that agree make a measured shape prior worth."""
MEASURED_SHAPE_SD: dict[tuple[str, bool], dict[str, float]] = {
    ("cpu", False): {"onnxruntime": 0.020, "PyTorch eager": 0.025},
    ("cpu", True): {"onnxruntime": 0.031, "PyTorch eager": 0.050},
}
"""Measured, by (device kind, more than one thread) and runtime: the root mean square of the
leave-one-out log residuals of the per-op-kind model fitted to 60 timed sub-DiTs of snapgenpp-256
(31 rounds each) on a 2-core AMD EPYC, with each runtime's probes in its prior (dispatch overhead,
element-wise passes, thread scaling; benchmarks/transfer.py, its `diagnosis.loo_log_rms`,
2026-11-30). On two threads the model leaves out more: work splits unevenly across threads (eager's
residuals swing with width, not with size). The same timings then score the CPU intervals'
coverage, so that score is not independent of them."""


def measured_shape_prior(by_runtime: dict[str, float], what: str) -> ShapePrior:
    """The shape prior of runtimes whose shape sds were measured: the largest (the safe side), worth one
    runtime's measurements, 1 / (2 v) for a sample variance v of their log sds (a sample sd of n degrees
    of freedom scatters about 1 / sqrt(2 n) in log; two runtimes apart by r: 1 / ln(r)^2), within
    [PRIOR_DOF, MAX_PRIOR_DOF]; PRIOR_DOF for one runtime. README, "Few-shot transfer": other rules tried."""
    sds = sorted(by_runtime.values())
    dof = float(PRIOR_DOF)
    if len(sds) > 1:
        var = max(statistics.variance(math.log(sd) for sd in sds), 1e-18)
        dof = min(MAX_PRIOR_DOF, max(dof, 1 / (2 * var)))
    runtimes = ", ".join(f"{name} {sd:.1%}" for name, sd in by_runtime.items())
    return ShapePrior(sds[-1], round(dof, 1), f"measured: the largest of {what} ({runtimes})")


MEASURED_SHAPE_PRIORS: dict[tuple[str, bool], ShapePrior] = {
    key: measured_shape_prior(sds, f"{'multi' if key[1] else 'single'}-thread {key[0].upper()} runtimes")
    for key, sds in MEASURED_SHAPE_SD.items()
}


@lru_cache(maxsize=4096)
def _t_ppf(p: float, dof: float | None) -> float:
    from scipy import stats

    return float(stats.norm.ppf(p) if dof is None else stats.t.ppf(p, dof))


def _t_cdf(x: float, dof: float | None) -> float:
    from scipy import stats

    return float(stats.norm.cdf(x) if dof is None else stats.t.cdf(x, dof))


@dataclass(frozen=True)
class ErrorModel:
    """log(measured / predicted step time) ~ log_bias + log_sd * t(dof); `n` measurements behind it."""

    kind: ErrorKind
    log_bias: float
    log_sd: float
    dof: float | None
    n: int
    source: str

    def __post_init__(self) -> None:
        if self.kind not in ("prior", "calibrated", "validated"):
            raise ValueError(f"kind must be prior, calibrated or validated, got {self.kind!r}")
        if not (math.isfinite(self.log_bias) and math.isfinite(self.log_sd) and self.log_sd > 0):
            raise ValueError(f"need a finite log_bias and log_sd > 0, got {self.log_bias!r}, {self.log_sd!r}")
        if self.dof is not None and not self.dof > 0:
            raise ValueError(f"dof must be > 0 or None, got {self.dof!r}")

    def ratio(self, p: float) -> float:
        """The `p` quantile of measured / predicted."""
        if not 0 < p < 1:
            raise ValueError(f"a quantile needs 0 < p < 1, got {p!r}")
        return math.exp(self.log_bias + self.log_sd * _t_ppf(p, self.dof))

    def prob_below(self, ratio: float) -> float:
        """P(measured / predicted <= ratio)."""
        if ratio <= 0:
            return 0.0
        return _t_cdf((math.log(ratio) - self.log_bias) / self.log_sd, self.dof)

    def describe(self, confidence: float = 0.9) -> str:
        lo, hi = self.ratio((1 - confidence) / 2), self.ratio((1 + confidence) / 2)
        return (f"{self.kind}: {confidence:.0%} of step times within x{lo:.2f}..x{hi:.2f} of the prediction "
                f"({self.source})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ErrorModel:
        return cls(**data)


def prior_error() -> ErrorModel:
    """The error of an estimate calibrated on nothing (see the module docstring)."""
    return ErrorModel("prior", 0.0, math.hypot(PRIOR_LEVEL_SD, PRIOR_SHAPE_SD), PRIOR_DOF, 0,
                      "uncalibrated prior: assumed within a factor of 2 for 90% of devices, plus "
                      f"{PRIOR_SHAPE_SD:.0%} scatter between sub-DiTs; calibrate with hwnas lut calibrate")


def shape_prior(device_kind: str, threads: int) -> ShapePrior:
    """The shape prior of a device: `MEASURED_SHAPE_PRIORS` where measured, else `ASSUMED_SHAPE_PRIOR`."""
    return MEASURED_SHAPE_PRIORS.get((device_kind, threads > 1), ASSUMED_SHAPE_PRIOR)


def calibrated_error(loo_log_residuals: Sequence[float], *, source: str, prior: ShapePrior = ASSUMED_SHAPE_PRIOR
                     ) -> ErrorModel:
    """The error of a table fitted on k measurements, from their leave-one-out log residuals.

    With the shape prior's sd s worth n measurements: variance = (n s^2 (1 + 1/k) + sum r_i^2) / (n + k),
    t with n + k degrees of freedom. With k = 1 the left-out fit is the prior itself, so its residual
    measures the prior's level error, not the scatter: the shape prior alone is used, at 1 + 1/k, t
    with n degrees of freedom.
    """
    k = len(loo_log_residuals)
    if k < 1:
        raise ValueError("a calibrated error needs at least one measurement")
    n, pooled = prior.dof, prior.dof * prior.sd**2 * (1 + 1 / k)
    source = f"{source}; {prior.describe()}"
    if k == 1:
        return ErrorModel("calibrated", 0.0, math.sqrt(pooled / n), n, 1, source)
    var = (pooled + sum(r * r for r in loo_log_residuals)) / (n + k)
    return ErrorModel("calibrated", 0.0, math.sqrt(var), n + k, k, source)


def validated_error(predicted_ms: Sequence[float], measured_ms: Sequence[float], *, source: str) -> ErrorModel:
    """A measured table's error on held-out sub-DiTs: mean and sample sd of log(measured / predicted)."""
    if len(predicted_ms) != len(measured_ms) or len(predicted_ms) < 3:
        raise ValueError(f"need >= 3 paired predictions and measurements, got {len(predicted_ms)} and "
                         f"{len(measured_ms)}")
    logs = [math.log(m / p) for p, m in zip(predicted_ms, measured_ms)]
    mean = sum(logs) / len(logs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    return ErrorModel("validated", mean, max(sd, 1e-6), len(logs) - 1, len(logs), source)


@dataclass(frozen=True)
class LatencyInterval:
    """A central interval at `confidence` of one image's latency and its denoiser step, in ms."""

    confidence: float
    step_ms_lo: float
    step_ms_hi: float
    latency_ms_lo: float
    latency_ms_hi: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_confidence(confidence: float) -> float:
    if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be a number between 0 and 1 (exclusive), got {confidence!r}")
    return float(confidence)
