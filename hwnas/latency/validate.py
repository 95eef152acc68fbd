"""Validation of a measured LUT: predicted vs measured end-to-end step latency of held-out sub-DiTs.

Held-out sub-DiTs are drawn with `random.Random(f"hwnas-validate-{seed}")`; a disjoint calibration
sample with `random.Random(f"hwnas-calibrate-{seed}")` (held-out configs removed). Each sub-DiT's
whole denoiser step is compiled and timed with `time_subnet_tvm` (same compiler, target, threads
and batch 1 as the LUT kernels) and compared with the LUT prediction `predict_latency_ms(...).step_ms`.

Reported: share within +-5 % and +-10 %, MAPE, max |error|, signed bias,
Spearman and Kendall (tau-b), and the false-feasible rate at a budget (the median predicted latency
of the held-out sample): of the sub-DiTs predicted to fit the budget, the share that do not. The
same for the LUT after a linear correction `a * pred + b` and for a FLOPs-linear baseline
`a * flops + b`, both fitted on the calibration sample only. The noise floor is one sub-DiT
compiled once and timed `noise_repeats` times. The statistics here are pure functions.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from hwnas.cost import flops_per_step
from hwnas.latency.predict import predict_latency_ms
from hwnas.latency.profile import DeviceProfile, host_cpu
from hwnas.latency.table import LatencyTable, Timing, tvm_version
from hwnas.space import SearchSpace, SubnetConfig

Measure = Callable[[SubnetConfig], Timing]


# Statistics (pure) ---------------------------------------------------------------------------


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks 1..n, ties get their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks); NaN when either side is constant."""
    _check_pair(x, y)
    return _pearson(_ranks(x), _ranks(y))


def kendall(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (ties corrected; O(n^2)); NaN when either side is constant."""
    _check_pair(x, y)
    concordant = discordant = ties_x = ties_y = 0
    n = len(x)
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denom if denom > 0 else float("nan")


def fit_linear(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a * x + b. ValueError with fewer than 2 distinct x."""
    _check_pair(x, y)
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        raise ValueError(f"need at least 2 distinct x values to fit a line, got {sorted(set(x))}")
    a = sum((u - mx) * (v - my) for u, v in zip(x, y)) / sxx
    return a, my - a * mx


def accuracy(predicted_ms: Sequence[float], measured_ms: Sequence[float], *, budget_ms: float) -> dict[str, float]:
    """Agreement of predictions with measurements (percent errors relative to the measurement).

    `false_feasible_rate`: among predictions <= `budget_ms`, the share whose measurement exceeds
    it (0 when nothing is predicted feasible).
    """
    _check_pair(predicted_ms, measured_ms)
    if any(m <= 0 for m in measured_ms):
        raise ValueError("measured latencies must be > 0")
    err = [100.0 * (p - m) / m for p, m in zip(predicted_ms, measured_ms)]
    n = len(err)
    feasible = [(p, m) for p, m in zip(predicted_ms, measured_ms) if p <= budget_ms]
    false_feasible = sum(1 for _, m in feasible if m > budget_ms)
    return {
        "n": n,
        "within_5pct": sum(abs(e) <= 5 for e in err) / n,
        "within_10pct": sum(abs(e) <= 10 for e in err) / n,
        "mape": statistics.fmean(abs(e) for e in err),
        "max_abs_pct": max(abs(e) for e in err),
        "bias_pct": statistics.fmean(err),
        "spearman": spearman(predicted_ms, measured_ms) if n > 1 else float("nan"),
        "kendall": kendall(predicted_ms, measured_ms) if n > 1 else float("nan"),
        "budget_ms": budget_ms,
        "false_feasible_rate": false_feasible / len(feasible) if feasible else 0.0,
        "predicted_feasible": len(feasible),
    }


def interval_check(predicted_ms: Sequence[float], measured_ms: Sequence[float], *, confidence: float,
                   budget_ms: float, folds: int = 2) -> dict[str, float]:
    """Cross-fitted check of `validated_error` intervals: the sample is cut into `folds` interleaved
    parts; each part is judged by an error model fitted on the others. Returns the share of
    measurements inside the central `confidence` interval (`coverage`), and among sub-DiTs whose
    one-sided `confidence` upper bound is <= `budget_ms`, the share measured over it
    (`false_feasible_rate`), with `predicted_feasible`."""
    from hwnas.latency.interval import validated_error

    _check_pair(predicted_ms, measured_ms)
    inside = feasible = false_feasible = 0
    for f in range(folds):
        train = [i for i in range(len(predicted_ms)) if i % folds != f]
        err = validated_error([predicted_ms[i] for i in train], [measured_ms[i] for i in train], source="fold")
        lo, hi, upper = err.ratio((1 - confidence) / 2), err.ratio((1 + confidence) / 2), err.ratio(confidence)
        for i in range(f, len(predicted_ms), folds):
            p, m = predicted_ms[i], measured_ms[i]
            inside += p * lo <= m <= p * hi
            if p * upper <= budget_ms:
                feasible += 1
                false_feasible += m > budget_ms
    return {"confidence": confidence, "coverage": inside / len(predicted_ms), "budget_ms": budget_ms,
            "false_feasible_rate": false_feasible / feasible if feasible else 0.0, "predicted_feasible": feasible,
            "folds": folds}


def _check_pair(x: Sequence[float], y: Sequence[float]) -> None:
    if len(x) != len(y) or not x:
        raise ValueError(f"need two non-empty sequences of equal length, got {len(x)} and {len(y)}")


# Samples and measurement -----------------------------------------------------------------------


def sample_subnets(space: SearchSpace, n: int, *, seed: int, purpose: str,
                   exclude: Sequence[SubnetConfig] = ()) -> list[SubnetConfig]:
    """`n` distinct random sub-DiTs from `random.Random(f"hwnas-{purpose}-{seed}")`, none in `exclude`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    rng = random.Random(f"hwnas-{purpose}-{seed}")
    seen = {c.id for c in exclude}
    out: list[SubnetConfig] = []
    for _ in range(100 * n):
        cfg = space.sample(rng)
        if cfg.id not in seen:
            seen.add(cfg.id)
            out.append(cfg)
            if len(out) == n:
                return out
    raise ValueError(f"could not draw {n} distinct sub-DiTs from {space.name!r}")


class TvmMeasure:
    """A `Measure`: whole-step latency of `StaticDiT(space, cfg)` (random weights), compiled and timed
    with TVM on this machine like `time_subnet_tvm`.

    `prepare(cfgs)` compiles many sub-DiTs ahead, `jobs` processes at a time, into shared libraries
    under a temporary directory; `many(cfgs)` then times the prepared ones together in interleaved
    rounds (`time_interleaved`). Compiling is ~95% of the cost (~30 s vs ~0.1 s per shapes-32
    sub-DiT), and keeping it out of the timing phase means no compiler runs beside a timed step
    (on this 2-core machine a concurrent job inflated whole-step times by up to ~17%, stop 8 of
    issue 4); interleaving spreads each sub-DiT's repeats over the whole phase, past the short
    bursts of interference this shared machine has.
    """

    def __init__(self, space: SearchSpace, profile: DeviceProfile, *, jobs: int = 1, **timing: Any) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs!r}")
        self.space, self.profile, self.jobs, self.timing = space, profile, jobs, timing
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._built: dict[str, Path] = {}

    def prepare(self, cfgs: Sequence[SubnetConfig], *, progress: bool = False) -> None:
        """Compile every config in `cfgs` not compiled yet (in parallel with `jobs` > 1)."""
        from tqdm import tqdm

        from hwnas.latency.bench import run_parallel

        todo = [c for c in dict.fromkeys(cfgs) if c.id not in self._built]
        if not todo:
            return
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="hwnas-validate-")
        args = [(self.space, self.profile, c, Path(self._dir.name) / f"{c.id}.so") for c in todo]
        with tqdm(total=len(todo), desc="compile", disable=not progress, file=sys.stderr, unit="sub-DiT",
                  mininterval=0.5 if sys.stderr.isatty() else 30.0) as bar:
            for i, path in run_parallel(_compile_whole_step, args, jobs=self.jobs):
                self._built[todo[i].id] = path
                bar.update()

    def many(self, cfgs: Sequence[SubnetConfig]) -> list[Timing]:
        """Time `cfgs` together (interleaved rounds); each is compiled first if `prepare` did not."""
        from hwnas.latency.bench import DEFAULT_WARMUP, load_local, subnet_inputs, time_interleaved

        self.prepare(cfgs)
        warmup = self.timing.get("warmup", DEFAULT_WARMUP)
        calls = [load_local(self._built[c.id], subnet_inputs(self.space), threads=self.profile.threads,
                            warmup=warmup) for c in cfgs]
        kw = {k: v for k, v in self.timing.items() if k in ("repeat", "min_repeat_ms")}
        timings = time_interleaved(calls, **kw)
        for c in cfgs:
            self._built.pop(c.id).unlink(missing_ok=True)
        return timings

    def __call__(self, cfg: SubnetConfig) -> Timing:
        return self.many([cfg])[0]


def _compile_whole_step(space: SearchSpace, profile: DeviceProfile, cfg: SubnetConfig, path: Path) -> Path:
    """Compile one sub-DiT's whole step exactly as `time_subnet_tvm` does; write it to `path` (.so)."""
    from hwnas.latency.bench import _Positional, compile_module, subnet_inputs
    from hwnas.model.static import StaticDiT

    ex = compile_module(_Positional(StaticDiT(space, cfg).eval()), subnet_inputs(space), target=profile.target,
                        threads=profile.threads)
    ex.export_library(str(path))
    return path


def tvm_measure(space: SearchSpace, profile: DeviceProfile, *, jobs: int = 1, **timing: Any) -> TvmMeasure:
    """The TVM whole-step `Measure` on this machine (see `TvmMeasure`)."""
    return TvmMeasure(space, profile, jobs=jobs, **timing)


def noise_floor(cfg: SubnetConfig, space: SearchSpace, profile: DeviceProfile, *, times: int,
                pause_s: float = 2.0) -> dict[str, Any]:
    """One sub-DiT compiled once and timed `times` times, `pause_s` apart (so the floor includes the
    machine's slow drift, not only back-to-back repeats): spread of the medians (percent of their median)."""
    from hwnas.latency.bench import _Positional, _time_executable, compile_module, subnet_inputs
    from hwnas.model.static import StaticDiT

    args = subnet_inputs(space)
    ex = compile_module(_Positional(StaticDiT(space, cfg).eval()), args, target=profile.target,
                        threads=profile.threads)
    medians = []
    for i in range(times):
        if i:
            time.sleep(pause_s)
        medians.append(_time_executable(ex, args, remote=None, repeat=25, min_repeat_ms=0, warmup=3,
                                        threads=profile.threads).median_ms)
    mid = statistics.median(medians)
    dev = [100.0 * (m - mid) / mid for m in medians]
    return {"config_id": cfg.id, "times": times, "medians_ms": [round(m, 4) for m in medians],
            "cv": statistics.pstdev(medians) / statistics.fmean(medians),
            "max_abs_pct": max(abs(d) for d in dev),
            "within_5pct": sum(abs(d) <= 5 for d in dev) / times,
            "within_10pct": sum(abs(d) <= 10 for d in dev) / times}


def _read_cache(cache: Path | None, provenance: dict[str, Any]) -> dict[str, Timing]:
    """Timings in `cache` (JSON lines) measured with this `provenance`, by config id."""
    done: dict[str, Timing] = {}
    if cache is not None and cache.exists():
        for line in cache.read_text().splitlines():
            try:
                row = json.loads(line)
                if row.get("provenance") == provenance:
                    done[row["config_id"]] = Timing(**row["timing"])
            except (ValueError, KeyError, TypeError):
                continue
    return done


def _measure_all(cfgs: Sequence[SubnetConfig], measure: Measure, *, cache: Path | None, provenance: dict[str, Any],
                 progress: bool, desc: str) -> list[Timing]:
    """Measure each config; rows in `cache` (JSON lines) with the same provenance are reused (resume).

    A measure with a `prepare` method is given every config missing from the cache first; one with
    a `many` method times them all together."""
    from tqdm import tqdm

    done = _read_cache(cache, provenance)
    todo = [c for c in dict.fromkeys(cfgs) if c.id not in done]
    prepare = getattr(measure, "prepare", None)
    if prepare is not None and todo:  # compile everything first, so no compiler runs beside a timing
        prepare(todo, progress=progress)
    many = getattr(measure, "many", None)
    fresh: Iterable[tuple[SubnetConfig, Timing]]
    if many is not None and todo:
        if progress:
            print(f"{desc}: timing {len(todo)} sub-DiTs together", file=sys.stderr)
        fresh = list(zip(todo, many(todo)))
    else:
        fresh = ((c, measure(c)) for c in tqdm(todo, desc=desc, disable=not progress, file=sys.stderr,
                                                unit="sub-DiT", mininterval=0.5 if sys.stderr.isatty() else 30.0))
    for cfg, timing in fresh:
        done[cfg.id] = timing
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            with cache.open("a") as fh:
                fh.write(json.dumps({"config_id": cfg.id, "provenance": provenance, "timing": timing.__dict__}) + "\n")
    return [done[c.id] for c in cfgs]


def validate_table(table: LatencyTable, space: SearchSpace, profile: DeviceProfile, *, n: int, seed: int,
                   n_calibration: int = 20, noise_repeats: int = 5, measure: Measure | None = None,
                   cache: str | Path | None = None, progress: bool = True, jobs: int = 1) -> dict[str, Any]:
    """Validate `table` on `n` held-out sub-DiTs (see the module docstring); returns the JSON report.

    Every kernel of every sampled sub-DiT must be in the table (`MissingKernelError` otherwise).
    `measure` defaults to compiling and timing with TVM on this machine: every sub-DiT not in
    `cache` is compiled first (`jobs` processes), then all are timed one after another.
    """
    start = time.perf_counter()
    held_out = sample_subnets(space, n, seed=seed, purpose="validate")
    calibration = sample_subnets(space, n_calibration, seed=seed, purpose="calibrate", exclude=held_out)

    def predict(cfg: SubnetConfig) -> float:
        return predict_latency_ms(cfg, table, steps=1, precision="fp32", space=space).step_ms

    pred_held, pred_cal = [predict(c) for c in held_out], [predict(c) for c in calibration]  # fail fast on a key
    measure = measure or tvm_measure(space, profile, jobs=jobs)
    provenance = {"device": table.device, "target": table.meta.target, "threads": profile.threads,
                  "tvm": tvm_version(), "code_hash": table.meta.code_hash, "cpu": host_cpu()[0]}
    cache_path = Path(cache) if cache is not None else None
    timings = _measure_all([*calibration, *held_out], measure, cache=cache_path, provenance=provenance,
                           progress=progress, desc="calibration + held-out")
    meas_cal = [t.median_ms for t in timings[:len(calibration)]]
    meas_timings = timings[len(calibration):]
    meas_held = [t.median_ms for t in meas_timings]
    budget = statistics.median(pred_held)

    a, b = fit_linear(pred_cal, meas_cal)
    corrected = [a * p + b for p in pred_held]
    flops_cal = [float(flops_per_step(c, space)) for c in calibration]
    fa, fb = fit_linear(flops_cal, meas_cal)
    baseline = [fa * flops_per_step(c, space) + fb for c in held_out]

    report: dict[str, Any] = accuracy(pred_held, meas_held, budget_ms=budget)
    report["corrected"] = {**accuracy(corrected, meas_held, budget_ms=budget), "a": a, "b_ms": b}
    report["baseline"] = {**accuracy(baseline, meas_held, budget_ms=budget), "a_ms_per_gflop": fa * 1e9, "b_ms": fb,
                          "what": "latency = a * FLOPs + b, least squares on the calibration sample"}
    report["measured_p10_vs_prediction"] = accuracy(pred_held, [t.p10_ms for t in meas_timings], budget_ms=budget)
    if noise_repeats > 1:
        mid = held_out[sorted(range(n), key=lambda i: pred_held[i])[n // 2]]
        report["noise_floor"] = noise_floor(mid, space, profile, times=noise_repeats)
    report.update(
        device=table.device, experiment=space.name, seed=seed, n_calibration=len(calibration),
        threads=profile.threads, tvm_version=tvm_version(), host_cpu=host_cpu()[0],
        measured_cv_median=statistics.median(t.cv for t in meas_timings),
        wall_s=time.perf_counter() - start,
        rows=[{"config_id": c.id, "predicted_ms": round(p, 4), "measured_ms": round(m, 4),
               "flops": flops_per_step(c, space)} for c, p, m in zip(held_out, pred_held, meas_held)],
    )
    return report


def reuse_report(path: str | Path, *, device: str, experiment: str) -> dict[str, Any]:
    """An earlier `hwnas lut validate --json` report, checked to be of `device` and `experiment`."""
    try:
        report: dict[str, Any] = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a validation report (not JSON: {exc})") from None
    if (report.get("device"), report.get("experiment")) != (device, experiment):
        raise ValueError(f"{path} validates {report.get('device')}/{report.get('experiment')}, "
                         f"not {device}/{experiment}")
    missing = [k for k in ("rows", "budget_ms", "seed", "n_calibration", "corrected", "baseline") if k not in report]
    if missing or not report["rows"]:
        raise ValueError(f"{path} is not a complete validation report: "
                         + (f"no {missing[0]!r}" if missing else "no measured rows"))
    return report


def check_intervals(report: dict[str, Any], *, confidence: float = 0.9) -> dict[str, Any]:
    """`report` with the cross-fitted interval check of its rows added under `interval_90`."""
    pred_ms = [r["predicted_ms"] for r in report["rows"]]
    meas_ms = [r["measured_ms"] for r in report["rows"]]
    return {**report, "interval_90": interval_check(pred_ms, meas_ms, confidence=confidence,
                                                    budget_ms=report["budget_ms"])}


def record_validation(table: LatencyTable, report: dict[str, Any], *, interval: bool, correction: bool,
                      table_dir: str | Path) -> tuple[Path, Path] | None:
    """Store what `report` measured in the table's sidecar, in one atomic rewrite: the held-out error
    (`interval`: predictions then carry intervals from it) and the fitted correction (`correction`:
    used by `predict --correct`). Returns the paths written, or None where nothing was asked."""
    from dataclasses import replace

    from hwnas.latency.interval import validated_error
    from hwnas.latency.table import Correction, write_table

    meta = table.meta
    if interval:
        rows = report["rows"]
        meta = replace(meta, error=validated_error(
            [r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows],
            source=f"hwnas lut validate --seed {report['seed']} on {len(rows)} held-out sub-DiTs "
                   f"({report.get('host_cpu')}, TVM {report.get('tvm_version')})"))
    if correction:
        c = report["corrected"]
        meta = replace(meta, correction=Correction(
            c["a"], c["b_ms"], f"measured: hwnas lut validate --seed {report['seed']}, least squares on "
                               f"{report['n_calibration']} calibration sub-DiTs disjoint from the held-out ones"))
    if meta is table.meta:
        return None
    return write_table(LatencyTable(meta, table.entries, table.text_encoder, table.vae_decoder), table_dir=table_dir)


def report_lines(report: dict[str, Any]) -> list[str]:
    """What `hwnas lut validate` prints: accuracy of the table, its correction and the FLOPs baseline,
    the 90% intervals' coverage and the noise floor."""
    lines = [f"{name:14s} n {r['n']}  within 5% {r['within_5pct']:.0%}  within 10% {r['within_10pct']:.0%}  "
             f"MAPE {r['mape']:.1f}%  max {r['max_abs_pct']:.1f}%  bias {r['bias_pct']:+.1f}%  "
             f"spearman {r['spearman']:.3f}  kendall {r['kendall']:.3f}  "
             f"false-feasible {r['false_feasible_rate']:.0%} at {r['budget_ms']:.2f} ms"
             for name, r in (("LUT", report), ("LUT corrected", report["corrected"]),
                             ("FLOPs-linear", report["baseline"]))]
    if "interval_90" in report:
        iv = report["interval_90"]
        lines.append(f"90% intervals  coverage {iv['coverage']:.0%}; at the one-sided 90% bound, false-feasible "
                     f"{iv['false_feasible_rate']:.0%} of {iv['predicted_feasible']} at {iv['budget_ms']:.2f} ms "
                     f"({iv['folds']}-fold cross-fitted)")
    if "noise_floor" in report:
        nf = report["noise_floor"]
        lines.append(f"noise floor    same sub-DiT x{nf['times']}: CV {nf['cv']:.1%}, max {nf['max_abs_pct']:.1f}% "
                     f"from the median")
    return lines

