"""Compression of a searched sub-DiT: extraction, K-DMD step distillation, int4 quantization,
the int4 ONNX runtime (onnxruntime MatMulNBits), and the close-the-loop results per pick.

Public API:
- `resolve_pick(run_dir, pick)`, `run_checkpoint(run_dir, checkpoint)`, `from_supernet(net, cfg)`,
  `save_subdit`, `load_subdit`, `SubDiT`;
- `DistillConfig`, `terms(mode)`, `distill(teacher, student, out=...)`;
- `QuantSpec`, `quantize_model`, `dequantized_copy`, `layer_sensitivity`, `mixed_bits`,
  `finetune_biases_norms`, `PackedWeight`;
- `export_int4_onnx`, `check_parity`, `time_onnx`;
- `compress_pick(net, cfg, out=...)`, `quantize_subdit`, `quantize_and_score`, `quality_row`,
  `measure_latency`;
- `export_artefacts(sub, out, formats)` (ONNX, Core ML, ExecuTorch folders with MEASURE.md),
  `load_runner`, `Artefact` (`hwnas.compress.deploy`: also `FORMATS`, `parse_formats`,
  `require_runtimes` and the errors `MissingRuntimeError`, `UnsupportedOpError`).

The settings (`hwnas.compress.settings`: `DistillConfig`, `QuantSpec`) import without torch; the rest
is imported on first use, so that reading the settings (the CLI does, to show its defaults) does
not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hwnas.compress.settings import DistillConfig, QuantSpec, terms

if TYPE_CHECKING:
    from hwnas.compress.deploy import Artefact, export_artefacts, load_runner
    from hwnas.compress.extract import SubDiT, from_supernet, load_subdit, resolve_pick, run_checkpoint, save_subdit
    from hwnas.compress.kdmd import distill
    from hwnas.compress.onnx_int4 import check_parity, export_int4_onnx, time_onnx
    from hwnas.compress.pipeline import (
        compress_pick,
        measure_latency,
        quality_row,
        quantize_and_score,
        quantize_subdit,
    )
    from hwnas.compress.quant import (
        PackedWeight,
        QuantizedModel,
        dequantized_copy,
        finetune_biases_norms,
        layer_sensitivity,
        mixed_bits,
        quantize_model,
    )

_LAZY = {
    "deploy": ("Artefact", "export_artefacts", "load_runner"),
    "kdmd": ("distill",),
    "extract": ("SubDiT", "from_supernet", "load_subdit", "resolve_pick", "run_checkpoint", "save_subdit"),
    "onnx_int4": ("check_parity", "export_int4_onnx", "time_onnx"),
    "pipeline": ("compress_pick", "measure_latency", "quality_row", "quantize_and_score", "quantize_subdit"),
    "quant": ("PackedWeight", "QuantizedModel", "dequantized_copy", "finetune_biases_norms", "layer_sensitivity",
              "mixed_bits", "quantize_model"),
}
_MODULE_OF = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'hwnas.compress' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hwnas.compress.{_MODULE_OF[name]}"), name)


__all__ = [
    "Artefact", "DistillConfig", "PackedWeight", "QuantSpec", "QuantizedModel", "SubDiT", "check_parity",
    "compress_pick", "dequantized_copy", "distill", "export_artefacts", "export_int4_onnx", "finetune_biases_norms",
    "from_supernet", "layer_sensitivity", "load_runner", "load_subdit", "measure_latency", "mixed_bits", "quality_row",
    "quantize_and_score", "quantize_model", "quantize_subdit", "resolve_pick", "run_checkpoint", "save_subdit", "terms",
    "time_onnx",
]
