"""Few-shot calibration: fit a device's per-op-kind cost parameters to a handful of measured sub-DiTs.

A hardware team times a few exported sub-DiTs on the phone with its own runtime and writes a CSV:

    config,ms,per,steps,precision,runtime,note
    small,360,step,,fp16,Core ML,paper: SnapGen++ (arXiv 2601.08303)

`config` is a preset name, the id of a preset (or of the smallest/largest sub-DiT) or a config JSON;
`per` is `step` (one denoiser evaluation) or `image` (then `steps` is required, and the profile's
text encoder and VAE decoder figures are subtracted). `precision` defaults to the profile's.

The fit is a maximum a posteriori estimate in log space (a ridge regression around the priors):

    minimise  sum_i ((log measured_i - log predicted_i(theta)) / MEASUREMENT_LOG_SD)^2
            + sum_j ((theta_j - log prior_j) / PRIOR_LOG_SD[param_j])^2

over the logs theta of the 12 parameters of `hwnas.latency.estimate`. One row moves every
parameter a little along its influence on that sub-DiT (the level is then right, the shape is the
prior's); ten rows outweigh the priors. Leave-one-out residuals, pooled with the device kind's
shape prior (`hwnas.latency.interval.shape_prior`), give the table's `ErrorModel`.
Reading and fitting are separate from writing: nothing is written unless everything succeeded.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from hwnas.latency.estimate import (
    PARAM_NAMES,
    PRIOR_LOG_SD,
    EstimatorParams,
    borrow_params,
    build_estimated_table,
    kernel_terms,
    params_from_meta,
    prior_params,
    thread_speedup,
)
from hwnas.latency.interval import ErrorModel, calibrated_error, shape_prior
from hwnas.latency.kernels import PRECISIONS, Precision, kernel_counts
from hwnas.latency.primitives import COST_KINDS, AttentionLowering
from hwnas.latency.profile import DeviceProfile, Figure
from hwnas.latency.table import LatencyTable
from hwnas.space import SearchSpace, SubnetConfig, resolve_config

Per = Literal["step", "image"]
_PERS: tuple[Per, ...] = get_args(Per)
COLUMNS_REQUIRED: tuple[str, ...] = ("config", "ms", "per")
COLUMNS_OPTIONAL: tuple[str, ...] = ("steps", "precision", "runtime", "note")
MEASUREMENT_LOG_SD = 0.05
"""Assumed spread of one phone timing (~5%: thermal state, background load)."""
IMPLAUSIBLE_RATIO = 10.0
"""A measured step more than this factor from the prior's prediction is refused (a likely s/ms mix-up)."""


class MeasurementError(ValueError):
    """A measurement CSV that cannot be used; the message names the file, line and value."""


@dataclass(frozen=True)
class Measurement:
    """One timed sub-DiT: `ms` per `per` (`steps` denoising steps for a whole image) at `precision`."""

    config: SubnetConfig
    ms: float
    per: Per
    steps: int | None
    precision: Precision
    runtime: str = ""
    note: str = ""
    line: int = 0


def read_measurements(path: str | Path, *, space: SearchSpace, profile: DeviceProfile) -> list[Measurement]:
    """Parse and check a measurement CSV (see the module docstring). Raises `MeasurementError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MeasurementError(f"{path}: cannot read: {exc.strerror}") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in COLUMNS_REQUIRED if c not in header]
    unknown = [c for c in header if c not in COLUMNS_REQUIRED + COLUMNS_OPTIONAL]
    if missing or unknown:
        raise MeasurementError(f"{path}: columns must be {', '.join(COLUMNS_REQUIRED)} and optionally "
                               f"{', '.join(COLUMNS_OPTIONAL)}; missing {missing}, unknown {unknown}")
    out: list[Measurement] = []
    seen: dict[tuple[str, str, int | None, str], int] = {}
    for line, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        where = f"{path}:{line}"
        try:
            m = _measurement(row, space=space, profile=profile, line=line)
        except ValueError as exc:
            raise MeasurementError(f"{where}: {exc}") from None
        key = (m.config.id, m.per, m.steps, m.precision)
        if key in seen:
            raise MeasurementError(f"{where}: duplicate of line {seen[key]} (config {m.config.id}, per {m.per}, "
                                   f"{m.precision}); average repeated timings into one row")
        seen[key] = line
        out.append(m)
    if not out:
        raise MeasurementError(f"{path}: no measurements (only a header)")
    return out


def _measurement(row: dict[str, str], *, space: SearchSpace, profile: DeviceProfile, line: int) -> Measurement:
    cfg = resolve_config(space, row["config"])
    try:
        ms = float(row["ms"])
    except ValueError:
        raise ValueError(f"ms must be a number of milliseconds, got {row['ms']!r}") from None
    if not math.isfinite(ms) or ms <= 0:
        raise ValueError(f"ms must be a positive number of milliseconds, got {row['ms']!r}")
    per = row["per"]
    if per not in _PERS:
        raise ValueError(f"per must be one of {', '.join(_PERS)}, got {per!r}")
    steps = None
    if row.get("steps"):
        try:
            steps = int(row["steps"])
        except ValueError:
            steps = 0
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {row['steps']!r}")
    if per == "image" and steps is None:
        raise ValueError("a per-image time needs the steps column")
    precision = row.get("precision") or profile.default_precision
    if precision not in PRECISIONS or precision not in profile.peak_gflops:
        raise ValueError(f"precision must be one the {profile.name} profile has ({', '.join(profile.precisions)}), "
                         f"got {precision!r}")
    return Measurement(cfg, ms, per, steps, precision, row.get("runtime", ""), row.get("note", ""), line)


def measured_step_ms(m: Measurement, profile: DeviceProfile, space: SearchSpace) -> float:
    """The denoiser step time a measurement implies (one pass per step; see the module docstring)."""
    if m.per == "step":
        return m.ms
    text = profile.text_encoder.latency_ms.require(f"{profile.name}: pipeline.text_encoder.latency_ms")
    vae = profile.vae_decoder.latency_ms.require(f"{profile.name}: pipeline.vae_decoder.latency_ms")
    if profile.vae_decoder.resolution:
        vae *= (space.resolution / profile.vae_decoder.resolution) ** 2
    assert m.steps is not None  # `_measurement` requires steps for a per-image time
    step = (m.ms - text - vae) / m.steps
    if step <= 0:
        raise MeasurementError(f"line {m.line}: {m.ms:g} ms per image is less than the profile's text encoder and "
                               f"VAE decoder ({text + vae:g} ms); is it per step?")
    return step


class _Design:
    """The primitives of each measured sub-DiT as arrays, to evaluate and differentiate the model fast."""

    def __init__(self, profile: DeviceProfile, space: SearchSpace, measurements: list[Measurement],
                 attention: AttentionLowering) -> None:
        self.rows: list[dict[str, np.ndarray]] = []
        for m in measurements:
            per_kind: dict[str, list[tuple[float, float, float]]] = {k: [] for k in COST_KINDS}
            for key, count in kernel_counts(m.config, space, precision=m.precision):
                for kind, c, b in kernel_terms(key, profile, attention):
                    per_kind[kind].append((count, c, b))
            self.rows.append({k: np.array(v, dtype=float).reshape(-1, 3) for k, v in per_kind.items()})

    def predict(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(predicted step ms per row, d predicted / d theta per row)."""
        p = np.exp(theta).reshape(len(COST_KINDS), len(PARAM_NAMES))
        f = np.zeros(len(self.rows))
        jac = np.zeros((len(self.rows), theta.size))
        for i, row in enumerate(self.rows):
            for j, kind in enumerate(COST_KINDS):
                w, c, b = row[kind].T
                ec, em, oh = p[j]
                tc, tm = c / ec, b / em
                compute = tc >= tm
                f[i] += float(np.sum(w * np.where(compute, tc, tm)) + w.sum() * oh)
                base = j * len(PARAM_NAMES)
                jac[i, base] = -float(np.sum(w * tc * compute))
                jac[i, base + 1] = -float(np.sum(w * tm * ~compute))
                jac[i, base + 2] = float(w.sum() * oh)
        return f, jac


def _fit(design: _Design, y: np.ndarray, prior: np.ndarray, prior_sd: np.ndarray, rows: list[int]) -> np.ndarray:
    from scipy.optimize import least_squares

    def residuals(theta: np.ndarray) -> np.ndarray:
        f, _ = design.predict(theta)
        return np.concatenate([(y[rows] - np.log(f[rows])) / MEASUREMENT_LOG_SD, (theta - prior) / prior_sd])

    def jacobian(theta: np.ndarray) -> np.ndarray:
        f, df = design.predict(theta)
        top = -(df[rows] / f[rows, None]) / MEASUREMENT_LOG_SD
        return np.vstack([top, np.diag(1 / prior_sd)])

    if not rows:
        return np.copy(prior)
    fit = least_squares(residuals, prior.copy(), jac=jacobian, method="trf", x_scale="jac")  # scipy has no types
    return np.asarray(fit.x)


@dataclass(frozen=True)
class Calibration:
    """A fit: the new parameters (with their error model) and a row per measurement."""

    params: EstimatorParams
    rows: list[dict[str, Any]]
    loo_mape_pct: float
    loo_max_pct: float
    note: str

    def record(self, *, file: str, sha256: str, date: str) -> dict[str, Any]:
        """What the sidecar stores (`TableMeta.calibration_fit`)."""
        return {"file": file, "sha256": sha256, "date": date, "k": len(self.rows), "rows": self.rows,
                "loo_mape_pct": self.loo_mape_pct, "loo_max_pct": self.loo_max_pct, "note": self.note,
                "measurement_log_sd": MEASUREMENT_LOG_SD, "prior_log_sd": dict(PRIOR_LOG_SD),
                "priors": {k: vars(v) for k, v in self.params.priors.items()}}


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def calibrate(profile: DeviceProfile, space: SearchSpace, measurements: list[Measurement], *,
              prior: EstimatorParams, source: str) -> Calibration:
    """Fit `prior`'s parameters to `measurements` (see the module docstring). `source` names the data
    ("calibrated on k measurements (file, sha256, date)"). Raises `MeasurementError` for a time more than
    `IMPLAUSIBLE_RATIO` from the prior's prediction."""
    if not measurements:
        raise MeasurementError("no measurements to calibrate on")
    design = _Design(profile, space, measurements, prior.attention)
    y = np.log([measured_step_ms(m, profile, space) for m in measurements])
    theta0 = np.array(prior.prior_vector())
    sd = np.array([PRIOR_LOG_SD[n] for _ in COST_KINDS for n in PARAM_NAMES])
    f0, _ = design.predict(theta0)
    for m, yi, fi in zip(measurements, y, f0):
        ratio = math.exp(yi) / fi
        if not 1 / IMPLAUSIBLE_RATIO <= ratio <= IMPLAUSIBLE_RATIO:
            raise MeasurementError(
                f"line {m.line}: {math.exp(yi):,.4g} ms per step for {m.config.describe()} is {ratio:.3g}x the "
                f"prior's {fi:,.4g} ms (more than {IMPLAUSIBLE_RATIO:g}x off: seconds written as milliseconds, "
                f"per image as per step, or the wrong device?)")
    everything = list(range(len(measurements)))
    theta = _fit(design, y, theta0, sd, everything)
    fitted, _ = design.predict(theta)
    loo = []
    for i in everything:
        f_i, _ = design.predict(_fit(design, y, theta0, sd, [j for j in everything if j != i]))
        loo.append(float(y[i] - math.log(f_i[i])))
    rows: list[dict[str, Any]]
    rows = [{"line": m.line, "config_id": m.config.id, "describe": m.config.describe(), "precision": m.precision,
             "runtime": m.runtime, "note": m.note, "measured_step_ms": round(math.exp(yi), 4),
             "prior_step_ms": round(float(p0), 4), "fitted_step_ms": round(float(fi), 4),
             "residual_pct": round(100 * (math.exp(yi) / float(fi) - 1), 3),
             "loo_residual_pct": round(100 * (math.exp(r) - 1), 3)}
            for m, yi, p0, fi, r in zip(measurements, y, f0, fitted, loo)]
    k = len(measurements)
    loo_pct = [abs(r["loo_residual_pct"]) for r in rows]
    note = ("" if k >= len(theta) else
            f"{k} measurement(s) for {len(theta)} parameters: a regularised fit, the priors set what the "
            f"measurements cannot")
    error: ErrorModel = calibrated_error(loo, source=source, prior=shape_prior(profile.kind, profile.threads))
    kinds_text = ", ".join(f"{kd} x{math.exp(theta[j * 3] - theta0[j * 3]):.2f}"
                           f"/x{math.exp(theta[j * 3 + 1] - theta0[j * 3 + 1]):.2f}"
                           for j, kd in enumerate(COST_KINDS))
    loo_text = (f"the prior alone was {rows[0]['loo_residual_pct']:+.1f}% off" if k == 1
                else f"leave-one-out MAPE {sum(loo_pct) / k:.1f}%")
    calibration = (f"{source}: MAP fit of the per-kind parameters around their priors (compute/memory efficiency "
                   f"moved {kinds_text}); {loo_text}")
    params = prior.with_vector(theta.tolist(), calibration=calibration, error=error)
    return Calibration(params=params, rows=rows, loo_mape_pct=sum(loo_pct) / k, loo_max_pct=max(loo_pct), note=note)


def calibration_source(path: str | Path, *, k: int, sha256: str, date: str | None = None) -> str:
    """"calibrated on k measurements (file, sha256, date)"."""
    date = date or _dt.date.today().isoformat()
    return (f"calibrated on {k} measurement{'s' if k != 1 else ''} "
            f"({Path(path).as_posix()}, sha256 {sha256[:16]}, {date})")


def calibrated_table(profile: DeviceProfile, space: SearchSpace, measurements_path: str | Path, *,
                     experiment_path: str, prior: EstimatorParams | None = None,
                     date: str | None = None) -> tuple[LatencyTable, Calibration]:
    """Read, check and fit `measurements_path`; return `profile`'s estimated table with the fitted
    parameters (source "calibrated on k measurements (file, sha256, date)") and the fit. Writes nothing."""
    date = date or _dt.date.today().isoformat()
    measurements = read_measurements(measurements_path, space=space, profile=profile)
    sha = file_sha256(measurements_path)
    source = calibration_source(measurements_path, k=len(measurements), sha256=sha, date=date)
    fit = calibrate(profile, space, measurements, prior=prior or prior_params(profile), source=source)
    table = build_estimated_table(profile, space, fit.params, experiment_path=experiment_path, date=date)
    record = fit.record(file=Path(measurements_path).as_posix(), sha256=sha, date=date)
    return replace(table, meta=replace(table.meta, calibration_fit=record)), fit


def estimated_table(profile: DeviceProfile, space: SearchSpace, *, experiment_path: str,
                    precisions: tuple[Precision, ...] = (), donor: LatencyTable | None = None) -> LatencyTable:
    """`profile`'s roofline-estimated table at `precisions` (default: every precision it has a peak
    for), from its priors, or from `donor`'s calibrated parameters where given (an assumption: the two
    devices are alike). Writes nothing."""
    missing = [p for p in precisions if p not in profile.peak_gflops]
    if missing:
        raise ValueError(f"device {profile.name!r} has no peak for precision {missing[0]!r} "
                         f"(it has {list(profile.precisions)})")
    params = prior_params(profile)
    if donor is not None:
        if donor.meta.source != "estimated":
            raise ValueError(f"the {donor.meta.device}/{donor.meta.experiment} table is {donor.meta.source}; "
                             "--prior-from needs an estimated (ideally calibrated) table")
        params = borrow_params(profile, params_from_meta(donor.meta), donor_name=donor.meta.device)
    return build_estimated_table(profile, space, params, experiment_path=experiment_path,
                                 precisions=precisions or None)


PROBE_EXPERIMENT = "experiments/shapes-32.toml"
"""The dispatch probe: this experiment's smallest sub-DiT (64 tokens of width 24), almost nothing but dispatch."""


def dispatch_overhead_us(profile: DeviceProfile, space: SearchSpace, cfg: SubnetConfig, step_ms: float, *,
                         precision: Precision | None = None) -> tuple[float, int]:
    """(overhead per primitive in us, primitives) of `cfg` measured at `step_ms` a step on `profile`'s device:
    the time its prior roofline (no overheads; the profile's lowering and element-wise passes) does not
    explain, spread over its primitives. Raises ValueError where the roofline explains it all."""
    params = prior_params(profile)
    roofline, primitives = 0.0, 0
    for key, count in kernel_counts(cfg, space, precision=precision or profile.default_precision):
        for kind, compute_ms, memory_ms in kernel_terms(key, profile, params.attention):
            p = params.kinds[kind]
            roofline += count * max(compute_ms / p.eff_compute, memory_ms / p.eff_memory)
            primitives += count
    if not math.isfinite(step_ms) or step_ms <= roofline:
        raise ValueError(f"{step_ms:g} ms a step of {cfg.describe()} is not above its roofline time {roofline:.4g} ms "
                         f"on {profile.name}: no dispatch overhead to measure (is it per step, in milliseconds?)")
    return 1e3 * (step_ms - roofline) / primitives, primitives


def dispatch_figure(profile: DeviceProfile, space: SearchSpace, step_ms: float, *, how: str,
                    precision: Precision | None = None) -> tuple[Figure, int]:
    """`profile`'s `[runtime.dispatch]` overhead (us) from the smallest sub-DiT of `space` timed at `step_ms`
    a step, with its source (`how`: how it was timed), and the probe's primitives."""
    cfg = space.smallest()
    precision = precision or profile.default_precision
    us, primitives = dispatch_overhead_us(profile, space, cfg, step_ms, precision=precision)
    source = (f"measured: the smallest {space.name} sub-DiT ({cfg.describe()}) on {profile.name}, {step_ms:g} ms a "
              f"step ({precision}; {how}), less its roofline time, over its {primitives} primitives")
    return Figure(round(us, 2), source), primitives


def half_speedup_figure(flops: Sequence[float], ms_one: Sequence[float], ms_many: Sequence[float], threads: int, *,
                        how: str) -> Figure:
    """A runtime's `[runtime.threading]` figure (MFLOP) from primitives of `flops` timed on one thread
    (`ms_one`) and on `threads` (`ms_many`), with its source (`how`: what was timed).

    Fits ms_many = ms_one / thread_speedup(flops, threads, h) + o by least squares in log time: h on a
    log grid (0.1 MFLOP to 10 GFLOP) refined around its best point, o >= 0 (the threads' wake-up per
    call) the median gap at each h. Raises ValueError for fewer than three sizes, one thread, or a time
    that is not positive."""
    from scipy.optimize import minimize_scalar

    if threads < 2:
        raise ValueError(f"thread scaling needs timings on more than one thread, got threads={threads}")
    if not len(flops) == len(ms_one) == len(ms_many) or len(flops) < 3:
        raise ValueError(f"need >= 3 sizes each timed on one and on {threads} threads, got {len(flops)}, "
                         f"{len(ms_one)} and {len(ms_many)}")
    if not all(math.isfinite(x) and x > 0 for x in (*flops, *ms_one, *ms_many)):
        raise ValueError("FLOPs and times must be positive and finite")
    f, one, many = np.asarray(flops, float), np.asarray(ms_one, float), np.asarray(ms_many, float)

    def fit(log_h: float) -> tuple[float, float]:
        """(sum of squared log residuals, o) at h = exp(log_h)."""
        scaled = one / np.array([thread_speedup(x, threads, math.exp(log_h)) for x in f])
        o = max(0.0, float(np.median(many - scaled)))
        return float(np.sum(np.log((scaled + o) / many) ** 2)), o

    grid = np.linspace(math.log(1e5), math.log(1e10), 201)
    start = min(grid, key=lambda g: fit(float(g))[0])
    step = float(grid[1] - grid[0])
    best = minimize_scalar(lambda g: fit(g)[0], bounds=(start - step, start + step), method="bounded")
    err, o = fit(float(best.x))
    h, rms = math.exp(float(best.x)), math.sqrt(err / len(f))
    return Figure(round(h / 1e6, 2), f"measured: {how}; {len(f)} sizes of {f.min() / 1e6:.3g}-{f.max() / 1e6:.4g} "
                                     f"MFLOP on 1 and {threads} threads, fit with {1e3 * o:.0f} us per call "
                                     f"(log RMS {rms:.3f})")


THREADING_COLUMNS: tuple[str, ...] = ("mflop", "ms_one", "ms_threads")


def read_threading(path: str | Path) -> tuple[list[float], list[float], list[float]]:
    """(FLOPs, ms on one thread, ms on the device's threads) per row of a `THREADING_COLUMNS` CSV; a
    missing column or a value that is not a positive number raises ValueError naming the line."""
    text = Path(path).read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    missing = [c for c in THREADING_COLUMNS if c not in (rows[0] if rows else {})]
    if missing:
        raise ValueError(f"{path}: needs a header with columns {', '.join(THREADING_COLUMNS)} and one row per "
                         f"timed primitive; missing {', '.join(missing)}")
    out: tuple[list[float], list[float], list[float]] = ([], [], [])
    for line, row in enumerate(rows, start=2):
        for values, column, scale in zip(out, THREADING_COLUMNS, (1e6, 1.0, 1.0)):
            try:
                value = float(row[column])
            except (TypeError, ValueError):
                value = math.nan
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{path}, line {line}: {column} must be a positive number, got {row[column]!r}")
            values.append(value * scale)
    return out


def calibration_lines(table: LatencyTable, fit: Calibration) -> list[str]:
    """What `hwnas lut calibrate` prints: one line per measurement (measured, prior, fitted, residual,
    left-out residual), the leave-one-out error, the fit's note and the interval it gives."""
    lines = [f"line {r['line']:>3}  {r['describe']:<44s} measured {r['measured_step_ms']:>10,.2f}  prior "
             f"{r['prior_step_ms']:>10,.2f}  fitted {r['fitted_step_ms']:>10,.2f} ms/step  "
             f"({r['residual_pct']:+.1f}%; left out {r['loo_residual_pct']:+.1f}%)" for r in fit.rows]
    k = len(fit.rows)
    lines.append(f"leave-one-out error: MAPE {fit.loo_mape_pct:.1f}%, max {fit.loo_max_pct:.1f}% over {k} "
                 f"measurement{'s' if k != 1 else ''}"
                 + (" (with one row: the uncalibrated prior's error)" if k == 1 else ""))
    if fit.note:
        lines.append(f"note: {fit.note}")
    lines.append(f"interval: {table.error_model.describe(0.9)}")
    return lines

