"""Compression of a searched sub-DiT: extraction, K-DMD step distillation, int4 quantization,
the int4 ONNX runtime (onnxruntime MatMulNBits), and the close-the-loop results per pick.

Public API:
- `resolve_pick(run_dir, pick)`, `from_supernet(net, cfg)`, `save_subdit`, `load_subdit`, `SubDiT`;
- `DistillConfig`, `terms(mode)`, `distill(teacher, student, out=...)`;
- `QuantSpec`, `quantize_model`, `dequantized_copy`, `layer_sensitivity`, `mixed_bits`,
  `finetune_biases_norms`, `PackedWeight`;
- `export_int4_onnx`, `check_parity`, `time_onnx`;
- `compress_pick(net, cfg, out=...)`, `quantize_subdit`, `quality_row`, `measure_latency`.
"""

from __future__ import annotations

from hwnas.compress.distill import distill
from hwnas.compress.extract import SubDiT, from_supernet, load_subdit, resolve_pick, save_subdit
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
from hwnas.compress.settings import DistillConfig, QuantSpec, terms

__all__ = [
    "DistillConfig", "PackedWeight", "QuantSpec", "QuantizedModel", "SubDiT", "check_parity", "compress_pick",
    "distill", "export_int4_onnx", "finetune_biases_norms", "from_supernet", "layer_sensitivity", "load_subdit",
    "measure_latency", "mixed_bits", "quality_row", "quantize_and_score", "quantize_model", "quantize_subdit",
    "dequantized_copy",
    "resolve_pick", "save_subdit", "terms", "time_onnx",
]
