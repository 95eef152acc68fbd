"""int4 benchmark: average bits, bytes vs fp16, onnxruntime int4 / fp32 step latency, output parity
and quality before/after (compositional accuracy on --n held-out prompts; fd_ref on --fd-n
images, lower is better; same prompts and noise before and after), per method (rtn sym/asym
groups, k-means, mixed 4/8). Every weight layer is quantized: Linears and patch convs.

    OMP_NUM_THREADS=1 python benchmarks/int4.py --run reports/RUN --pick best --n 346 --fd-n 200 \
        --steps 28 --json reports/int4.json

Every row is also exported and timed in onnxruntime (rtn on MatMulNBits, k-means on the palette
decoder of `hwnas.compress.onnx_int4`, which runs at fp32 speed once decoded). The table has one row
per method; the summary line gives the smallest rtn variant's and k-means' size over fp16 and
accuracy change, and the onnxruntime int4 / fp32 step-time ratios, timed side by side in this run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from _common import add_json, add_seed, parser, positive_int, positive_ints, print_summary, user_input, write_json

from hwnas.compress import (
    QuantSpec,
    check_parity,
    export_int4_onnx,
    from_supernet,
    quality_row,
    quantize_subdit,
    resolve_pick,
    time_onnx,
)
from hwnas.model import export_onnx
from hwnas.space import resolve_config
from hwnas.train import load_supernet

SPECS = [("rtn", 32, True, False), ("rtn", 64, True, False), ("rtn", 128, True, False), ("rtn", 32, False, False),
         ("rtn", 128, False, False), ("kmeans", None, True, False), ("rtn", 32, True, True),
         ("kmeans", None, True, True)]


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--config", default="small",
                    help="tiny|small|full|largest|smallest, an id, config JSON or a JSON file (without --run)")
    ap.add_argument("--run", help="a search run directory: quantize its --pick")
    ap.add_argument("--pick", default="best")
    ap.add_argument("--n", type=positive_int, default=48, help="held-out prompts for compositional accuracy")
    ap.add_argument("--fd-n", type=int, default=0, help="fd_ref images (0: skip)")
    ap.add_argument("--steps", type=positive_int, default=28)
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    ap.add_argument("--threads", type=positive_int, default=1)
    ap.add_argument("--batches", type=positive_ints, default="1", help="ORT timing batch sizes (one export each)")
    add_seed(ap, controls="the evaluation (noise and prompt order), the parity inputs and the mixed-bit "
                          "sensitivity inputs")
    add_json(ap, what="the config, the fp32 quality and every row")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with user_input():
        net = load_supernet(args.checkpoint)
        cfg = resolve_pick(args.run, args.pick) if args.run else resolve_config(net.space, args.config)
        net.space.validate(cfg)
    sub = from_supernet(net, cfg)
    kw = dict(steps=args.steps, cfg_scale=args.cfg_scale, checkpoint=args.checkpoint, seed=args.seed)
    metrics = [("compositional", args.n)] + ([("fd_ref", args.fd_n)] if args.fd_n else [])

    def quality(model: object, stage: str) -> dict[str, float | None]:
        rows = {m: quality_row(model, cfg, stage=stage, metric=m, n=n, **kw) for m, n in metrics}
        return {m: r["value"] if r else None for m, r in rows.items()}

    base = quality(sub, "fp32")
    batches, b0 = args.batches, args.batches[0]
    print(f"{cfg.describe()} ({cfg.id}), {args.steps} steps CFG {args.cfg_scale}: compositional n={args.n}, "
          f"fd_ref n={args.fd_n or '-'}; ORT int4/fp32 at batch {b0}, {args.threads} thread(s)")
    print(f"{'method':8s} {'group':>5s} {'sym':>5s} {'mixed':>5s} {'bits':>6s} {'x fp16':>6s} {'int4/fp32':>9s} "
          f"{'acc':>11s} {'fd_ref':>13s}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        fp32 = {b: export_onnx(sub.dit, tmp / f"fp32-b{b}.onnx", batch=b) for b in batches}
        t_fp32 = {b: time_onnx(fp32[b], sub.dit, batch=b, threads=args.threads) for b in batches}
        for method, group, sym, mixed in SPECS:
            spec = QuantSpec(method, 4, group, sym)  # type: ignore[arg-type]
            qsub, q = quantize_subdit(sub, spec, mixed=mixed, seed=args.seed)
            row = {"method": method, "group": group, "symmetric": sym, "mixed": mixed, **q.summary(),
                   **{f"{'acc' if m == 'compositional' else m}_fp32": v for m, v in base.items()},
                   **{f"{'acc' if m == 'compositional' else m}_quant": v for m, v in quality(qsub, "int4").items()},
                   "n": args.n, "fd_n": args.fd_n, "steps": args.steps,
                   "fp32_onnx_bytes": fp32[b0].stat().st_size}
            for b in batches:
                info = export_int4_onnx(sub.dit, q, tmp / f"int4-b{b}.onnx", batch=b)
                row["int4_onnx_bytes"] = info["file_bytes"]
                row["parity"] = check_parity(tmp / f"int4-b{b}.onnx", qsub.dit, batch=b, seed=args.seed,
                                             threads=args.threads)
                t4 = time_onnx(tmp / f"int4-b{b}.onnx", sub.dit, batch=b, threads=args.threads)
                row[f"ort_fp32_ms_b{b}"] = t_fp32[b]["median_ms"]
                row[f"ort_int4_ms_b{b}"] = t4["median_ms"]
                row[f"int4_over_fp32_b{b}"] = t4["median_ms"] / t_fp32[b]["median_ms"]
            row.pop("layers_8bit", None)
            rows.append(row)
            ratio = row.get(f"int4_over_fp32_b{b0}")
            fd = f"{row['fd_ref_fp32']:.0f}->{row['fd_ref_quant']:.0f}" if row.get("fd_ref_quant") is not None else "-"
            print(f"{method:8s} {group or '-':>5} {sym!s:>5s} {mixed!s:>5s} {row['avg_bits']:6.2f} "
                  f"{row['compression_vs_fp16']:6.2f} {f'{ratio:.2f}' if ratio else '-':>9s} "
                  f"{row['acc_fp32']:.3f}->{row['acc_quant']:.3f} {fd:>13s}", flush=True)
    write_json(args.json_out, {"config_id": cfg.id, "describe": cfg.describe(), "supernet_step": net.meta.get("step"),
                               "seed": args.seed, "base": base, "rows": rows})
    rtn = [r for r in rows if r["method"] == "rtn" and not r["mixed"]]
    small = min(rtn, key=lambda r: r["avg_bits"])
    fast = min(rtn, key=lambda r: r[f"int4_over_fp32_b{b0}"])
    km = next(r for r in rows if r["method"] == "kmeans" and not r["mixed"])
    print_summary([f"smallest rtn (g{small['group']}) {small['avg_bits']:.2f} bits, "
                   f"{small['compression_vs_fp16']:.2f}x smaller than fp16, "
                   f"accuracy {100 * (small['acc_quant'] - small['acc_fp32']):+.1f} points",
                   f"k-means {km['avg_bits']:.2f} bits, {km['compression_vs_fp16']:.2f}x, "
                   f"accuracy {100 * (km['acc_quant'] - km['acc_fp32']):+.1f} points, "
                   f"ORT / fp32 {km[f'int4_over_fp32_b{b0}']:.2f}",
                   f"ORT int4 / fp32 step time {small[f'int4_over_fp32_b{b0}']:.2f} (best g{fast['group']}: "
                   f"{fast[f'int4_over_fp32_b{b0}']:.2f})"])


if __name__ == "__main__":
    main()
