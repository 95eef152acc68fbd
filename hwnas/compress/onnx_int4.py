"""A real int4 runtime: ONNX for onnxruntime, with the packed weights of `hwnas.compress.quant`.

The static sub-DiT (with dequantized weights) is exported by `hwnas.model.export_onnx`; then every
MatMul/Gemm/patch conv whose weight is a quantized layer's gets that layer's *packed* weight, so the
runtime executes exactly the weights PyTorch's quality was measured on:

- **rtn** becomes onnxruntime's 4-bit `MatMulNBits` (com.microsoft), fed with the same codes,
  scales and zero points (quant's rtn layout is MatMulNBits' layout). A quantized patch conv
  (kernel = stride p) becomes the same matmul over patches: `SpaceToDepth(p)` -> NHWC ->
  `MatMulNBits` -> NCHW for a Conv, NHWC -> `MatMulNBits` -> NCHW -> `DepthToSpace(p)` for a
  ConvTranspose (the K and N orders of `quant.matmul_weight`). `accuracy_level=4` (int8
  activations inside the kernel) is what makes it faster than fp32 on x86 CPUs (measured:
  docs/platform-notes.md); it also makes the outputs differ slightly from the dequantized PyTorch
  model, which `check_parity` measures.
- **kmeans** (palettization) keeps the graph's MatMul/Gemm/Conv nodes and replaces each weight
  initializer by a standard-ONNX decoder: the packed palette indices (uint8, two per byte) are split
  into codes, offset by their rows' palette and looked up (`Gather`) in the fp16 palettes, then
  reshaped to the node's weight layout. The file stores 4 (or 8) bits per weight plus palettes;
  onnxruntime runs the decoder once, when the session constant-folds it, so a step then runs at
  fp32 speed on the fp32 weights (Core ML decodes palettes the same way on the phone; onnxruntime
  has no palettized matmul kernel).
- **side parameters** (biases, norms, adaLN tables) stay fp32 initializers holding the fp16-rounded
  values, or with `side_bits=8` become uint8 codes with an fp32 minimum and step, decoded by
  `Cast -> Mul -> Add` under the initializer's own name.
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
    side_grid,
    side_int8,
    side_parameters,
    weight_layers,
)
from hwnas.io import atomic_write
from hwnas.model import StaticDiT, example_inputs, export_onnx
from hwnas.model.export import INPUT_NAMES


def export_int4_onnx(model: StaticDiT, q: QuantizedModel, path: str | Path, *, batch: int = 1,
                     accuracy_level: int = 4) -> dict[str, Any]:
    """Write the int4 ONNX model of `model` quantized as `q` to `path`; return what was replaced.

    rtn layers run on MatMulNBits, k-means layers on a palette decoder (module docstring); 4 or 8
    bits per layer. `accuracy_level` is MatMulNBits' (0: fp32 compute).
    """
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
    replaced = palettized = 0
    for node in graph.node:
        layer, bias = _match(node, inits, by_value)
        if layer is None:
            new_nodes.append(node)
            continue
        pw = q.packed[layer]
        if pw.spec.method == "kmeans":
            decoder, tensors, weight = _palette_decoder(pw, f"p{palettized}", inits[node.input[1]], node)
            new_nodes += decoder
            added += tensors
            node.input[1] = weight
            new_nodes.append(node)
            palettized += 1
            continue
        assert pw.scales is not None  # rtn always stores scales
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
            if bias is not None:  # the bias by name, so that a uint8 side tensor decodes it
                added.append(numpy_helper.from_array(np.array([-1, 1, 1], np.int64), tag + "_c11"))
                new_nodes += [helper.make_node("Reshape", [bias, tag + "_c11"], [tag + "_bias_c11"]),
                              helper.make_node("Add", [tag + "_d2s", tag + "_bias_c11"], [node.output[0]])]
        replaced += 1
    if palettized:
        added += [numpy_helper.from_array(v, name) for name, v in _SHARED.items()]
    decoders, tensors = _side_decoders(deq, q, inits)
    added += tensors
    decoded = {nd.output[0] for nd in decoders}
    del graph.node[:]
    graph.node.extend(decoders + new_nodes)
    graph.initializer.extend(added)
    used = {i for nd in graph.node for i in nd.input}
    keep = [i for i in graph.initializer if i.name in used and i.name not in decoded]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if replaced and not any(o.domain == "com.microsoft" for o in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    atomic_write(path, lambda tmp: onnx.save(graph_model, str(tmp)))
    return {"path": str(path), "matmulnbits": replaced, "palettized": palettized, "layers": len(q.packed),
            "side_uint8": len(decoded), "file_bytes": path.stat().st_size}


def _side_decoders(deq: StaticDiT, q: QuantizedModel,
                   inits: dict[str, onnx.TensorProto]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """With `q.side_bits == 8`: every initializer holding a side tensor stored as uint8
    (`quant.side_int8`) becomes its codes, minimum and step, and `Cast -> Mul -> Add` nodes that
    rebuild it under its own name (onnxruntime folds them at session start), where that makes the
    file smaller (the nodes cost ~150 bytes; the fp32 initializer holds the same grid values).
    Initializers are matched by value, since the exporter merges equal tensors (norm weights of all
    ones, say)."""
    nodes: list[onnx.NodeProto] = []
    tensors: list[onnx.TensorProto] = []
    if q.side_bits != 8:
        return nodes, tensors
    grids = {np.ascontiguousarray(p.detach().numpy(), np.float32).tobytes(): p
             for p in side_parameters(deq).values() if side_int8(p.numel(), q.side_bits)}
    for name, init in inits.items():
        p = grids.get(numpy_helper.to_array(init).tobytes()) if init.data_type == onnx.TensorProto.FLOAT else None
        if p is None:
            continue
        codes, lo, step = side_grid(p)
        tag = f"side{len(nodes) // 3}"
        coded = [numpy_helper.from_array(codes.reshape(tuple(init.dims)), tag + "_u8"),
                 numpy_helper.from_array(np.array(step, np.float32), tag + "_step"),
                 numpy_helper.from_array(np.array(lo, np.float32), tag + "_min")]
        decoder = [helper.make_node("Cast", [tag + "_u8"], [tag + "_f"], to=onnx.TensorProto.FLOAT),
                   helper.make_node("Mul", [tag + "_f", tag + "_step"], [tag + "_s"]),
                   helper.make_node("Add", [tag + "_s", tag + "_min"], [name])]
        if sum(t.ByteSize() for t in coded) + sum(nd.ByteSize() for nd in decoder) < init.ByteSize():  # same values
            tensors += coded
            nodes += decoder
    return nodes, tensors


_NIBBLES = "palette_nibbles"
"""Shared initializer `(256, 2)` int64: byte b -> its two 4-bit codes, low nibble first (quant.pack)."""
_SHARED = {_NIBBLES: np.stack([np.arange(256) & 0xF, np.arange(256) >> 4], axis=1).astype(np.int64),
           "palette_minus_1": np.array([-1], np.int64),  # Reshape to flat; Unsqueeze a last axis
           "palette_0": np.array(0, np.int64), "palette_1": np.array(1, np.int64),
           "palette_start": np.array([0], np.int64)}


def _palette_decoder(pw: PackedWeight, tag: str, weight: onnx.TensorProto,
                     node: onnx.NodeProto) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto], str]:
    """Nodes and initializers that rebuild `weight` (the initializer `node` multiplies by) from the
    palettized `pw`; returns them and the name of the rebuilt fp32 weight. The constants in
    `_SHARED` are added once per graph by the caller."""
    n, k = pw.shape
    assert pw.palette is not None  # kmeans always stores a palette
    levels = pw.palette.shape[1]
    x = tag + "_"

    def const(name: str, value: Any) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=np.int64), x + name)

    tensors = [numpy_helper.from_array(pw.codes, x + "codes"), numpy_helper.from_array(pw.palette, x + "pal"),
               const("nk", [n, k])]
    nodes = [helper.make_node("Cast", [x + "codes"], [x + "c"], to=onnx.TensorProto.INT64)]
    if pw.spec.bits == 4:  # (bytes,) -> (bytes, 2) codes -> (2 bytes,), less the odd pad code
        nodes += [helper.make_node("Gather", [_NIBBLES, x + "c"], [x + "pairs"], axis=0),
                  helper.make_node("Reshape", [x + "pairs", "palette_minus_1"], [x + "all"])]
        if n * k % 2:
            tensors.append(const("count", [n * k]))
            nodes.append(helper.make_node("Slice", [x + "all", "palette_start", x + "count"], [x + "flat"]))
        else:
            nodes.append(helper.make_node("Identity", [x + "all"], [x + "flat"]))
    else:
        nodes.append(helper.make_node("Identity", [x + "c"], [x + "flat"]))
    nodes.append(helper.make_node("Reshape", [x + "flat", x + "nk"], [x + "codes_nk"]))
    if pw.palette.shape[0] > 1:  # one palette per `group` rows: index code + (row // group) * levels
        tensors += [const("n", n), const("group", pw.spec.group), const("levels", levels)]
        nodes += [helper.make_node("Range", ["palette_0", x + "n", "palette_1"], [x + "rows"]),
                  helper.make_node("Div", [x + "rows", x + "group"], [x + "row_palette"]),
                  helper.make_node("Mul", [x + "row_palette", x + "levels"], [x + "row_offset"]),
                  helper.make_node("Unsqueeze", [x + "row_offset", "palette_minus_1"], [x + "offset"]),
                  helper.make_node("Add", [x + "codes_nk", x + "offset"], [x + "index"])]
    else:
        nodes.append(helper.make_node("Identity", [x + "codes_nk"], [x + "index"]))
    nodes += [helper.make_node("Cast", [x + "pal"], [x + "pal32"], to=onnx.TensorProto.FLOAT),
              helper.make_node("Reshape", [x + "pal32", "palette_minus_1"], [x + "pal_flat"]),
              helper.make_node("Gather", [x + "pal_flat", x + "index"], [x + "w_nk"], axis=0)]  # (N, K)
    dims = list(weight.dims)
    if node.op_type in ("Conv", "ConvTranspose"):
        # Conv (O, C, p, p): matmul K in (p, p, C) order; ConvTranspose (C, O, p, p): N in (p, p, O)
        c_or_o, o_or_c, kh, kw = dims
        conv = node.op_type == "Conv"
        tensors.append(const("shape4", [c_or_o, kh, kw, o_or_c] if conv else [kh, kw, o_or_c, c_or_o]))
        nodes += [helper.make_node("Reshape", [x + "w_nk", x + "shape4"], [x + "w4"]),
                  helper.make_node("Transpose", [x + "w4"], [x + "w"], perm=[0, 3, 1, 2] if conv else [3, 2, 0, 1])]
    elif node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
        nodes.append(helper.make_node("Identity", [x + "w_nk"], [x + "w"]))  # (N, K) as stored
    else:  # MatMul, or Gemm without transB: (K, N)
        nodes.append(helper.make_node("Transpose", [x + "w_nk"], [x + "w"], perm=[1, 0]))
    return nodes, tensors, x + "w"


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
