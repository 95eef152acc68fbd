"""Few-shot transfer of the per-op-kind cost model to runtimes the latency tables were not built on.

Usage (from the repository root):

    PYTHONPATH=. .venv/bin/python benchmarks/transfer.py [--n 60] [--seed 0] [--rounds 31]
        [--targets onnxruntime-1t,onnxruntime-2t,torch-eager-1t,torch-eager-2t] [--json reports/transfer.json]

With `--json OUT` the report goes to OUT and its plot beside it (OUT with .png); without it both are
only printed (the table and a summary line of each target's shares against the goals).

Targets, all fp32 on this machine's CPU, none of which any table was built with: onnxruntime (CPU
provider) and PyTorch eager, each at 1 and at 2 threads. Each times one denoising step (batch 1) of
`n` random sub-DiTs of `experiments/snapgenpp-256.toml` (`StaticDiT`, random weights; onnxruntime runs
its `export_onnx` graph), in `rounds` rounds; each round times every (target, sub-DiT) pair once, in
a fresh random order, so slow spells of this shared machine fall on all of them alike. A pair's time
is the median over rounds. One-thread targets are timed in thread CPU time, 2-thread ones in wall
time with threads that sleep while they wait (`OMP_WAIT_POLICY=PASSIVE`, onnxruntime's
`session.intra_op.allow_spinning` off): with OpenMP's default spin-waiting, a thread that waits at a
barrier for its descheduled partner burns its time slice, and on this shared 2-core machine (load
average 4-10) one 60 ms step took 0.2-7.7 s (median 583 ms against 89 ms passive, measured here).
Timings are cached in `runs/transfer/` (keyed by CPU, library versions and the experiment), so a
rerun only redoes the analysis.

Prior per target: the host profile (`device_profiles/host.toml`: peaks of the machine the host table
was measured on, 2 threads) with the target's thread count (the fp32 peak scaled by threads / 2), its
attention lowering (`fused_dense` for PyTorch eager, `materialized` for the exported graph's
MatMul-Softmax-MatMul; see `hwnas.latency.primitives`) and its dispatch overhead, measured by a probe:
the smallest sub-DiT of `experiments/shapes-32.toml` (64 tokens of width 24: almost nothing but
dispatch) timed on the target (`PROBE_CALLS` calls, median), less its roofline time at the prior,
over its primitives. The probe is the runtime's fixed cost, like the peaks: it times no sub-DiT of
the experiment under test. For PyTorch eager it also counts (torch.profiler, no timing) the
element-wise memory traffic of the probe's framework ops against the cost model's one pass per
element-wise primitive: eager runs a chain (norm, scale, shift) as one pass per op, where a graph
runtime fuses it (`DeviceProfile.elementwise_passes`; onnxruntime keeps the prior's one pass). For
a multi-thread target it times a ladder of linear layers (`GEMM_LADDER`, 2-537 MFLOP) on one thread and
on the target's threads: how much of the threads' speed-up a primitive of a given size gets
(`DeviceProfile.half_speedup_mflop`, `hwnas.latency.estimate.thread_speedup`); the probe's roofline
includes it. The targets run their GEMMs and patch convolutions from libraries (MLAS, oneDNN) at the measured peak,
not at TVM's efficiency (`hwnas.latency.estimate.library_gemm`). For each k in {1, 3, 5, 10},
sets of k measured sub-DiTs calibrate it with `hwnas.latency.calibrate` (for k = 1 each sub-DiT
once, otherwise `draws` random sets); the other n - k are predicted with the calibrated table's
`predict_latency_ms`. Reported per target and k, averaged over the sets: MAPE, the share within
+-10%, Spearman, and the share inside the prediction's 90% interval, with a bootstrap 95% interval
of that coverage over which sub-DiTs were timed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see the module docstring

import hashlib
import json
import math
import platform
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from _common import add_json, add_seed, parser, positive_int, print_summary, write_json

from hwnas.io import atomic_write, atomic_write_text
from hwnas.latency import (
    COST_KINDS,
    Figure,
    Lowering,
    Measurement,
    MeasurementError,
    build_estimated_table,
    calibrate,
    kernel_counts,
    load_profile,
    predict_latency_ms,
    prior_params,
)
from hwnas.latency.calibrate import PROBE_EXPERIMENT, dispatch_figure, half_speedup_figure
from hwnas.latency.estimate import PARAM_NAMES
from hwnas.latency.profile import DeviceProfile, host_cpu
from hwnas.latency.validate import accuracy, sample_subnets
from hwnas.space import SearchSpace, SubnetConfig, load_space

EXPERIMENT = "experiments/snapgenpp-256.toml"
PROBE_CALLS = 31
BOOTSTRAP = 1000
KS = (1, 3, 5, 10)
CONFIDENCE = 0.9
CACHE_DIR = Path("runs/transfer")
GOALS = {"within_10pct_k5": 0.90, "spearman_k5": 0.95, "within_10pct_k1": 0.70, "coverage_lo": 0.85,
         "coverage_hi": 0.95}


@dataclass(frozen=True)
class Target:
    """A runtime on this machine's CPU: `threads` intra-op threads, attention lowered as `attention`."""

    name: str
    runtime: Literal["onnxruntime", "torch"]
    threads: int
    attention: Literal["fused", "materialized", "fused_dense"]
    attention_source: str


_ORT_ATTENTION = "derived: the TorchScript ONNX export writes scaled_dot_product_attention as MatMul, Softmax, MatMul"
_EAGER_ATTENTION = ("derived: StaticDiT calls torch's scaled_dot_product_attention, a fused CPU kernel, except where "
                    "the local window mask sends it to the math path (torch.profiler: bmm, softmax, bmm)")
TARGETS = (
    Target("onnxruntime-1t", "onnxruntime", 1, "materialized", _ORT_ATTENTION),
    Target("onnxruntime-2t", "onnxruntime", 2, "materialized", _ORT_ATTENTION),
    Target("torch-eager-1t", "torch", 1, "fused_dense", _EAGER_ATTENTION),
    Target("torch-eager-2t", "torch", 2, "fused_dense", _EAGER_ATTENTION),
)


# Prior and fit (pure) --------------------------------------------------------------------------


def target_profile(host: DeviceProfile, target: Target, dispatch_us: Figure | None = None, *,
                   elementwise_passes: Figure | None = None, half_speedup: Figure | None = None) -> DeviceProfile:
    """`host` as a prior for `target`: same CPU figures, the target's threads, attention lowering, dispatch
    overhead, element-wise passes and thread scaling (from `probe_figures` and `threading_figure`; None:
    the device kind's assumed ones, every primitive at the full speed-up of its threads)."""
    peak = host.peak_gflops["fp32"]
    return replace(host, name=f"host-{target.name}", threads=target.threads, runtime=target.runtime,
                   description=f"{host.description}; runtime {target.runtime}, {target.threads} thread(s)",
                   peak_gflops={"fp32": Figure(peak.value * target.threads / 2,
                                               f"assumed: host fp32 peak x {target.threads}/2 threads "
                                               f"({peak.source})")},
                   attention=Lowering(target.attention, target.attention_source), dispatch_us=dispatch_us,
                   elementwise_passes=elementwise_passes, half_speedup_mflop=half_speedup)


def fit_and_predict(profile: DeviceProfile, space: SearchSpace, calib: list[tuple[SubnetConfig, float]],
                    held_out: list[SubnetConfig], *, confidence: float = CONFIDENCE
                    ) -> list[tuple[float, float, float]]:
    """Calibrate `profile`'s prior on `calib` (config, measured step ms; none: the prior alone); (predicted,
    lo, hi) step ms of each of `held_out` at the central `confidence` interval."""
    params = prior_params(profile)
    if calib:
        measurements = [Measurement(cfg, ms, "step", None, "fp32", line=i + 2) for i, (cfg, ms) in enumerate(calib)]
        params = calibrate(profile, space, measurements, prior=params, source=f"{len(calib)} timed sub-DiTs").params
    keys = list(dict.fromkeys(key for cfg in held_out for key, _ in kernel_counts(cfg, space, precision="fp32")))
    table = build_estimated_table(profile, space, params, experiment_path=EXPERIMENT, precisions=("fp32",),
                                  keys=keys, date="-")
    out = []
    for cfg in held_out:
        pred = predict_latency_ms(cfg, table, steps=1, precision="fp32", space=space)
        iv = pred.interval(confidence)
        out.append((pred.step_ms, iv.step_ms_lo, iv.step_ms_hi))
    return out


def score(predicted: list[tuple[float, float, float]], measured: list[float]) -> dict[str, float]:
    """MAPE (%), share within +-10%, Spearman, and share of measurements inside [lo, hi]."""
    acc = accuracy([p for p, _, _ in predicted], measured, budget_ms=statistics.median(measured))
    inside = sum(lo <= m <= hi for (_, lo, hi), m in zip(predicted, measured))
    return {"mape": acc["mape"], "within_10pct": acc["within_10pct"], "spearman": acc["spearman"],
            "bias_pct": acc["bias_pct"], "coverage_90": inside / len(measured)}


def evaluate(profile: DeviceProfile, space: SearchSpace, cfgs: list[SubnetConfig], measured: list[float], *,
             k: int, draws: int, seed: int) -> dict[str, Any]:
    """Metrics for k calibration sub-DiTs (the rest held out), averaged over calibration sets: every
    sub-DiT once for k = 1 (no draw noise), else `draws` random sets (`sets` counts them).
    A set whose calibration refuses a time (over `IMPLAUSIBLE_RATIO` from the prior) counts in
    `refused`. `coverage_90_ci`: see `coverage_interval`."""
    rng = random.Random(f"hwnas-transfer-{seed}-{profile.name}-{k}")
    sets = [[i] for i in range(len(cfgs))] if k == 1 else [rng.sample(range(len(cfgs)), k) for _ in range(draws)]
    per_draw, inside, scored, refused = [], [], [], 0
    for idx in sets:
        rest = [i for i in range(len(cfgs)) if i not in idx]
        try:
            pred = fit_and_predict(profile, space, [(cfgs[i], measured[i]) for i in idx], [cfgs[i] for i in rest])
        except MeasurementError:
            refused += 1
            continue
        per_draw.append(score(pred, [measured[i] for i in rest]))
        inside.append({i: lo <= measured[i] <= hi for i, (_, lo, hi) in zip(rest, pred)})
        scored.append(idx)
    names = ("mape", "within_10pct", "spearman", "bias_pct", "coverage_90")
    out: dict[str, Any] = {m: statistics.fmean(d[m] for d in per_draw) if per_draw else None for m in names}
    out["coverage_90_ci"] = coverage_interval(inside, scored, len(cfgs), seed=seed) if inside else None
    out["within_10pct_min"] = min((d["within_10pct"] for d in per_draw), default=None)
    out.update(sets=len(sets), refused=refused, held_out=len(cfgs) - k)
    return out


def coverage_interval(inside: list[dict[int, bool]], calib: list[list[int]], n: int, *, seed: int,
                      resamples: int = BOOTSTRAP) -> tuple[float, float]:
    """Bootstrap 95% interval of the coverage over calibration sets, resampling the n sub-DiTs: both the
    held-out ones and the calibration rows (set d's weight is the mean weight of its rows `calib[d]`; for
    k = 1 the coverage is then the weighted mean over ordered (calibration, held-out) pairs). `inside[d][i]`
    says whether sub-DiT i, held out in set d, fell inside its interval. The random sets' own draw noise
    (k > 1) is not in it."""
    import numpy as np

    held = np.zeros((len(inside), n))
    hit = np.zeros((len(inside), n))
    for d, row in enumerate(inside):
        for i, ok in row.items():
            held[d, i], hit[d, i] = 1.0, float(ok)
    rng = np.random.default_rng(seed)
    weight = rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(float)  # (resamples, n)
    set_weight = np.stack([weight[:, rows].mean(axis=1) for rows in calib], axis=1)  # (resamples, sets)
    covered = (set_weight * (weight @ hit.T)).sum(axis=1)
    total = (set_weight * (weight @ held.T)).sum(axis=1)
    lo, hi = np.quantile(covered[total > 0] / total[total > 0], [0.025, 0.975])
    return float(lo), float(hi)


def in_sample_fit(profile: DeviceProfile, space: SearchSpace, cfgs: list[SubnetConfig],
                  measured: list[float]) -> dict[str, Any]:
    """A diagnosis, not a prediction: calibrate on all `cfgs` and report each kind's fitted parameters
    over their priors (which op kind's prior is off on this target), the in-sample MAPE and the
    leave-one-out residuals' MAPE and root mean square in log space (the cost model's shape error)."""
    params = prior_params(profile)
    measurements = [Measurement(c, ms, "step", None, "fp32", line=i + 2)
                    for i, (c, ms) in enumerate(zip(cfgs, measured))]
    try:
        fit = calibrate(profile, space, measurements, prior=params, source=f"all {len(cfgs)} timed sub-DiTs")
    except MeasurementError as exc:
        return {"refused": str(exc)}
    ratio = {k: {n: round(getattr(fit.params.kinds[k], n) / getattr(params.kinds[k], n), 3) for n in PARAM_NAMES}
             for k in COST_KINDS}
    mape = statistics.fmean(abs(r["residual_pct"]) for r in fit.rows)
    loo_log = [math.log1p(r["loo_residual_pct"] / 100) for r in fit.rows]
    return {"fitted_over_prior": ratio, "in_sample_mape": mape, "loo_mape": fit.loo_mape_pct,
            "loo_log_rms": math.sqrt(statistics.fmean(x * x for x in loo_log))}


# Measurement -----------------------------------------------------------------------------------


def _provenance(space_path: str) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    return {"cpu": host_cpu()[0], "machine": platform.machine(), "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "experiment_sha256": hashlib.sha256(Path(space_path).read_bytes()).hexdigest()}


def _load_cache(path: Path, provenance: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data["samples_ms"] if data.get("provenance") == provenance else {}


def _save_cache(path: Path, provenance: dict[str, Any], samples: dict[str, dict[str, list[float]]]) -> None:
    atomic_write_text(path, json.dumps({"provenance": provenance, "samples_ms": samples}))


def _ort_options(threads: int) -> Any:
    """onnxruntime session options: `threads` intra-op threads that sleep while they wait (onnxruntime's
    spin-waiting does on this shared machine what OpenMP's does; see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _callables(space: SearchSpace, cfgs: list[SubnetConfig], targets: tuple[Target, ...]) -> dict[tuple[str, str], Any]:
    """A zero-argument call per (target, config id) that runs one step; ONNX files cached under CACHE_DIR."""
    import onnxruntime as ort
    import torch

    from hwnas.model import StaticDiT, example_inputs, export_onnx
    from hwnas.model.export import INPUT_NAMES

    args = example_inputs(space)
    feed = {name: a.numpy() for name, a in zip(INPUT_NAMES, args)}
    calls: dict[tuple[str, str], Any] = {}
    for i, cfg in enumerate(cfgs):
        torch.manual_seed(i)
        model = StaticDiT(space, cfg).eval()
        if any(t.runtime == "onnxruntime" for t in targets):
            path = CACHE_DIR / "onnx" / space.name / f"{cfg.id}.onnx"
            if not path.exists():
                print(f"export {i + 1}/{len(cfgs)} {cfg.id}", file=sys.stderr, flush=True)
                tmp = export_onnx(model, path.with_suffix(".tmp.onnx"))
                tmp.replace(path)
        for t in targets:
            if t.runtime == "torch":
                def run(model: Any = model, threads: int = t.threads) -> None:
                    torch.set_num_threads(threads)
                    with torch.inference_mode():
                        model(*args)
            else:
                session = ort.InferenceSession(str(path), _ort_options(t.threads), providers=["CPUExecutionProvider"])

                def run(session: Any = session) -> None:
                    session.run(None, feed)
            calls[(t.name, cfg.id)] = run
    return calls


def measure(space: SearchSpace, cfgs: list[SubnetConfig], targets: tuple[Target, ...], *, rounds: int,
            cache: Path, seed: int) -> dict[str, dict[str, list[float]]]:
    """Per target and config id, at least `rounds` step times in ms (cached samples are kept and topped
    up; see the module docstring)."""
    provenance = _provenance(EXPERIMENT)
    samples = _load_cache(cache, provenance)
    todo = [(t, c) for t in targets for c in cfgs if len(samples.get(t.name, {}).get(c.id, [])) < rounds]
    if not todo:
        return samples
    calls = _callables(space, sorted({c for _, c in todo}, key=cfgs.index), tuple({t for t, _ in todo}))
    for t, c in todo:  # warm up: first call allocates, loads weights into cache, picks kernels
        samples.setdefault(t.name, {}).setdefault(c.id, [])
        calls[(t.name, c.id)]()
    rng = random.Random(f"hwnas-transfer-order-{seed}")
    start = time.perf_counter()
    for r in range(rounds):
        order = [(t, c) for t, c in todo if len(samples[t.name][c.id]) < rounds]
        if not order:
            break
        rng.shuffle(order)
        for t, c in order:
            clock = time.thread_time if t.threads == 1 else time.perf_counter
            t0 = clock()
            calls[(t.name, c.id)]()
            samples[t.name][c.id].append(1e3 * (clock() - t0))
        _save_cache(cache, provenance, samples)
        print(f"round {r + 1}/{rounds} done, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return samples


_NO_MEMORY_OPS = frozenset({
    "view", "reshape", "_unsafe_view", "view_as", "reshape_as", "transpose", "permute", "t", "expand", "expand_as",
    "as_strided", "unsqueeze", "squeeze", "slice", "select", "narrow", "split", "split_with_sizes", "chunk",
    "unbind", "unflatten", "flatten", "alias", "detach", "lift_fresh", "resolve_conj", "resolve_neg", "empty",
    "empty_like", "empty_strided", "result_type", "item", "_local_scalar_dense", "is_nonzero"})
"""aten ops that only make views or allocate: no pass over memory."""
_OTHER_KINDS = ("mm", "conv", "attention", "softmax", "linear", "matmul")
"""Substrings of aten ops the cost model costs as linear, conv or attention, not element-wise."""


def eager_elementwise_passes(space: SearchSpace, cfg: SubnetConfig) -> float:
    """Element-wise memory traffic of one eager step of `cfg` (torch.profiler's leaf aten ops outside
    `_NO_MEMORY_OPS` and `_OTHER_KINDS`: their tensor inputs, plus an output as large as the largest) over
    the cost model's element-wise elements for `cfg` (`fused_dense`): passes per element-wise primitive."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from hwnas.latency.primitives import op_primitives
    from hwnas.model import StaticDiT, example_inputs

    model, args = StaticDiT(space, cfg).eval(), example_inputs(space)
    with torch.inference_mode():
        model(*args)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(*args)
    traffic = 0
    for event in prof.events():
        name = event.name.removeprefix("aten::")
        if (not event.name.startswith("aten::") or name in _NO_MEMORY_OPS or any(k in name for k in _OTHER_KINDS)
                or any(c.name.startswith("aten::") and c.name[6:] not in _NO_MEMORY_OPS for c in event.cpu_children)):
            continue
        sizes = [math.prod(s) for s in event.input_shapes
                 if isinstance(s, list) and s and all(isinstance(x, int) for x in s)]
        traffic += sum(sizes) + max(sizes, default=0)
    counted = sum(count * p.act_elements for key, count in kernel_counts(cfg, space, precision="fp32")
                  for p in op_primitives(key.op, "fused_dense") if p.kind == "elementwise")
    return traffic / counted


def measure_probe(space: SearchSpace, targets: tuple[Target, ...], *, cache: Path) -> dict[str, dict[str, list[float]]]:
    """Per target, `PROBE_CALLS` step times in ms of the probe sub-DiT (the smallest of `space`, the
    PROBE_EXPERIMENT), called back to back after a warm-up; cached like `measure`'s."""
    cfg = space.smallest()
    provenance = _provenance(PROBE_EXPERIMENT)
    samples = _load_cache(cache, provenance)
    todo = tuple(t for t in targets if len(samples.get(t.name, {}).get(cfg.id, [])) < PROBE_CALLS)
    if not todo:
        return samples
    calls = _callables(space, [cfg], todo)
    for t in todo:
        call = calls[(t.name, cfg.id)]
        for _ in range(5):
            call()
        clock = time.thread_time if t.threads == 1 else time.perf_counter
        times = []
        for _ in range(PROBE_CALLS):
            t0 = clock()
            call()
            times.append(1e3 * (clock() - t0))
        samples[t.name] = {cfg.id: times}
        print(f"probe {t.name}: {statistics.median(times):.2f} ms per step", file=sys.stderr, flush=True)
    _save_cache(cache, provenance, samples)
    return samples


GEMM_LADDER = ((64, 64), (64, 256), (128, 128), (128, 512), (256, 256), (256, 1024), (512, 512), (512, 2048))
"""(in, out) features of the linear layers `measure_threading` times over 256 tokens: 2-537 MFLOP."""
GEMM_TOKENS = 256


def _linear_call(target: Target, d_in: int, d_out: int, threads: int) -> Any:
    """A zero-argument call of one linear layer over `GEMM_TOKENS` tokens on `target`'s runtime at `threads`."""
    import numpy as np
    import torch

    rng = np.random.default_rng(d_in * 10_000 + d_out)
    x = rng.standard_normal((GEMM_TOKENS, d_in), dtype=np.float32)
    w = rng.standard_normal((d_in, d_out), dtype=np.float32)
    b = rng.standard_normal(d_out, dtype=np.float32)
    if target.runtime == "torch":
        tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w.T.copy()), torch.from_numpy(b)

        def run_torch() -> None:
            torch.set_num_threads(threads)
            torch.nn.functional.linear(tx, tw, tb)
        return run_torch
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "linear",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [GEMM_TOKENS, d_in])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [GEMM_TOKENS, d_out])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), _ort_options(threads), providers=["CPUExecutionProvider"])

    def run_ort() -> None:
        session.run(None, {"x": x})
    return run_ort


def measure_threading(target: Target, *, cache: Path) -> dict[str, list[float]]:
    """For a multi-thread target: each `GEMM_LADDER` linear layer's ms per call on the target's runtime on
    one thread and on the target's threads (wall time, median of 15 repeats of 20 calls, the two thread
    counts interleaved); cached like `measure`'s. A runtime microbenchmark, like the probe: no sub-DiT."""
    provenance = _provenance(PROBE_EXPERIMENT)
    samples = _load_cache(cache, provenance)
    if target.name in samples:
        return samples[target.name]
    one, many = [], []
    for d_in, d_out in GEMM_LADDER:
        calls = {threads: _linear_call(target, d_in, d_out, threads) for threads in (1, target.threads)}
        runs: dict[int, list[float]] = {threads: [] for threads in calls}
        for rep in range(16):
            for threads, call in calls.items():
                t0 = time.perf_counter()
                for _ in range(20):
                    call()
                if rep:  # the first repeat warms up
                    runs[threads].append((time.perf_counter() - t0) / 20 * 1e3)
        one.append(statistics.median(runs[1]))
        many.append(statistics.median(runs[target.threads]))
    samples[target.name] = {"ms_one": one, "ms_many": many}
    _save_cache(cache, provenance, samples)
    return samples[target.name]


def threading_figure(target: Target, timings: dict[str, list[float]]) -> tuple[Figure, dict[str, Any]]:
    """The target's `[runtime.threading]` figure from `measure_threading`'s timings, and its record."""
    flops = [2 * GEMM_TOKENS * d_in * d_out for d_in, d_out in GEMM_LADDER]
    layer = "torch linear layers" if target.runtime == "torch" else "onnxruntime Gemm nodes"
    how = f"{layer} over {GEMM_TOKENS} tokens, wall time, median of 15 x 20 calls"
    figure = half_speedup_figure(flops, timings["ms_one"], timings["ms_many"], target.threads, how=how)
    speedups = [round(a / b, 2) for a, b in zip(timings["ms_one"], timings["ms_many"])]
    return figure, {"half_speedup_mflop": figure.value, "mflop": [round(f / 1e6, 1) for f in flops],
                    "speedup": speedups, "source": figure.source}


def eager_passes_figure(space: SearchSpace) -> Figure:
    """`eager_elementwise_passes` of the probe (the smallest sub-DiT of `space`) as a profile figure."""
    count = eager_elementwise_passes(space, space.smallest())
    return Figure(round(count, 2), f"measured: torch.profiler's element-wise traffic of the smallest {space.name} "
                                   f"sub-DiT over the cost model's, {count:.2f}x")


def probe_figures(host: DeviceProfile, target: Target, space: SearchSpace, probe_ms: list[float],
                  passes: Figure | None, half_speedup: Figure | None) -> tuple[Figure, dict[str, Any]]:
    """The target's dispatch overhead from its probe timings (the smallest sub-DiT of `space`), with
    `passes` (eager's element-wise passes, or None) and `half_speedup` (its thread scaling, or None) in
    its prior, and the probe's record."""
    step_ms = statistics.median(probe_ms)
    prior = target_profile(host, target, elementwise_passes=passes, half_speedup=half_speedup)
    overhead, primitives = dispatch_figure(prior, space, step_ms, how=f"median of {len(probe_ms)}", precision="fp32")
    return overhead, {"config": space.smallest().describe(), "step_ms": step_ms, "primitives": primitives,
                      "overhead_us": overhead.value, "elementwise_passes": passes.value if passes else None}


# Report ----------------------------------------------------------------------------------------


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4))
    nan = float("nan")
    for j, t in enumerate(report["targets"]):
        ks = [int(k) for k in t["k"]]
        rows = [t["k"][str(k)] for k in ks]
        ax1.plot(ks, [nan if m["mape"] is None else m["mape"] for m in rows], marker="o", label=t["name"])
        ax2.plot(ks, [nan if m["within_10pct"] is None else 100 * m["within_10pct"] for m in rows], marker="o",
                 label=t["name"])
        shifted = [k * (1 + 0.04 * (j - 1.5)) for k in ks]  # side by side, not on top of each other
        cov = [nan if m["coverage_90"] is None else 100 * m["coverage_90"] for m in rows]
        ci = [m["coverage_90_ci"] or (c / 100, c / 100) for c, m in zip(cov, rows)]
        err = [[max(0.0, c - 100 * lo) for c, (lo, _) in zip(cov, ci)],
               [max(0.0, 100 * hi - c) for c, (_, hi) in zip(cov, ci)]]
        ax3.errorbar(shifted, cov, yerr=err, marker="o", capsize=3, label=t["name"])
    ax1.set(xlabel="calibration sub-DiTs k", ylabel="MAPE on held-out sub-DiTs (%)")
    ax2.set(xlabel="calibration sub-DiTs k", ylabel="held-out within +-10% (%)", ylim=(0, 100))
    ax2.axhline(90, color="grey", ls=":", lw=1)
    ax3.set(xlabel="calibration sub-DiTs k", ylabel="held-out inside the 90% interval (%, 95% CI)")
    ax3.axhspan(100 * GOALS["coverage_lo"], 100 * GOALS["coverage_hi"], color="grey", alpha=0.15)
    for ax in (ax1, ax2, ax3):
        ax.set_xscale("log")
        ax.set_xticks(list(KS), [str(k) for k in KS])
        ax.grid(alpha=0.3)
    ax1.legend()
    fig.suptitle(f"Few-shot transfer of the per-op-kind cost model ({report['experiment']}, n = {report['n']})")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--n", type=positive_int, default=60, help="sub-DiTs timed per target")
    add_seed(ap, controls="the sample of sub-DiTs, the timing order and the calibration draws")
    ap.add_argument("--rounds", type=positive_int, default=31, help="timed calls per (target, sub-DiT)")
    ap.add_argument("--targets", default=",".join(t.name for t in TARGETS),
                    help="targets to time now (comma-separated); every target with cached timings is analysed")
    ap.add_argument("--draws", type=positive_int, default=20, help="random calibration sets per k")
    add_json(ap, what="the report (and its plot beside it, .png)")
    opts = ap.parse_args()
    if opts.n <= max(KS) + 2:
        ap.error(f"--n must exceed {max(KS) + 2}, got {opts.n}")
    unknown = set(opts.targets.split(",")) - {t.name for t in TARGETS}
    if unknown:
        ap.error(f"--targets: unknown {sorted(unknown)}; choose from {', '.join(t.name for t in TARGETS)}")
    space = load_space(EXPERIMENT)
    cfgs = sample_subnets(space, opts.n, seed=opts.seed, purpose="transfer")
    cache = CACHE_DIR / f"timings-{space.name}-seed{opts.seed}.json"
    wall = time.perf_counter()
    chosen = tuple(t for t in TARGETS if t.name in opts.targets.split(","))
    samples = measure(space, cfgs, chosen, rounds=opts.rounds, cache=cache, seed=opts.seed)
    probe_space = load_space(PROBE_EXPERIMENT)
    probes = measure_probe(probe_space, chosen, cache=CACHE_DIR / f"probe-{Path(PROBE_EXPERIMENT).stem}.json")
    threadings = {t.name: measure_threading(t, cache=CACHE_DIR / "threading.json")
                  for t in TARGETS if t.threads > 1 and t.name in samples}
    measure_s = time.perf_counter() - wall
    host = load_profile("host")
    probe_id = probe_space.smallest().id
    eager_passes: Figure | None = None  # counted once, for the first eager target
    report: dict[str, Any] = {"experiment": space.name, "n": opts.n, "seed": opts.seed, "rounds": opts.rounds,
                              "draws": opts.draws, "confidence": CONFIDENCE, "cpu": host_cpu()[0],
                              "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
                              "goals": GOALS, "targets": []}
    for t in TARGETS:
        have = samples.get(t.name, {})
        probe_ms = probes.get(t.name, {}).get(probe_id)
        if not all(have.get(c.id) for c in cfgs) or not probe_ms:
            print(f"{t.name}: not timed on all {len(cfgs)} sub-DiTs and the probe; skipped (time it with "
                  f"--targets {t.name})", file=sys.stderr)
            continue
        runs = [have[c.id][:opts.rounds] for c in cfgs]
        measured = [statistics.median(r) for r in runs]
        if t.runtime == "torch" and eager_passes is None:
            eager_passes = eager_passes_figure(probe_space)
        passes = eager_passes if t.runtime == "torch" else None
        half_speedup, threading = threading_figure(t, threadings[t.name]) if t.threads > 1 else (None, None)
        dispatch, probe = probe_figures(host, t, probe_space, probe_ms, passes, half_speedup)
        profile = target_profile(host, t, dispatch, elementwise_passes=passes, half_speedup=half_speedup)
        row: dict[str, Any] = {"name": t.name, "n": len(cfgs), "runtime": t.runtime, "threads": t.threads,
                               "attention": t.attention, "probe": probe, "threading": threading,
                               "rounds": min(len(r) for r in runs),
                               "clock": "thread CPU time" if t.threads == 1 else "wall",
                               "step_ms_min": min(measured), "step_ms_max": max(measured),
                               "round_spread_median": statistics.median((max(r) - min(r)) / statistics.median(r)
                                                                        for r in runs),
                               "prior": score(fit_and_predict(profile, space, [], cfgs), measured),
                               "diagnosis": in_sample_fit(profile, space, cfgs, measured), "k": {}}
        for k in KS:
            row["k"][str(k)] = evaluate(profile, space, cfgs, measured, k=k, draws=opts.draws, seed=opts.seed)
        report["targets"].append(row)
    report["measure_wall_s"] = round(measure_s, 1)
    write_json(opts.json_out, report)
    if opts.json_out:
        _plot(report, opts.json_out.with_suffix(".png"))
    print(f"{'target':<16} {'k':>5} {'MAPE%':>7} {'<=10%':>6} {'worst':>6} {'rho':>6} {'cov90':>6} "
          f"{'(95% CI)':>12} {'refused':>7}")
    for row in report["targets"]:
        for k, m in [("prior", {**row["prior"], "within_10pct_min": None, "coverage_90_ci": None, "refused": 0}),
                     *row["k"].items()]:
            if m["mape"] is None:
                print(f"{row['name']:<16} {k:>5} {'(every draw refused by the implausibility check)':>40}")
                continue
            worst = "" if m["within_10pct_min"] is None else f"{m['within_10pct_min']:.2f}"
            ci = "" if m["coverage_90_ci"] is None else "{:.2f}-{:.2f}".format(*m["coverage_90_ci"])
            print(f"{row['name']:<16} {k:>5} {m['mape']:7.1f} {m['within_10pct']:6.2f} {worst:>6} "
                  f"{m['spearman']:6.3f} {m['coverage_90']:6.2f} {ci:>12} {m['refused']:>7}")
    print_summary(summary(report))


def summary(report: dict[str, Any]) -> list[str]:
    """Per target: its k=5 and k=1 share within 10%, k=5 Spearman and coverage range, against GOALS."""
    parts = []
    for row in report["targets"]:
        k1, k5 = row["k"]["1"], row["k"]["5"]
        cov = [m["coverage_90"] for m in row["k"].values() if m["coverage_90"] is not None]
        if k5["mape"] is None:
            parts.append(f"{row['name']}: calibration refused")
            continue
        missed = [name for name, ok in (
            ("k5 within10", k5["within_10pct"] >= GOALS["within_10pct_k5"]),
            ("k5 rho", k5["spearman"] >= GOALS["spearman_k5"]),
            ("k1 within10", (k1["within_10pct"] or 0) >= GOALS["within_10pct_k1"]),
            *((f"k{k} cov90 {m['coverage_90']:.3f} [95% CI {m['coverage_90_ci'][0]:.2f}-{m['coverage_90_ci'][1]:.2f}]",
               GOALS["coverage_lo"] <= m["coverage_90"] <= GOALS["coverage_hi"])
              for k, m in row["k"].items() if m["coverage_90"] is not None)) if not ok]
        parts.append(f"{row['name']}: k5 within10 {k5['within_10pct']:.2f} rho {k5['spearman']:.3f}, k1 within10 "
                     f"{(k1['within_10pct'] or 0):.2f}, cov90 {min(cov):.2f}-{max(cov):.2f} "
                     f"({'meets every goal' if not missed else 'misses ' + ', '.join(missed)})")
    return parts or [f"no target timed on all {report['n']} sub-DiTs"]


if __name__ == "__main__":
    main()
