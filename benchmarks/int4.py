"""int4 benchmark: average bits, bytes vs fp16, onnxruntime int4 / fp32 step latency, output parity
and compositional accuracy before/after, per method (rtn sym/asym groups, k-means, mixed 4/8).

    OMP_NUM_THREADS=1 python benchmarks/int4.py --config small --n 48 --steps 28 --out reports/int4.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from hwnas.compress import (
    QuantSpec, check_parity, export_int4_onnx, from_supernet, quality_row, quantize_subdit, time_onnx,
)
from hwnas.model import export_onnx
from hwnas.space import load_config
from hwnas.train import load_supernet

SPECS = [("rtn", 32, True, False), ("rtn", 64, True, False), ("rtn", 128, True, False), ("rtn", 32, False, False),
         ("rtn", 128, False, False), ("kmeans", None, True, False), ("rtn", 32, True, True), ("kmeans", None, True, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--config", default="small")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1", help="ORT timing batch sizes (one export each)")
    ap.add_argument("--out", default="reports/int4.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = load_supernet(args.checkpoint)
    cfg = net.space.preset(args.config) if args.config in ("tiny", "small", "full") else load_config(args.config)
    sub = from_supernet(net, cfg)
    kw = dict(metric="compositional", n=args.n, steps=args.steps, cfg_scale=args.cfg_scale, checkpoint=args.checkpoint)
    base = quality_row(sub, cfg, stage="fp32", **kw)
    print(json.dumps(base), flush=True)
    tmp = Path(tempfile.mkdtemp())
    batches = [int(b) for b in args.batches.split(",")]
    fp32 = {b: export_onnx(sub.dit, tmp / f"fp32-b{b}.onnx", batch=b) for b in batches}
    t_fp32 = {b: time_onnx(fp32[b], sub.dit, batch=b, threads=args.threads) for b in batches}
    rows = []
    for method, group, sym, mixed in SPECS:
        spec = QuantSpec(method, 4, group, sym)  # type: ignore[arg-type]
        qsub, q = quantize_subdit(sub, spec, mixed=mixed)
        row = {"method": method, "group": group, "symmetric": sym, "mixed": mixed, **q.summary(),
               "acc_fp32": base["value"], "acc_quant": quality_row(qsub, cfg, stage="int4", **kw)["value"],
               "n": args.n, "steps": args.steps, "fp32_onnx_bytes": fp32[batches[0]].stat().st_size}
        if method == "rtn":
            for b in batches:
                info = export_int4_onnx(sub.dit, q, tmp / f"int4-b{b}.onnx", batch=b)
                row["int4_onnx_bytes"] = info["file_bytes"]
                row["parity"] = check_parity(tmp / f"int4-b{b}.onnx", qsub.dit, batch=b, threads=args.threads)
                t4 = time_onnx(tmp / f"int4-b{b}.onnx", sub.dit, batch=b, threads=args.threads)
                row[f"ort_fp32_ms_b{b}"] = t_fp32[b]["median_ms"]
                row[f"ort_int4_ms_b{b}"] = t4["median_ms"]
                row[f"int4_over_fp32_b{b}"] = t4["median_ms"] / t_fp32[b]["median_ms"]
        row.pop("layers_8bit", None)
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config_id": cfg.id, "describe": cfg.describe(),
                                          "supernet_step": net.meta.get("step"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
