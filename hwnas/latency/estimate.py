"""Estimated LUTs: a per-op-kind roofline from a device's peaks to per-kernel latencies. Pure.

Each block-level kernel is split into the primitives a runtime dispatches
(`hwnas.latency.primitives`: linear, attention, conv, elementwise). Per primitive p of kind k:

    t_ms(p) = max(flops_p / (peak * eff_compute[k]), bytes_p / (bandwidth * eff_memory[k])) + overhead_ms[k]

and a kernel takes the sum over its primitives. Where the profile states how the runtime's threads
scale (`[runtime.threading]`), a compute primitive's `flops_p / peak` is multiplied by
`threads / thread_speedup(flops_p)`: the peak is the device's on all its threads, which small
primitives do not get. `bytes_p` counts weights at the precision's
weight bits plus activations at its activation width; attention is costed as the profile's
`attention` lowering says (fused, or scores materialized). Each of the 12 parameters has a prior
(`prior_params`, with its source) that `hwnas.latency.calibrate` moves toward measured sub-DiTs.
Every parameter, its prior and its source is written to the table's sidecar.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

from hwnas.cost import PRECISION_ACT_BYTES, PRECISION_WEIGHT_BITS
from hwnas.latency.kernels import PRECISIONS, KernelKey, Precision, enumerate_kernels
from hwnas.latency.primitives import COST_KINDS, AttentionLowering, CostKind, Primitive, op_primitives
from hwnas.latency.profile import DeviceKind, DeviceProfile, host_cpu
from hwnas.latency.table import (
    ESTIMATE_CODE_FILES, ErrorModel, LatencyTable, TableMeta, Timing, code_hash, profile_hash, prior_error,
)
from hwnas.space import SearchSpace

ParamName = Literal["eff_compute", "eff_memory", "overhead_ms"]
PARAM_NAMES: tuple[ParamName, ...] = get_args(ParamName)

PRIOR_LOG_SD: dict[ParamName, float] = {"eff_compute": math.log(2.0), "eff_memory": math.log(2.0),
                                        "overhead_ms": math.log(3.0)}
"""How far (one standard deviation, natural log) a calibration may move each prior: efficiencies by a
factor of 2, overheads by a factor of 3. Assumed: the spread of published per-op efficiencies on
mobile runtimes is about that wide."""

CPU_TVM_GEMM_EFFICIENCY = 81.0 / 147.0
"""TVM hand-written TensorIR GEMM (81 GFLOP/s) over OpenBLAS (147 GFLOP/s), 4096x1024x4096 fp32 on
2 Zen3 cores (measured here, 2026-11, while choosing the CPU schedules)."""

_EFF_COMPUTE: dict[DeviceKind, dict[CostKind, float]] = {
    "npu": {"linear": 0.5, "attention": 0.25, "conv": 0.3, "elementwise": 0.1},
    "gpu": {"linear": 0.5, "attention": 0.3, "conv": 0.3, "elementwise": 0.1},
    "cpu": {"linear": CPU_TVM_GEMM_EFFICIENCY, "attention": 0.25, "conv": 0.4, "elementwise": 0.1},
}
CPU_LIBRARY_KINDS: tuple[CostKind, ...] = ("linear", "conv")
"""Kinds a CPU runtime other than hwnas's TVM runs through its GEMM library (oneDNN, MLAS, XNNPACK, ...):
the patch convolution is lowered to a GEMM as well."""
_LIBRARY_SOURCE = ("derived: the runtime's GEMM library against a peak measured with a library GEMM "
                   "(benchmarks/host_peaks.py times torch.mm): large GEMMs run at that peak by construction, "
                   "so the CPU prior over CPU_TVM_GEMM_EFFICIENCY (TVM's GEMM over the library's)")

_EFF_COMPUTE_SOURCE = {
    "linear": "assumed: large GEMMs reach about half the peak on mobile NPUs/GPUs; CPUs: TVM GEMM at 81 / 147 "
              "GFLOP/s of OpenBLAS (measured here, 4096x1024x4096 fp32, 2 Zen3 cores)",
    "attention": "assumed: score and value products with 64-wide heads and the softmax run at about half the "
                 "GEMM efficiency",
    "conv": "assumed: 2x2 patch convolutions are small-K GEMMs plus a layout change, below large GEMMs",
    "elementwise": "assumed: element-wise ops are memory-bound; 0.1 of peak only orders their FLOPs",
}
_OVERHEAD_MS: dict[DeviceKind, float] = {"cpu": 0.003, "gpu": 0.01, "npu": 0.01}
_OVERHEAD_SOURCE = ("assumed: per dispatch ~3 us on a CPU (thread-pool sync), ~10 us on a GPU/NPU (command "
                    "submission); no measurement yet")


@dataclass(frozen=True)
class KindParams:
    """Cost parameters of one op kind: efficiencies relative to the profile's peaks, overhead per dispatch in ms."""

    eff_compute: float
    eff_memory: float
    overhead_ms: float

    def __post_init__(self) -> None:
        for name in PARAM_NAMES:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class EstimatorParams:
    """The estimator's parameters per cost kind, their priors and sources, and how the device's
    attention is lowered (see the module docstring)."""

    kinds: dict[CostKind, KindParams] = field(hash=False)
    priors: dict[CostKind, KindParams] = field(hash=False)
    sources: dict[str, str] = field(hash=False)
    """Source of each kind's prior ("linear", ...) and of "attention", "eff_memory", "overhead_ms"."""
    attention: AttentionLowering = "fused"
    calibration: str = "not calibrated: priors"
    error: ErrorModel | None = None
    """How far this estimate is from measurements (log space); None: the uncalibrated prior."""

    def __post_init__(self) -> None:
        for what in ("kinds", "priors"):
            missing = set(COST_KINDS) - set(getattr(self, what))
            if missing:
                raise ValueError(f"{what} lacks op kinds {sorted(missing)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def vector(self) -> list[float]:
        """Natural logs of the 12 parameters, kind-major (`COST_KINDS` x `PARAM_NAMES`)."""
        return [math.log(getattr(self.kinds[k], n)) for k in COST_KINDS for n in PARAM_NAMES]

    def prior_vector(self) -> list[float]:
        return [math.log(getattr(self.priors[k], n)) for k in COST_KINDS for n in PARAM_NAMES]

    def with_vector(self, logs: Iterable[float], *, calibration: str, error: ErrorModel | None) -> EstimatorParams:
        it = iter(logs)
        kinds = {k: KindParams(**{n: math.exp(next(it)) for n in PARAM_NAMES}) for k in COST_KINDS}
        return replace(self, kinds=kinds, calibration=calibration, error=error)  # type: ignore[arg-type]


def library_gemm(profile: DeviceProfile) -> bool:
    """Does `profile` run its GEMMs from a library at the peak it states? A CPU whose runtime is not hwnas's
    TVM (onnxruntime, PyTorch, ExecuTorch/XNNPACK, ...) and whose default-precision peak was measured
    with a library GEMM, or derived from such a measurement."""
    peak = profile.peak_gflops.get(profile.default_precision)
    return (profile.kind == "cpu" and profile.runtime not in ("", "TVM") and peak is not None
            and "measured" in peak.source)


def prior_params(profile: DeviceProfile) -> EstimatorParams:
    """The priors of `profile`'s device kind, memory efficiency by how its bandwidth is known, for a
    CPU runtime with a library GEMM (`library_gemm`) GEMM-like kinds at the library's efficiency, and
    the runtime's dispatch overhead and element-wise passes where the profile states them
    (`DeviceProfile.dispatch_us`, `.elementwise_passes`: element-wise memory efficiency over the passes)."""
    measured_bw = profile.bandwidth_gbps.source.startswith("measured")
    eff_memory = 1.0 if measured_bw else 0.7
    eff_compute = dict(_EFF_COMPUTE[profile.kind])
    sources: dict[str, str] = dict(_EFF_COMPUTE_SOURCE)
    if library_gemm(profile):
        for k in CPU_LIBRARY_KINDS:
            eff_compute[k], sources[k] = eff_compute[k] / CPU_TVM_GEMM_EFFICIENCY, _LIBRARY_SOURCE
    overhead_ms, overhead_source = _OVERHEAD_MS[profile.kind], _OVERHEAD_SOURCE
    if profile.dispatch_us is not None:
        overhead_ms = profile.dispatch_us.require(f"{profile.name}: runtime.dispatch.overhead_us") / 1e3
        overhead_source = f"the profile's runtime.dispatch ({profile.dispatch_us.source})"
    passes, passes_source = 1.0, ""
    if profile.elementwise_passes is not None:
        passes = profile.elementwise_passes.require(f"{profile.name}: runtime.dispatch.elementwise_passes")
        passes_source = (f"; element-wise over {passes:g} passes per primitive (the profile's runtime.dispatch: "
                         f"{profile.elementwise_passes.source})")
    kinds = {k: KindParams(eff_compute[k], eff_memory if k != "elementwise" else 0.7 * eff_memory / passes,
                           overhead_ms) for k in COST_KINDS}
    sources |= {"eff_memory": ("measured: the profile's bandwidth is a sustained copy rate already" if measured_bw
                               else "assumed: sustained DRAM bandwidth ~70% of the theoretical peak (typical "
                                    "STREAM ratio on LPDDR SoCs)") + "; element-wise ops 0.7 of that (strided "
                                                                     "and short rows)" + passes_source,
                "overhead_ms": overhead_source, "attention": profile.attention.source}
    return EstimatorParams(kinds=kinds, priors=kinds, sources=sources, attention=profile.attention.value)


default_params = prior_params


def borrow_params(profile: DeviceProfile, donor: EstimatorParams, *, donor_name: str) -> EstimatorParams:
    """`profile`'s estimator with `donor`'s (calibrated) per-kind parameters as its priors: an assumption
    that the two devices are alike (same runtime, similar efficiency); not a calibration of `profile`."""
    base = prior_params(profile)
    src = f"assumed: borrowed from {donor_name} ({donor.calibration})"
    return replace(base, kinds=dict(donor.kinds), priors=dict(donor.kinds),
                   sources={**base.sources, **{k: src for k in COST_KINDS}},
                   calibration=f"not calibrated on this device: parameters borrowed from {donor_name}")


def thread_speedup(flops: float, threads: int, half_speedup_flops: float) -> float:
    """How much faster `threads` threads run a primitive of `flops` than one thread: 1 + (threads - 1) f /
    (f + h), so a small primitive runs as on one thread and a large one gets all `threads`; at f = h the
    extra threads give half their worth. A saturating law fitted to linear layers of 2-537 MFLOP timed
    at 1 and 2 threads on a 2-core EPYC (benchmarks/transfer.py: h = 86 MFLOP on PyTorch eager, 152
    on onnxruntime)."""
    return 1.0 + (threads - 1) * flops / (flops + half_speedup_flops)


def kernel_terms(key: KernelKey, profile: DeviceProfile, attention: AttentionLowering) -> list[tuple[CostKind, float, float]]:
    """(kind, compute ms at efficiency 1, memory ms at efficiency 1) per primitive of the kernel; compute
    on all the profile's threads, or as `thread_speedup` scales it where the profile states it."""
    if key.precision not in profile.peak_gflops:
        raise ValueError(f"device {profile.name!r} has no peak for precision {key.precision!r} "
                         f"(it has {list(profile.precisions)})")
    peak = profile.peak_gflops[key.precision].require(f"{profile.name}: peak.{key.precision}") * 1e6  # FLOP/ms
    bandwidth = profile.bandwidth_gbps.require(f"{profile.name}: memory.bandwidth_gbps") * 1e6  # B/ms
    wbytes, abytes = PRECISION_WEIGHT_BITS[key.precision] / 8, PRECISION_ACT_BYTES[key.precision]
    half = profile.half_speedup_mflop
    threads, half_flops = 1, 0.0
    if half is not None:
        threads = profile.threads
        half_flops = half.require(f"{profile.name}: runtime.threading.half_speedup_mflop") * 1e6

    def compute_ms(p: Primitive) -> float:
        if threads == 1 or p.kind == "elementwise" or p.flops == 0:
            return p.flops / peak
        return p.flops / peak * threads / thread_speedup(p.flops, threads, half_flops)

    return [(p.kind, compute_ms(p), (p.weight_params * wbytes + p.act_elements * abytes) / bandwidth)
            for p in op_primitives(key.op, attention)]


def estimate_kernel_ms(key: KernelKey, profile: DeviceProfile, params: EstimatorParams) -> float:
    """Estimated latency of one kernel in ms (see the module docstring)."""
    total = 0.0
    for kind, compute_ms, memory_ms in kernel_terms(key, profile, params.attention):
        p = params.kinds[kind]
        total += max(compute_ms / p.eff_compute, memory_ms / p.eff_memory) + p.overhead_ms
    return total


def params_from_meta(meta: TableMeta) -> EstimatorParams:
    """The `EstimatorParams` an estimated table's sidecar records (`TableMeta.estimator`, `.error`)."""
    estimator = meta.estimator or {}
    try:
        return EstimatorParams(
            kinds={k: KindParams(**v) for k, v in estimator["kinds"].items()},  # type: ignore[misc]
            priors={k: KindParams(**v) for k, v in estimator["priors"].items()},  # type: ignore[misc]
            sources=dict(estimator["sources"]), attention=estimator["attention"],
            calibration=estimator["calibration"], error=meta.error)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"the sidecar's estimator parameters are not of this version ({exc}); rebuild the table "
                         "with hwnas lut build --estimate") from None


def build_estimated_table(profile: DeviceProfile, space: SearchSpace, params: EstimatorParams, *,
                          experiment_path: str, precisions: tuple[Precision, ...] | None = None,
                          keys: list[KernelKey] | None = None, date: str | None = None) -> LatencyTable:
    """An estimated LUT over every kernel of `space` (or `keys`) at `precisions` (default: all the
    profile's). `date` defaults to today (ISO). Its error model is `params.error`, or the prior's."""
    if params.attention != profile.attention.value:
        raise ValueError(f"the parameters cost attention as {params.attention!r}, the {profile.name} profile says "
                         f"{profile.attention.value!r}")
    precisions = precisions or profile.precisions
    keys = keys if keys is not None else enumerate_kernels(space, precisions=precisions)
    entries = {key: Timing.estimated(estimate_kernel_ms(key, profile, params)) for key in keys}
    cpu, cores = host_cpu() if profile.local else (None, None)
    meta = TableMeta(
        device=profile.name, experiment=space.name, experiment_path=experiment_path, source="estimated",
        target=profile.target, tvm_version=None, threads=profile.threads,
        precisions=tuple(sorted({k.precision for k in keys}, key=PRECISIONS.index)),
        date=date or _dt.date.today().isoformat(), code_hash=code_hash(ESTIMATE_CODE_FILES),
        code_files=ESTIMATE_CODE_FILES, profile_hash=profile_hash(profile), host_cpu=cpu, host_cores=cores,
        estimator={**{k: v for k, v in params.to_dict().items() if k != "error"}, "peak_gflops": {p: {"value": f.value, "source": f.source}
                                                       for p, f in profile.peak_gflops.items()},
                   "bandwidth_gbps": {"value": profile.bandwidth_gbps.value,
                                      "source": profile.bandwidth_gbps.source},
                   "formula": "t_ms = sum over primitives p of kind k: max(flops_p / (peak * eff_compute[k]), "
                              "bytes_p / (bandwidth * eff_memory[k])) + overhead_ms[k]"},
        calibration=params.calibration, error=params.error or prior_error(),
    )
    return LatencyTable(meta, entries, profile.text_encoder, profile.vae_decoder)
