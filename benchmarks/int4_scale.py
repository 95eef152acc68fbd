"""int4 at deployment widths: what the int4 goals look like for a SnapGen++-size sub-DiT, where the
proxy's 32-40-channel layers (zero-padded MatMulNBits blocks) say nothing.

    OMP_NUM_THREADS=1 python benchmarks/int4_scale.py [--experiment experiments/snapgenpp-1024.toml]
        [--preset small] [--seed 0] [--json reports/int4-scale.json]

1. Size: the static sub-DiT of `--preset` built with random weights (no trained model exists at
   this scale, so there is no quality number here), every weight layer (Linears and patch convs)
   quantized with hwnas's own packers (`quantize_model`: rtn sym/asym at groups 32/64/128,
   k-means 16 levels), bytes counted as stored (codes + fp16 scales + zero points or palettes;
   every other parameter at fp16).
2. Speed: for each distinct matmul shape of one Middle block (at the Middle stage's token count)
   and one Up block (outer token count; its ASSA KV-compression convs run on tokens / p^2
   patches), onnxruntime on one thread runs fp32 `MatMul` and 4-bit
   `MatMulNBits` (accuracy level 4: int8 activations, and 0: fp32 compute) on the same input;
   the packed weights are hwnas's rtn codes. Medians of repeated runs in thread CPU time (one
   intra-op thread runs on the caller's thread), then summed over the block's layers with their
   multiplicity.

The summary line: average bits and size ratio vs fp16 per method, and int4 / fp32 time per block.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json
from onnx import TensorProto, helper, numpy_helper

from hwnas.compress import QuantSpec, quantize_model
from hwnas.compress.quant import matmul_weight, quantize_weight, weight_layers
from hwnas.model.static import StaticDiT
from hwnas.space import load_space

SIZE_SPECS = [("rtn", 32, True), ("rtn", 64, True), ("rtn", 128, True), ("rtn", 32, False), ("rtn", 128, False),
              ("kmeans", None, True)]


def _session(model: Any) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _graph(node: Any, inits: list[Any], m: int, k: int, n: int) -> Any:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])
    graph = helper.make_graph([node], "linear", [x], [y], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def _median_s(sess: ort.InferenceSession, feed: dict[str, np.ndarray], *, min_total_s: float = 1.0) -> float:
    """Median thread-CPU seconds of one run (one intra-op thread runs on the caller's thread)."""
    sess.run(None, feed)
    samples: list[float] = []
    while len(samples) < 3 or (sum(samples) < min_total_s and len(samples) < 20):
        start = time.thread_time()
        sess.run(None, feed)
        samples.append(time.thread_time() - start)
    return statistics.median(samples)


def time_linear(m: int, k: int, n: int, *, group: int, seed: int = 0) -> dict[str, float]:
    """Seconds per call of x (m, k) @ W^T for W (n, k): fp32 MatMul vs MatMulNBits (levels 4 and 0)."""
    rng = np.random.default_rng(seed)
    w = torch.from_numpy(rng.standard_normal((n, k), dtype=np.float32) / np.float32(np.sqrt(k)))
    x = rng.standard_normal((m, k), dtype=np.float32)
    out: dict[str, float] = {}
    fp32 = _graph(helper.make_node("MatMul", ["x", "w"], ["y"]),
                  [numpy_helper.from_array(np.ascontiguousarray(w.numpy().T), "w")], m, k, n)
    ref = _session(fp32).run(None, {"x": x})[0]
    out["fp32_s"] = _median_s(_session(fp32), {"x": x})
    pw = quantize_weight(w, QuantSpec("rtn", 4, group, True))
    blocks = pw.scales.shape[1]
    inits = [numpy_helper.from_array(pw.codes.reshape(n, blocks, -1), "b"),
             numpy_helper.from_array(pw.scales.astype(np.float32).reshape(-1), "s")]
    for level in (4, 0):
        node = helper.make_node("MatMulNBits", ["x", "b", "s"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                                block_size=pw.block, accuracy_level=level)
        sess = _session(_graph(node, inits, m, k, n))
        got = sess.run(None, {"x": x})[0]
        out[f"int4_l{level}_rel_err"] = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        out[f"int4_l{level}_s"] = _median_s(sess, {"x": x})
    return out


def block_matmuls(model: StaticDiT, prefix: str, tokens: int) -> Counter[tuple[int, int, int]]:
    """(M, K, N) of every weight layer in the block `prefix` at `tokens` tokens, with multiplicity
    (a patch conv with kernel p runs on tokens / p^2 patches)."""
    shapes: Counter[tuple[int, int, int]] = Counter()
    for name, mod in weight_layers(model).items():
        if name.startswith(prefix + "."):
            n, k = matmul_weight(mod).shape
            rows = tokens // mod.kernel_size[0] ** 2 if isinstance(mod, torch.nn.Conv2d) else tokens
            shapes[(rows, k, n)] += 1
    return shapes


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--experiment", default="experiments/snapgenpp-1024.toml")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--group", type=positive_int, default=32, help="rtn group of the timed MatMulNBits")
    add_seed(ap, controls="the random weights and the timed matmuls' weights and inputs")
    add_json(ap, what="sizes, matmul times and per-block sums")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with user_input():
        space = load_space(Path(args.experiment))
        cfg = space.preset(args.preset)
    torch.manual_seed(args.seed)
    model = StaticDiT(space, cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.describe()} ({space.name}): {params / 1e6:.1f} M parameters, random weights")
    sizes = []
    print(f"{'method':8s} {'group':>5s} {'sym':>5s} {'avg_bits':>8s} {'all_bits':>8s} {'MB':>8s} {'x fp16':>7s}")
    for method, group, sym in SIZE_SPECS:
        q = quantize_model(model, QuantSpec(method, 4, group, sym, 16))  # type: ignore[arg-type]
        row = {"method": method, "group": group, "symmetric": sym, **q.summary()}
        row.pop("layers_8bit")
        sizes.append(row)
        print(f"{method:8s} {group or '-':>5} {sym!s:>5s} {row['avg_bits']:8.3f} {row['avg_bits_all']:8.3f} "
              f"{row['bytes'] / 1e6:8.1f} {row['compression_vs_fp16']:7.2f}", flush=True)

    speed = []
    blocks = {"middle": ("middle_blocks.0", space.tokens_middle), "up": ("up_blocks.0", space.tokens_outer)}
    print(f"\n{'block':6s} {'M':>5s} {'K':>5s} {'N':>5s} {'x':>2s} {'fp32 ms':>8s} {'int4 l4':>8s} {'int4 l0':>8s} "
          f"{'l4 err':>7s}")
    for block, (prefix, tokens) in blocks.items():
        for (m, k, n), count in sorted(block_matmuls(model, prefix, tokens).items()):
            t = time_linear(m, k, n, group=args.group, seed=args.seed)
            speed.append({"block": block, "m": m, "k": k, "n": n, "count": count, **t})
            print(f"{block:6s} {m:5d} {k:5d} {n:5d} {count:2d} {1e3 * t['fp32_s']:8.2f} "
                  f"{1e3 * t['int4_l4_s']:8.2f} {1e3 * t['int4_l0_s']:8.2f} {t['int4_l4_rel_err']:7.4f}", flush=True)
    per_block = {}
    for block in blocks:
        rows = [r for r in speed if r["block"] == block]
        per_block[block] = {w: sum(r[f"{w}_s"] * r["count"] for r in rows) for w in ("fp32", "int4_l4", "int4_l0")}
    write_json(args.json_out, {
        "experiment": space.name, "preset": args.preset, "config_id": cfg.id, "params": params, "seed": args.seed,
        "weights": "random (size and speed only; no trained model at this scale)", "timed_group": args.group,
        "sizes": sizes, "matmuls": speed, "per_block_s": per_block,
        "runtime": f"onnxruntime {ort.__version__}, CPUExecutionProvider, 1 thread"})
    best = min((r for r in sizes if r["method"] == "rtn"), key=lambda r: r["avg_bits"])
    km = next(r for r in sizes if r["method"] == "kmeans")
    print_summary([f"rtn g{best['group']} sym {best['avg_bits']:.3f} bits, {best['compression_vs_fp16']:.2f}x smaller "
                   f"than fp16", f"kmeans {km['avg_bits']:.3f} bits, {km['compression_vs_fp16']:.2f}x",
                   "matmul time int4 (level 4) / fp32: "
                   + ", ".join(f"{b} block {v['int4_l4'] / v['fp32']:.2f}" for b, v in per_block.items()),
                   "level 0: " + ", ".join(f"{b} {v['int4_l0'] / v['fp32']:.2f}" for b, v in per_block.items())])


if __name__ == "__main__":
    main()
