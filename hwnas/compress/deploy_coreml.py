"""Core ML export of a static sub-DiT: an ML Program `.mlpackage` (fp16 compute) and a copy with
k-means palettized weights, through coremltools.

coremltools converts on Linux but runs models only on macOS/iOS, so what is checked here is the
spec (inputs, outputs, shapes, deployment target), the MIL op set and the sizes. The default
frontend is `torch.export`: coremltools 9.0 has no converter for the `aten.__and__` /
`aten.__or__` nodes torch 2.13 leaves in an exported graph (the boolean masks of the BNA windows
and of cross-attention), so they are decomposed to `logical_and` / `logical_or` first. The
`torch.jit.trace` frontend fails on this model with coremltools 9.0 and NumPy 2.4 (its `aten::Int`
converter calls `int()` on a one-element array; see `UnsupportedOpError`).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from hwnas.compress.deploy import RUNTIMES, UnsupportedOpError, io_spec, tree_bytes
from hwnas.model import INPUT_NAMES, StaticDiT, VelocityOnly, example_inputs

Frontend = Literal["export", "trace"]
TARGET = "iOS18"
"""Minimum deployment target: iOS 18 / macOS 15, the first with per-grouped-channel palettes and
the `scaled_dot_product_attention` MIL op."""
PALETTIZED = "model-w{bits}.mlpackage"
WEIGHTS = "Data/com.apple.CoreML/weights"
"""The weight file of an ML Program package. The rest is the program (`model.mlmodel`) and, from
the torch.export frontend, `executorch_debug_handle_mapping.json` (debug data, not in the
package's manifest; the palettized copy has none), so sizes are compared on the weights."""


def _logical_and(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype != torch.bool or b.dtype != torch.bool:
        raise ValueError(f"aten.__and__ on {a.dtype}/{b.dtype}: only boolean masks are rewritten for Core ML")
    return torch.logical_and(a, b)


def _logical_or(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype != torch.bool or b.dtype != torch.bool:
        raise ValueError(f"aten.__or__ on {a.dtype}/{b.dtype}: only boolean masks are rewritten for Core ML")
    return torch.logical_or(a, b)


DECOMPOSITIONS = {torch.ops.aten.__and__.Tensor: _logical_and, torch.ops.aten.__or__.Tensor: _logical_or}
"""Rewrites applied to the exported graph before coremltools sees it (see the module docstring)."""


def export_coreml(model: StaticDiT, folder: Path, *, batch: int = 1, palettize_bits: int | None = 4,
                  frontend: Frontend = "export") -> dict[str, Any]:
    """Write `folder/model.mlpackage` (fp16 compute, fp32 inputs and output) and, with
    `palettize_bits`, `folder/model-w<bits>.mlpackage` (k-means palettized weights, one palette
    per tensor, coremltools' default 2,048-element threshold). Returns the details: `inputs`,
    `outputs`, `deployment_target`, `mil_ops` (op type -> count, constants left out),
    `palettized`. Raises `UnsupportedOpError` when coremltools cannot convert an op.

    `text_mask` becomes a float32 input (1 = valid token): Core ML inputs cannot be boolean.
    """
    import coremltools as ct

    was_training = model.training
    wrapper = VelocityOnly(model.eval()).eval()
    args = example_inputs(model.space, batch=batch)
    specs = [ct.TensorType(name=n, shape=tuple(a.shape), dtype=np.float32) for n, a in zip(INPUT_NAMES, args)]
    try:
        with _errors_logged() as logged, torch.no_grad():
            source: Any = (torch.export.export(wrapper, args, strict=False).run_decompositions(DECOMPOSITIONS)
                           if frontend == "export" else torch.jit.trace(wrapper, args))
            try:
                mlmodel = ct.convert(
                    source, inputs=specs, outputs=[ct.TensorType(name="v", dtype=np.float32)],
                    convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, TARGET),
                    compute_precision=ct.precision.FLOAT16, skip_model_load=True)
            except (NotImplementedError, RuntimeError, TypeError, ValueError) as exc:
                raise unsupported_op(exc, logged, frontend=frontend, version=ct.__version__) from None
    finally:
        model.train(was_training)
    main = folder / RUNTIMES["coreml"].file
    mlmodel.save(str(main))
    spec = mlmodel.get_spec()
    details: dict[str, Any] = {
        "artefacts": [main.name], "frontend": f"torch.{frontend}", "deployment_target": TARGET,
        "spec_version": int(spec.specificationVersion), "precision": "fp16",
        "inputs": [{**d, "dtype": "float32", **({"was": d["dtype"]} if d["dtype"] != "float32" else {})}
                   for d in io_spec(args)],
        "outputs": [_feature(f) for f in spec.description.output],
        "spec_inputs": [_feature(f) for f in spec.description.input],
        "mil_ops": mil_ops(mlmodel),
    }
    if palettize_bits is not None:
        from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

        config = OptimizationConfig(global_config=OpPalettizerConfig(mode="kmeans", nbits=palettize_bits))
        small = palettize_weights(mlmodel, config)
        path = folder / PALETTIZED.format(bits=palettize_bits)
        small.save(str(path))
        ops = mil_ops(small, constants=True)
        details["artefacts"].append(path.name)
        details["palettized"] = {
            "file": path.name, "nbits": palettize_bits, "mode": "kmeans", "granularity": "per_tensor",
            "precision": f"w{palettize_bits}a16", "tensors_palettized": ops.get("constexpr_lut_to_dense", 0),
            "bytes": tree_bytes(path), "bytes_fp16": tree_bytes(main),
            "weights_bytes": tree_bytes(path / WEIGHTS), "weights_bytes_fp16": tree_bytes(main / WEIGHTS)}
    return details


def mil_ops(mlmodel: Any, *, constants: bool = False) -> dict[str, int]:
    """Op type -> count over the ML Program's functions, most frequent first (`const` only if
    `constants`)."""
    count = Counter(op.op_type for fn in mlmodel._mil_program.functions.values() for op in fn.operations
                    if constants or op.op_type != "const")
    return dict(count.most_common())


def unsupported_op(exc: BaseException, logged: list[str], *, frontend: Frontend, version: str) -> UnsupportedOpError:
    """Name the op a coremltools conversion stopped at, from its `Unsupported fx node` message
    (torch.export) or the `converting '<op>' op (located at: ...)` line it logs (TorchScript)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    fx = re.search(r"Unsupported fx node (\S+), kind (\S+)", text)
    if fx:
        return UnsupportedOpError(f"Core ML (coremltools {version}, torch.{frontend}) has no converter for op "
                                  f"'{fx.group(2)}' (node {fx.group(1)})")
    located = [m for line in logged if (m := re.search(r"converting '([^']+)' op \(located at: '([^']*)'\)", line))]
    where = f"op '{located[-1].group(1)}' at {located[-1].group(2)}" if located else "an op"
    return UnsupportedOpError(f"Core ML (coremltools {version}, torch.{frontend}) cannot convert {where}: "
                              f"{type(exc).__name__}: {text}")


@contextmanager
def _errors_logged() -> Iterator[list[str]]:
    """Collect the error lines coremltools logs while converting (they name the failing op)."""
    lines: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler, logger = _Collect(level=logging.ERROR), logging.getLogger("coremltools")
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)


def _feature(f: Any) -> dict[str, Any]:
    """A spec feature as `{"name", "shape", "dtype"}` (multi-array types only)."""
    from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

    array = f.type.multiArrayType
    dtype = ArrayFeatureType.ArrayDataType.Name(array.dataType).lower()  # FLOAT32 -> float32
    return {"name": f.name, "shape": [int(s) for s in array.shape], "dtype": dtype}
