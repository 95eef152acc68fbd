"""ExecuTorch export of a static sub-DiT: `torch.export`, lowered to the XNNPACK delegate (fp32),
serialised as a `.pte` program, and run here through ExecuTorch's Python runtime.

What XNNPACK does not take (index gathers, boolean mask logic) stays in the program as portable
ExecuTorch kernels; `artefact.json` counts both (`delegated_calls`, `portable_ops`).

The FFN's `gelu(approximate="tanh")` is written out as `tanh`, `mul` and `add` before lowering
(`spell_out_tanh_gelu`): ExecuTorch 1.5.1's XNNPACK node for `aten.gelu` has no approximation mode
and runs the exact erf GELU, up to 4.7e-4 away per activation, which grew to 5.6e-3 at the output of
the 26-block `full` sub-DiT of the latent proxy (6e-6 with the tanh written out).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hwnas.compress.deploy import RUNTIMES, Runner, UnsupportedOpError, io_spec
from hwnas.model import StaticDiT, VelocityOnly, example_inputs

if TYPE_CHECKING:
    from torch.fx.passes.infra.pass_base import PassResult

_DELEGATE_CALL = "executorch_call_delegate"


def export_executorch(model: StaticDiT, folder: Path, *, batch: int = 1) -> dict[str, Any]:
    """Write `folder/model.pte` (XNNPACK, fp32); returns the details: `inputs`, `outputs`,
    `delegated_calls` (XNNPACK subgraphs) and `portable_ops` (op -> count left outside them).
    Raises `UnsupportedOpError` naming the op ExecuTorch could not lower."""
    import executorch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    version = getattr(executorch, "__version__", "unknown")
    was_training = model.training
    args = example_inputs(model.space, batch=batch)
    try:
        with torch.no_grad():
            program = spell_out_tanh_gelu(torch.export.export(VelocityOnly(model.eval()).eval(), args, strict=False))
            expected = model(*args)
        try:
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                               transform_passes=[drop_provenance])
            drop_provenance(edge.exported_program().graph_module)
            graph = edge.exported_program().graph_module.graph
            calls = [str(n.target) for n in graph.nodes if n.op == "call_function"]
            buffer = edge.to_executorch().buffer
        except Exception as exc:  # EXIR raises many types (SpecViolationError, RuntimeError, ...)
            raise unsupported_op(exc, version=version) from exc
    finally:
        model.train(was_training)
    path = folder / RUNTIMES["executorch"].file
    path.write_bytes(buffer)
    portable = Counter(_op_name(c) for c in calls if _DELEGATE_CALL not in c and c != "<built-in function getitem>")
    return {"artefacts": [path.name], "precision": "fp32", "delegate": "XnnpackPartitioner", "inputs": io_spec(args),
            "outputs": [{"name": "v", "shape": list(expected.shape), "dtype": "float32"}],
            "delegated_calls": sum(_DELEGATE_CALL in c for c in calls), "portable_ops": dict(portable.most_common())}


def load_executorch(path: str | Path, *, threads: int = 1) -> Runner:
    """Load a `.pte` with ExecuTorch's Python runtime (XNNPACK's thread pool set to `threads`)."""
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    portable_lib._unsafe_reset_threadpool(threads)
    method = Runtime.get().load_program(Path(path)).load_method("forward")
    if method is None:
        raise ValueError(f"{path}: no 'forward' method in this ExecuTorch program")

    def run(inputs: Sequence[torch.Tensor]) -> np.ndarray:
        return method.execute(list(inputs))[0].numpy()

    return run


def spell_out_tanh_gelu(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program` with every `aten.gelu` decomposed into elementwise ops: `approximate="tanh"` as
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the exact GELU through `erf`."""

    def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        if approximate == "tanh":
            return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))
        return 0.5 * x * (1.0 + torch.erf(x * math.sqrt(0.5)))

    return program.run_decompositions({torch.ops.aten.gelu.default: gelu})


def drop_provenance(gm: torch.fx.GraphModule) -> PassResult:
    """Remove the nodes' `from_node` metadata (provenance, for debugging only) in place: torch 2.13
    deep-copies its ever longer history in every EXIR pass, which made `to_executorch` the slowest
    step of a 26-block sub-DiT."""
    from torch.fx.passes.infra.pass_base import PassResult

    for module in gm.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                node.meta.pop("from_node", None)
    return PassResult(gm, False)


def unsupported_op(exc: BaseException, *, version: str) -> UnsupportedOpError:
    """Name the op in an EXIR lowering error (`aten.xxx.overload` in its message), else quote it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    op = re.search(r"aten[.:]+[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?", str(exc))
    what = f"op '{op.group(0)}'" if op else "this sub-DiT"
    return UnsupportedOpError(f"ExecuTorch {version} (XNNPACK) cannot lower {what}: {type(exc).__name__}: {text}")


def _op_name(target: str) -> str:
    """`<EdgeOpOverload: aten.index.Tensor>: schema = ...` -> `aten.index.Tensor`."""
    m = re.search(r"(aten|dim_order_ops|quantized_decomposed)\.[A-Za-z_0-9.]+", target)
    return m.group(0) if m else target
