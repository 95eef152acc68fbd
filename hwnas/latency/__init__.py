"""Latency of sub-DiTs on target devices: profiles, kernel keys, LUTs, estimation, prediction.

Pure parts (no torch, no I/O): `kernels`, `kernel_flops`, `kernel_bytes`, the estimator
(`estimator_params`, `build_estimated_table`) and `predict_latency_ms`. I/O is explicit:
`load_profile`, `load_table`, `write_table`.

    profile = load_profile("iphone16promax")
    table = load_table(profile, space.name)
    pred = predict_latency_ms(cfg, table, steps=4, precision=profile.default_precision, space=space)

Measuring (needs torch and TVM, so imported explicitly, not from here): `hwnas.latency.bench`
(`measure_kernel`, `time_subnet_tvm`, `connect_tracker`), `hwnas.latency.build`
(`build_measured_table`, resumable) and `hwnas.latency.validate` (`validate_table`).
"""

from __future__ import annotations

from hwnas.latency.estimate import (
    SNAPGENPP_ANCHOR, Anchor, EstimatorParams, build_estimated_table, calibrate_scale, default_params,
    efficiency_from_table, estimate_kernel_ms, estimator_params,
)
from hwnas.latency.kernels import (
    KEY_COLUMNS, PRECISIONS, KernelKey, Precision, enumerate_kernels, kernel_activation_bytes, kernel_bytes,
    kernel_counts, kernel_flops, kernel_weight_bytes, kernels, key_from_row, key_to_row,
)
from hwnas.latency.predict import LatencyPrediction, MissingKernelError, predict_latency_ms
from hwnas.latency.profile import (
    NATIVE_CPU, DeviceKind, DeviceProfile, Figure, PipelinePart, host_cpu, host_llvm_cpu, list_profiles, load_profile,
    scaffold_profile,
)
from hwnas.latency.table import (
    CorruptTableError, Correction, HostMismatchWarning, LatencyTable, StaleTableError, TableMeta, Timing,
    check_fresh, code_hash, cpu_note, label_source, load_table, table_kinds, write_table,
)

__all__ = [
    "Anchor", "CorruptTableError", "Correction", "DeviceKind", "DeviceProfile", "EstimatorParams", "Figure",
    "HostMismatchWarning", "KEY_COLUMNS", "KernelKey", "LatencyPrediction", "LatencyTable", "MissingKernelError",
    "NATIVE_CPU", "PRECISIONS", "PipelinePart", "Precision", "SNAPGENPP_ANCHOR", "StaleTableError", "TableMeta",
    "Timing", "build_estimated_table", "calibrate_scale", "check_fresh", "code_hash", "cpu_note", "default_params",
    "efficiency_from_table", "enumerate_kernels", "estimate_kernel_ms", "estimator_params", "host_cpu",
    "host_llvm_cpu", "kernel_activation_bytes", "kernel_bytes", "kernel_counts", "kernel_flops",
    "kernel_weight_bytes", "kernels", "key_from_row", "key_to_row", "label_source", "list_profiles", "load_profile",
    "load_table", "predict_latency_ms", "scaffold_profile", "table_kinds", "write_table",
]
