"""Latency of sub-DiTs on target devices: profiles, kernel keys, LUTs, estimation, prediction.

Pure parts (no torch, no I/O): `kernels`, `kernel_flops`, `kernel_bytes`, the per-op-kind
estimator (`prior_params`, `estimate_kernel_ms`, `build_estimated_table`), the few-shot fit
(`calibrate`), `predict_latency_ms` and its intervals (`ErrorModel`). I/O is explicit:
`load_profile`, `load_table`, `write_table`, `read_measurements`.

    profile = load_profile("iphone16promax")
    table = load_table(profile, space.name)
    pred = predict_latency_ms(cfg, table, steps=4, precision=profile.default_precision, space=space)
    pred.interval(0.9), pred.upper_ms(0.9), pred.prob_within(1800.0)

Measuring (needs torch and TVM, so imported explicitly, not from here): `hwnas.latency.bench`
(`measure_kernel`, `time_subnet_tvm`, `connect_tracker`), `hwnas.latency.build`
(`build_measured_table`, resumable; it compiles through `hwnas.latency.kernel_cache` and times with
`hwnas.latency.adaptive`) and `hwnas.latency.validate` (`validate_table`).
"""

from __future__ import annotations

from hwnas.latency.calibrate import (
    Calibration,
    Measurement,
    MeasurementError,
    calibrate,
    calibrated_table,
    calibration_source,
    file_sha256,
    read_measurements,
)
from hwnas.latency.estimate import (
    EstimatorParams,
    KindParams,
    borrow_params,
    build_estimated_table,
    default_params,
    estimate_kernel_ms,
    params_from_meta,
    prior_params,
)
from hwnas.latency.interval import ErrorModel, LatencyInterval, calibrated_error, prior_error, validated_error
from hwnas.latency.kernels import (
    KEY_COLUMNS,
    PRECISIONS,
    KernelKey,
    Precision,
    enumerate_kernels,
    kernel_activation_bytes,
    kernel_bytes,
    kernel_counts,
    kernel_flops,
    kernel_weight_bytes,
    kernels,
    key_from_row,
    key_to_row,
)
from hwnas.latency.predict import GUIDANCE, Guidance, LatencyPrediction, MissingKernelError, predict_latency_ms
from hwnas.latency.primitives import ATTENTION_LOWERINGS, COST_KINDS, AttentionLowering, CostKind, op_primitives
from hwnas.latency.profile import (
    NATIVE_CPU,
    DeviceKind,
    DeviceProfile,
    Figure,
    Lowering,
    PipelinePart,
    host_cpu,
    host_llvm_cpu,
    list_profiles,
    load_profile,
    scaffold_profile,
)
from hwnas.latency.table import (
    Correction,
    CorruptTableError,
    HostMismatchWarning,
    LatencyTable,
    StaleTableError,
    TableMeta,
    Timing,
    check_fresh,
    code_hash,
    cpu_note,
    label_source,
    load_table,
    table_kinds,
    write_table,
)

__all__ = [
    "ATTENTION_LOWERINGS", "AttentionLowering", "COST_KINDS", "Calibration", "CorruptTableError", "Correction",
    "CostKind", "DeviceKind", "DeviceProfile", "ErrorModel", "EstimatorParams", "Figure", "GUIDANCE", "Guidance",
    "HostMismatchWarning", "KEY_COLUMNS", "KernelKey", "KindParams", "LatencyInterval", "LatencyPrediction",
    "LatencyTable", "Lowering", "Measurement", "MeasurementError", "MissingKernelError", "NATIVE_CPU",
    "PRECISIONS", "PipelinePart", "Precision", "StaleTableError", "TableMeta", "Timing", "borrow_params",
    "build_estimated_table", "calibrate", "calibrated_error", "calibrated_table", "calibration_source", "check_fresh",
    "code_hash",
    "cpu_note", "default_params", "enumerate_kernels", "estimate_kernel_ms", "file_sha256", "host_cpu",
    "host_llvm_cpu", "kernel_activation_bytes", "kernel_bytes", "kernel_counts", "kernel_flops",
    "kernel_weight_bytes", "kernels", "key_from_row", "key_to_row", "label_source", "list_profiles", "load_profile",
    "load_table", "op_primitives", "params_from_meta", "predict_latency_ms", "prior_error", "prior_params",
    "read_measurements", "scaffold_profile", "table_kinds", "validated_error", "write_table",
]
