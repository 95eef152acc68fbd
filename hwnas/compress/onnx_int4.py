"""A real int4 runtime: ONNX with onnxruntime's 4-bit `MatMulNBits` kernels (com.microsoft).

The static sub-DiT (with dequantized weights) is exported by `hwnas.model.export_onnx`; every
MatMul/Gemm whose weight is a quantized Linear is then replaced by a `MatMulNBits` node fed with
the *same packed codes, scales and zero points* as `hwnas.compress.quant` (its rtn layout is
MatMulNBits' layout), so the runtime executes exactly the weights PyTorch's quality was measured
on. A quantized patch conv (kernel = stride p) becomes the same matmul over patches:
`SpaceToDepth(p)` -> NHWC -> `MatMulNBits` -> NCHW for a Conv, NHWC -> `MatMulNBits` -> NCHW ->
`DepthToSpace(p)` for a ConvTranspose (the K and N orders of `quant.matmul_weight`). `accuracy_level=4`
(int8 activations inside the kernel) is what makes it faster than fp32 on x86 CPUs (measured:
docs/platform-notes.md); it also makes the outputs differ slightly from the dequantized PyTorch model,
which `check_parity` measures. k-means palettes have no onnxruntime kernel; that method is refused here
(its codes would have to be re-quantized, which is not the model measured).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from hwnas.compress.quant import (
    PackedWeight,
    QuantizedModel,
    dequantized_copy,
    pack,
    weight_layers,
)
from hwnas.io import atomic_write
from hwnas.model import StaticDiT, example_inputs, export_onnx
from hwnas.model.export import INPUT_NAMES


def export_int4_onnx(model: StaticDiT, q: QuantizedModel, path: str | Path, *, batch: int = 1,
                     accuracy_level: int = 4) -> dict[str, Any]:
    """Write the int4 ONNX model of `model` quantized as `q` to `path`; return what was replaced.

    Only rtn-quantized weights can run on MatMulNBits (4 or 8 bits per layer).
    """
    if any(p.spec.method != "rtn" for p in q.packed.values()):
        raise ValueError("MatMulNBits runs group-wise rtn codes only; quantize with method='rtn' for ONNX")
    path = Path(path)
    fp32_path = path.with_name(path.stem + ".dequant-fp32.onnx")
    deq = dequantized_copy(model, q).eval()
    export_onnx(deq, fp32_path, batch=batch)
    graph_model = onnx.load(str(fp32_path))
    fp32_path.unlink()
    by_value: dict[bytes, str] = {}
    for name, m in weight_layers(deq).items():
        w = np.ascontiguousarray(m.weight.detach().numpy().astype(np.float32))
        by_value[w.tobytes()] = name  # Linear as Gemm(transB=1); convs as stored
        if w.ndim == 2:
            by_value[b"T" + np.ascontiguousarray(w.T).tobytes()] = name  # Linear as MatMul
    graph = graph_model.graph
    inits = {i.name: i for i in graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    replaced = 0
    for node in graph.node:
        layer, bias = _match(node, inits, by_value)
        if layer is None:
            new_nodes.append(node)
            continue
        pw = q.packed[layer]
        assert pw.scales is not None  # rtn (checked above) always stores scales
        n, blocks = pw.scales.shape
        tag = f"{layer}_q{pw.spec.bits}_{replaced}"
        tensors = [numpy_helper.from_array(pw.codes.reshape(n, blocks, -1), tag + "_B"),
                   numpy_helper.from_array(pw.scales.astype(np.float32).reshape(-1), tag + "_scales")]
        if pw.zero_points is not None:
            tensors.append(numpy_helper.from_array(pack(pw.zero_points, pw.spec.bits).reshape(-1), tag + "_zp"))
        added += tensors
        weights = [t.name for t in tensors]
        if node.op_type in ("MatMul", "Gemm"):
            new_nodes.append(_matmulnbits(node.input[0], node.output[0] if bias is None else tag + "_mm",
                                           weights, tag=tag, pw=pw, accuracy_level=accuracy_level))
            if bias is not None:
                new_nodes.append(helper.make_node("Add", [tag + "_mm", bias], [node.output[0]], name=tag + "_bias"))
        elif node.op_type == "Conv":  # (B, C, H, W) -> (B, p*p*C, H/p, W/p) -> NHWC -> (..., O) -> NCHW
            p = int(inits[node.input[1]].dims[2])  # kernel = stride
            new_nodes += [
                helper.make_node("SpaceToDepth", [node.input[0]], [tag + "_s2d"], blocksize=p),
                helper.make_node("Transpose", [tag + "_s2d"], [tag + "_nhwc"], perm=[0, 2, 3, 1]),
                _matmulnbits(tag + "_nhwc", tag + "_mm", weights, tag=tag, pw=pw, accuracy_level=accuracy_level)]
            if bias is not None:
                new_nodes.append(helper.make_node("Add", [tag + "_mm", bias], [tag + "_mmb"]))
            new_nodes.append(helper.make_node("Transpose", [tag + "_mmb" if bias else tag + "_mm"], [node.output[0]],
                                              perm=[0, 3, 1, 2]))
        else:  # ConvTranspose: NHWC (..., C) -> (..., p*p*O) -> NCHW -> DepthToSpace (B, O, pH, pW)
            p = int(inits[node.input[1]].dims[2])  # kernel = stride
            new_nodes += [
                helper.make_node("Transpose", [node.input[0]], [tag + "_nhwc"], perm=[0, 2, 3, 1]),
                _matmulnbits(tag + "_nhwc", tag + "_mm", weights, tag=tag, pw=pw, accuracy_level=accuracy_level),
                helper.make_node("Transpose", [tag + "_mm"], [tag + "_nchw"], perm=[0, 3, 1, 2]),
                helper.make_node("DepthToSpace", [tag + "_nchw"], [node.output[0] if bias is None else tag + "_d2s"],
                                 blocksize=p, mode="DCR")]
            if bias is not None:
                b = numpy_helper.to_array(inits[bias]).reshape(-1, 1, 1)
                added.append(numpy_helper.from_array(b, tag + "_bias_c11"))
                new_nodes.append(helper.make_node("Add", [tag + "_d2s", tag + "_bias_c11"], [node.output[0]]))
        replaced += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(added)
    used = {i for nd in graph.node for i in nd.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    atomic_write(path, lambda tmp: onnx.save(graph_model, str(tmp)))
    return {"path": str(path), "matmulnbits": replaced, "layers": len(q.packed), "file_bytes": path.stat().st_size}


def _matmulnbits(a: str, out: str, weights: list[str], *, tag: str, pw: PackedWeight,
                 accuracy_level: int) -> onnx.NodeProto:
    """`out = a @ W^T` with W the packed weight `pw` (initializers `weights`: B, scales[, zero points])."""
    n, k = pw.shape
    return helper.make_node("MatMulNBits", [a, *weights], [out], name=tag, domain="com.microsoft", K=k, N=n,
                            bits=pw.spec.bits, block_size=pw.block, accuracy_level=accuracy_level)


def _match(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
           by_value: dict[bytes, str]) -> tuple[str | None, str | None]:
    """(layer name, bias input or None) if `node` multiplies by a quantized layer's weight."""
    if len(node.input) < 2 or node.input[1] not in inits:
        return None, None
    w = numpy_helper.to_array(inits[node.input[1]])
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "MatMul" and w.ndim == 2:
        return by_value.get(b"T" + np.ascontiguousarray(w).tobytes()), None
    if node.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0:
            raw = np.ascontiguousarray(w).tobytes()
            key = raw if attrs.get("transB", 0) else b"T" + raw
            name = by_value.get(key)
            if name is not None:
                return name, bias
    if node.op_type in ("Conv", "ConvTranspose") and w.ndim == 4:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        p = w.shape[2]
        plain = (w.shape[2] == w.shape[3] and list(attrs.get("strides", [1, 1])) == [p, p]
                 and not any(attrs.get("pads", [0])) and attrs.get("group", 1) == 1
                 and all(d == 1 for d in attrs.get("dilations", [1, 1])) and not any(attrs.get("output_padding", [0])))
        name = by_value.get(np.ascontiguousarray(w).tobytes())
        if name is not None and plain:
            return name, bias
    return None, None


def _session(path: str | Path, *, threads: int) -> Any:  # an onnxruntime.InferenceSession (no type information)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feed(model: StaticDiT, *, batch: int, seed: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in zip(INPUT_NAMES, example_inputs(model.space, batch=batch, seed=seed))}


@torch.no_grad()
def check_parity(path: str | Path, reference: StaticDiT, *, batch: int = 1, seed: int = 0,
                 threads: int = 1) -> dict[str, float]:
    """Max/mean abs difference between onnxruntime on `path` and PyTorch `reference` (the
    dequantized model), with the reference output's scale for context."""
    feed = _feed(reference, batch=batch, seed=seed)
    got = _session(path, threads=threads).run(None, feed)[0]
    want = reference.eval()(*[torch.from_numpy(feed[k]) for k in INPUT_NAMES]).numpy()
    diff = np.abs(got - want)
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "ref_abs_mean": float(np.abs(want).mean())}


def time_onnx(path: str | Path, model: StaticDiT, *, batch: int = 1, threads: int = 1, warmup: int = 5,
              repeats: int = 30) -> dict[str, float]:
    """Median/p10/p90 wall time in ms of one DiT evaluation with onnxruntime on this host."""
    sess = _session(path, threads=threads)
    feed = _feed(model, batch=batch, seed=0)
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p10_ms": times[len(times) // 10],
            "p90_ms": times[(9 * len(times)) // 10], "n": repeats, "threads": threads, "batch": batch}


def export_fp16_onnx(fp32_path: str | Path, path: str | Path) -> Path | None:
    """fp16 weights and compute (inputs/outputs kept fp32) via onnxruntime's converter; None if
    the converter is unavailable in this onnxruntime build."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        return None
    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    return atomic_write(path, lambda tmp: onnx.save(model, str(tmp)))
