"""Estimated LUTs: a roofline transfer from a device's peaks to per-kernel latencies. Pure.

Per kernel (FLOPs and bytes from `hwnas.latency.kernels`):

    t_ms = max(flops / (peak * eff_compute[kind] * scale), bytes / (bandwidth * eff_memory * scale))
           + launch_overhead_ms

`eff_compute` is per kernel kind (uniform until a measured host table gives one per kind, see
`efficiency_from_table`); `scale` is a single global efficiency solved on a published point
(`SNAPGENPP_ANCHOR`) or taken from a stated figure. Every parameter carries its source and is
written to the table's sidecar.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from hwnas.cost import OpKind
from hwnas.latency.kernels import (
    PRECISIONS, KernelKey, Precision, enumerate_kernels, kernel_bytes, kernel_counts, kernel_flops,
)
from hwnas.latency.profile import DeviceKind, DeviceProfile, host_cpu
from hwnas.latency.table import (
    ESTIMATE_CODE_FILES, LatencyTable, TableMeta, Timing, code_hash, profile_hash,
)
from hwnas.space import SearchSpace

OP_KINDS: tuple[str, ...] = get_args(OpKind)


@dataclass(frozen=True)
class Anchor:
    """A published end-to-end measurement the global efficiency is solved on."""

    device: str
    preset: str
    step_ms: float
    resolution: int
    source: str


SNAPGENPP_ANCHOR = Anchor(
    device="iphone16promax", preset="small", step_ms=360.0, resolution=1024,
    source="paper: SnapGen++ (arXiv 2601.08303): 0.5x 'small' model, iPhone 16 Pro Max, Core ML, "
           "1024x1024, 360 ms per denoising step",
)

CPU_TVM_GEMM_EFFICIENCY = 81.0 / 147.0
"""TVM hand-written TensorIR GEMM (81 GFLOP/s) over OpenBLAS (147 GFLOP/s), 4096x1024x4096 fp32 on
2 Zen3 cores (DESIGN.md section 11, trial run). A GEMM figure: attention-heavy blocks run lower."""

LAUNCH_OVERHEAD_MS: dict[DeviceKind, float] = {"cpu": 0.05, "gpu": 0.15, "npu": 0.15}
_LAUNCH_SOURCE = ("assumed: ~15 dispatches per block-level kernel x ~3 us (CPU thread-pool sync) or "
                  "~10 us (GPU/NPU command submission); no measurement yet")


@dataclass(frozen=True)
class EstimatorParams:
    """Parameters of the roofline transfer, each with its source (see the module docstring)."""

    eff_compute: dict[str, float] = field(hash=False)
    eff_compute_source: str
    eff_memory: float
    eff_memory_source: str
    launch_overhead_ms: float
    launch_overhead_source: str
    scale: float = 1.0
    scale_source: str = "assumed: 1 (not calibrated)"
    calibration: str = "not calibrated"

    def __post_init__(self) -> None:
        missing = set(OP_KINDS) - set(self.eff_compute)
        if missing:
            raise ValueError(f"eff_compute lacks kernel kinds {sorted(missing)}")
        for name, value in [*self.eff_compute.items(), ("eff_memory", self.eff_memory), ("scale", self.scale)]:
            if not 0 < value:
                raise ValueError(f"efficiency {name} must be > 0, got {value!r}")
        if self.launch_overhead_ms < 0:
            raise ValueError(f"launch_overhead_ms must be >= 0, got {self.launch_overhead_ms!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_params(profile: DeviceProfile) -> EstimatorParams:
    """Uniform compute efficiency, memory efficiency by how the bandwidth is known, scale 1."""
    measured_bw = profile.bandwidth_gbps.source.startswith("measured")
    return EstimatorParams(
        eff_compute=dict.fromkeys(OP_KINDS, 1.0),
        eff_compute_source="assumed: uniform over kernel kinds until a measured host table gives "
                           "per-kind efficiencies (estimate.efficiency_from_table); the global scale carries "
                           "the level",
        eff_memory=1.0 if measured_bw else 0.7,
        eff_memory_source=("measured: the profile's bandwidth is a sustained copy rate already" if measured_bw
                           else "assumed: sustained DRAM bandwidth ~70% of the theoretical peak (typical STREAM "
                                "ratio on LPDDR SoCs)"),
        launch_overhead_ms=LAUNCH_OVERHEAD_MS[profile.kind],
        launch_overhead_source=_LAUNCH_SOURCE,
    )


def roofline_ms(key: KernelKey, profile: DeviceProfile, params: EstimatorParams) -> float:
    """The roofline part of a kernel's time (no launch overhead), in ms, at `params.scale`."""
    if key.precision not in profile.peak_gflops:
        raise ValueError(f"device {profile.name!r} has no peak for precision {key.precision!r} "
                         f"(it has {list(profile.precisions)})")
    peak = profile.peak_gflops[key.precision].require(f"{profile.name}: peak.{key.precision}")
    bandwidth = profile.bandwidth_gbps.require(f"{profile.name}: memory.bandwidth_gbps")
    compute_ms = kernel_flops(key) / (peak * 1e6 * params.eff_compute[key.kind] * params.scale)
    memory_ms = kernel_bytes(key) / (bandwidth * 1e6 * params.eff_memory * params.scale)
    return max(compute_ms, memory_ms)


def estimate_kernel_ms(key: KernelKey, profile: DeviceProfile, params: EstimatorParams) -> float:
    """Estimated latency of one kernel in ms (roofline plus launch overhead)."""
    return roofline_ms(key, profile, params) + params.launch_overhead_ms


def calibrate_scale(profile: DeviceProfile, space: SearchSpace, params: EstimatorParams, *,
                    preset: str, step_ms: float, precision: Precision | None = None) -> float:
    """The global scale at which `preset` at `precision` (default: the profile's) takes `step_ms`.

    Each kernel's roofline time is inversely proportional to the scale and the overhead is not,
    so the solution is closed-form: scale = sum(roofline at scale 1) / (step_ms - overhead).
    """
    precision = precision or profile.default_precision
    cfg = space.preset(preset)
    unit = EstimatorParams(**{**params.to_dict(), "scale": 1.0})
    roof_ms, overhead_ms = 0.0, 0.0
    for key, count in kernel_counts(cfg, space, precision=precision):
        roof_ms += count * roofline_ms(key, profile, unit)
        overhead_ms += count * params.launch_overhead_ms
    if step_ms <= overhead_ms:
        raise ValueError(f"step_ms {step_ms!r} is below the launch overhead alone ({overhead_ms:.3g} ms)")
    return roof_ms / (step_ms - overhead_ms)


def efficiency_from_table(table: LatencyTable, profile: DeviceProfile, *,
                          launch_overhead_ms: float) -> dict[str, float]:
    """Compute efficiency per kernel kind from a measured table of `profile`'s device.

    For each kind: sum over measured entries of the compute-roofline time (flops / peak) divided
    by the sum of measured time less the launch overhead (time-weighted, so large kernels count
    most). Kinds without measured entries are absent. Feed the result to `estimator_params`.
    """
    roof: dict[str, float] = {}
    spent: dict[str, float] = {}
    for key, timing in table.entries.items():
        if timing.source != "measured":
            continue
        peak = profile.peak_gflops[key.precision].require(f"{profile.name}: peak.{key.precision}")
        roof[key.kind] = roof.get(key.kind, 0.0) + kernel_flops(key) / (peak * 1e6)
        spent[key.kind] = spent.get(key.kind, 0.0) + max(timing.median_ms - launch_overhead_ms, 1e-9)
    return {kind: roof[kind] / spent[kind] for kind in roof if roof[kind] > 0}


def estimator_params(profile: DeviceProfile, *, anchor_profile: DeviceProfile, anchor_space: SearchSpace,
                     host_efficiency: dict[str, float] | None = None, host_efficiency_source: str = "",
                     anchor: Anchor = SNAPGENPP_ANCHOR) -> EstimatorParams:
    """The estimator parameters of `profile`, with an honest `calibration` text.

    - the anchor's device: the scale is solved so that the anchor preset takes the anchor's step time;
    - CPUs: per-kind efficiencies measured on the host when `host_efficiency` is given (kinds it
      lacks take its time-weighted mean), else `CPU_TVM_GEMM_EFFICIENCY` as the scale;
    - GPUs and NPUs: the anchor device's solved scale, borrowed (an assumption).
    """
    base = default_params(profile)
    if anchor_space.resolution != anchor.resolution:
        raise ValueError(f"the anchor is at {anchor.resolution} px; anchor_space {anchor_space.name!r} is at "
                         f"{anchor_space.resolution} px")
    anchor_base = default_params(anchor_profile)
    anchor_scale = calibrate_scale(anchor_profile, anchor_space, anchor_base, preset=anchor.preset,
                                   step_ms=anchor.step_ms)
    solved = (f"scale {anchor_scale:.4f} solved so that preset {anchor.preset!r} of {anchor_space.name} at "
              f"{anchor_profile.default_precision} predicts {anchor.step_ms:g} ms/step on {anchor.device} "
              f"({anchor.source})")
    if profile.name == anchor.device:
        return EstimatorParams(**{**base.to_dict(), "scale": anchor_scale, "scale_source": "paper: " + solved,
                                  "calibration": "calibrated on the paper's point: " + solved})
    if profile.kind == "cpu" and host_efficiency:
        mean = sum(host_efficiency.values()) / len(host_efficiency)
        eff = {k: host_efficiency.get(k, mean) for k in OP_KINDS}
        return EstimatorParams(**{**base.to_dict(), "eff_compute": eff, "eff_compute_source":
                                  "measured: " + host_efficiency_source, "scale": 1.0,
                                  "scale_source": "measured: per-kind efficiencies already absolute",
                                  "calibration": "per-kind efficiencies measured on the host ("
                                                 + host_efficiency_source + ") transferred to this CPU"})
    if profile.kind == "cpu":
        src = (f"derived: {CPU_TVM_GEMM_EFFICIENCY:.3f} = TVM hand-written TensorIR GEMM 81 GFLOP/s / OpenBLAS "
               "147 GFLOP/s on 2 Zen3 cores (DESIGN.md section 11); GEMM only, attention runs lower")
        return EstimatorParams(**{**base.to_dict(), "scale": CPU_TVM_GEMM_EFFICIENCY, "scale_source": src,
                                  "calibration": "not calibrated on this device: a TVM-vs-BLAS GEMM efficiency "
                                                 "(" + src + "); to be replaced by per-kind efficiencies from a "
                                                 "measured host table"})
    return EstimatorParams(**{**base.to_dict(), "scale": anchor_scale,
                              "scale_source": f"assumed: borrowed from {anchor.device}: {solved}",
                              "calibration": f"not calibrated on this device: borrows {anchor.device}'s scale "
                                             f"({solved}); an assumption until this device is measured"})


def build_estimated_table(profile: DeviceProfile, space: SearchSpace, params: EstimatorParams, *,
                          experiment_path: str, precisions: tuple[Precision, ...] | None = None,
                          keys: list[KernelKey] | None = None, date: str | None = None) -> LatencyTable:
    """An estimated LUT over every kernel of `space` (or `keys`) at `precisions` (default: all the
    profile's). `date` defaults to today (ISO)."""
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
        estimator={**params.to_dict(), "peak_gflops": {p: {"value": f.value, "source": f.source}
                                                       for p, f in profile.peak_gflops.items()},
                   "bandwidth_gbps": {"value": profile.bandwidth_gbps.value,
                                      "source": profile.bandwidth_gbps.source},
                   "formula": "t_ms = max(flops / (peak * eff_compute[kind] * scale), bytes / (bandwidth * "
                              "eff_memory * scale)) + launch_overhead_ms"},
        calibration=params.calibration,
    )
    return LatencyTable(meta, entries, profile.text_encoder, profile.vae_decoder)
