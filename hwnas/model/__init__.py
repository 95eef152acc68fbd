"""The elastic three-stage DiT supernet, its static sub-DiTs, text encoders and ONNX export.

Public API:
- `ElasticDiT(space)`: the supernet; `forward(x, t, text, text_mask, cfg, *, features=False)`.
- `extract_subnet(supernet, cfg) -> StaticDiT`: a standalone copy of one sub-DiT.
- `TextEncoder` (interface), `BuiltinTextEncoder`: token ids -> (embeddings, mask).
- `export_onnx(static_model, path, *, batch, opset, dynamo)`, `run_onnx(path, inputs)`;
  `VelocityOnly(static_model)`, the module every exporter traces, and `example_inputs(space)`.
- Elastic ops and attention functions for code that builds on them (`hwnas.model.ops`,
  `hwnas.model.attention`), and the sub-DiT glue both models run (`hwnas.model.forward`).
"""

from __future__ import annotations

from hwnas.model.dit import ElasticBlock, ElasticDiT
from hwnas.model.export import INPUT_NAMES, VelocityOnly, example_inputs, export_onnx, run_onnx
from hwnas.model.static import StaticDiT, extract_subnet
from hwnas.model.text import BuiltinTextEncoder, TextEncoder

__all__ = [
    "INPUT_NAMES",
    "BuiltinTextEncoder",
    "ElasticBlock",
    "ElasticDiT",
    "StaticDiT",
    "TextEncoder",
    "VelocityOnly",
    "example_inputs",
    "export_onnx",
    "extract_subnet",
    "run_onnx",
]
