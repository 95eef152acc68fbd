"""int4 benchmark: average bits, bytes vs fp16, onnxruntime int4 / fp32 step latency, output parity
and quality before/after (compositional accuracy on --n held-out prompts; fd_ref on --fd-n
images, lower is better; same prompts and noise before and after), per method (rtn sym/asym
groups, k-means, fit: rtn where MatMulNBits blocks fill and palettes elsewhere, mixed 4/8;
--specs picks some). Every weight layer is quantized: Linears and patch convs.

    OMP_NUM_THREADS=1 python benchmarks/int4.py --run reports/RUN --pick best --n 346 --fd-n 200 \
        --steps 28 --json reports/int4.json

--model takes a sub-DiT directory instead (`hwnas export` or `hwnas distill` output: a distilled
student, sampled at its own steps without CFG):

    OMP_NUM_THREADS=1 python benchmarks/int4.py --checkpoint checkpoints/shapes-latent \
        --model runs/full-dmd2 --steps 2 --cfg-scale 1 --n 346 --eval-seeds 3 \
        --specs rtn-g128-asym,rtn-g32-sym-mixed,kmeans --json reports/int4-latent-dmd2.json

With --eval-seeds K each accuracy is the mean over seeds --seed .. --seed + K - 1, and each row
gets the paired change in points (quantized minus fp32, seed by seed) with its standard error.
Every row is also exported and timed in onnxruntime (rtn on MatMulNBits, k-means on the palette
decoder of `hwnas.compress.onnx_int4`, which runs at fp32 speed once decoded). The table has one row
per method; the summary line gives the smallest rtn variant's and k-means' size over fp16 and
accuracy change, and the onnxruntime int4 / fp32 step-time ratios, timed side by side in this run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from _common import add_json, add_seed, parser, positive_int, positive_ints, print_summary, user_input, write_json

from hwnas.compress import (
    QuantSpec,
    check_parity,
    export_int4_onnx,
    finetune_biases_norms,
    from_supernet,
    load_subdit,
    quality_row,
    quantize_subdit,
    resolve_pick,
    run_checkpoint,
    time_onnx,
)
from hwnas.compress.settings import Method
from hwnas.metrics.evaluate import Metric
from hwnas.model import example_inputs, export_onnx
from hwnas.space import resolve_config
from hwnas.train import load_supernet

Spec = tuple[QuantSpec, bool]  # the quantization, mixed 4/8 bits
_TABLE: list[tuple[Method, int | None, bool, bool]] = [  # method, group, symmetric, mixed 4/8 bits
    ("rtn", 32, True, False), ("rtn", 64, True, False), ("rtn", 128, True, False), ("rtn", 32, False, False),
    ("rtn", 128, False, False), ("kmeans", None, True, False), ("rtn", 32, True, True), ("kmeans", None, True, True)]
SPECS: list[Spec] = [(QuantSpec(method, 4, group, sym, side_bits=16), mixed) for method, group, sym, mixed in _TABLE]


def _specs(text: str) -> list[Spec]:
    """An argparse type: `METHOD[-gGROUP][-sym|-asym][-mixed][-side8]`, comma-separated
    (rtn-g128-asym,kmeans); rtn's and fit's group defaults to 32 and symmetric, k-means' palettes
    are per tensor unless -gROWS; -side8 stores biases, norms and adaLN tables as uint8."""
    specs = []
    for item in text.split(","):
        method, *parts = item.strip().split("-")
        group, sym, mixed, side = (None if method == "kmeans" else 32), True, False, 16
        for part in parts:
            if part in ("sym", "asym"):
                sym = part == "sym"
            elif part == "mixed":
                mixed = True
            elif part == "side8":
                side = 8
            elif part.startswith("g") and part[1:].isdigit():
                group = int(part[1:])
            else:
                raise argparse.ArgumentTypeError(f"{item!r}: unknown part {part!r} "
                                                 "(METHOD[-gGROUP][-sym|-asym][-mixed][-side8])")
        try:
            specs.append((QuantSpec(method, 4, group, sym, side), mixed))  # type: ignore[arg-type]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{item!r}: {exc}") from None
    return specs


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--config", default="small",
                    help="tiny|small|full|largest|smallest, an id, config JSON or a JSON file (without --run)")
    ap.add_argument("--run", help="a search run directory: quantize its --pick")
    ap.add_argument("--pick", default="best")
    ap.add_argument("--model", help="a sub-DiT directory (hwnas export / distill output) instead of --config or --run")
    ap.add_argument("--specs", type=_specs, default=SPECS,
                    help="comma-separated METHOD[-gGROUP][-sym|-asym][-mixed][-side8], e.g. rtn-g128-asym,kmeans "
                         "(default: the eight of the README's table)")
    ap.add_argument("--finetune-steps", type=int, default=0,
                    help="after quantizing, train biases, norms and adaLN tables this many steps to match the "
                         "fp32 model's output (`hwnas quantize --finetune-steps`)")
    ap.add_argument("--eval-seeds", type=positive_int, default=1,
                    help="evaluation seeds --seed, --seed + 1, ...: means, and paired changes with their SE")
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
        checkpoint = run_checkpoint(args.run, args.checkpoint)
        if args.model:
            sub = load_subdit(args.model)
            cfg, step = sub.cfg, sub.meta.get("supernet_step")
        else:
            net = load_supernet(checkpoint)
            cfg = resolve_pick(args.run, args.pick) if args.run else resolve_config(net.space, args.config)
            net.space.validate(cfg)
            sub, step = from_supernet(net, cfg), net.meta.get("step")
    seeds = list(range(args.seed, args.seed + args.eval_seeds))
    kw = dict(steps=args.steps, cfg_scale=args.cfg_scale, checkpoint=checkpoint)
    metrics: list[tuple[Metric, int]] = [("compositional", args.n)] + ([("fd_ref", args.fd_n)] if args.fd_n else [])

    def quality(model: object, stage: str) -> dict[str, list[float] | None]:
        """Per metric, its value at each evaluation seed (None where fd_ref's weights are missing)."""
        out: dict[str, list[float] | None] = {}
        for m, n in metrics:
            per_seed = [quality_row(model, cfg, stage=stage, metric=m, n=n, seed=seed, **kw) for seed in seeds]
            out[m] = [r["value"] for r in per_seed if r] or None
        return out

    base = quality(sub, "fp32")
    batches, b0 = args.batches, args.batches[0]
    print(f"{cfg.describe()} ({cfg.id}{', ' + args.model if args.model else ''}), supernet step {step}, "
          f"{args.steps} steps CFG {args.cfg_scale}: compositional n={args.n}, fd_ref n={args.fd_n or '-'}, "
          f"evaluation seeds {seeds}; ORT int4/fp32 at batch {b0}, {args.threads} thread(s)")
    print(f"{'method':8s} {'group':>5s} {'sym':>5s} {'mixed':>5s} {'bits':>6s} {'x fp16':>6s} {'int4/fp32':>9s} "
          f"{'acc':>11s} {'pts (SE)':>12s} {'fd_ref':>13s}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        fp32 = {b: export_onnx(sub.dit, tmp / f"fp32-b{b}.onnx", batch=b) for b in batches}
        t_fp32 = {b: time_onnx(fp32[b], sub.dit, batch=b, threads=args.threads) for b in batches}
        for spec, mixed in args.specs:
            method, group, sym = spec.method, spec.group, spec.symmetric
            qsub, q = quantize_subdit(sub, spec, mixed=mixed, seed=args.seed)
            if args.finetune_steps:
                finetune_biases_norms(qsub.dit, sub.dit, lambda i: example_inputs(sub.space, batch=8, seed=1000 + i),
                                      steps=args.finetune_steps, side_bits=spec.side_bits)
            row = {"method": method, "group": group, "symmetric": sym, "mixed": mixed, **q.summary(),
                   **_paired(base, quality(qsub, "int4")), "n": args.n, "fd_n": args.fd_n, "steps": args.steps,
                   "cfg_scale": args.cfg_scale, "seeds": seeds, "finetune_steps": args.finetune_steps,
                   "fp32_onnx_bytes": fp32[b0].stat().st_size}
            for b in batches:
                info = export_int4_onnx(qsub.dit, q, tmp / f"int4-b{b}.onnx", batch=b)
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
                  f"{row['acc_fp32']:.3f}->{row['acc_quant']:.3f} {_points(row):>12s} {fd:>13s}", flush=True)
    write_json(args.json_out, {"config_id": cfg.id, "describe": cfg.describe(), "model": args.model,
                               "supernet_step": step, "seed": args.seed, "seeds": seeds,
                               "base": {m: statistics.fmean(v) if v else None for m, v in base.items()},
                               "rows": rows})
    parts = []
    rtn = [r for r in rows if r["method"] == "rtn" and not r["mixed"]]
    if rtn:
        small = min(rtn, key=lambda r: r["avg_bits"])
        fast = min(rtn, key=lambda r: r[f"int4_over_fp32_b{b0}"])
        parts += [f"smallest rtn ({_name(small)}) {small['avg_bits']:.2f} bits, "
                  f"{small['compression_vs_fp16']:.2f}x smaller than fp16, accuracy {_points(small)} points",
                  f"ORT int4 / fp32 step time {small[f'int4_over_fp32_b{b0}']:.2f} (best {_name(fast)}: "
                  f"{fast[f'int4_over_fp32_b{b0}']:.2f})"]
    for km in [r for r in rows if r["method"] == "kmeans" and not r["mixed"]][:1]:
        parts.append(f"k-means {km['avg_bits']:.2f} bits, {km['compression_vs_fp16']:.2f}x, accuracy "
                     f"{_points(km)} points, ORT / fp32 {km[f'int4_over_fp32_b{b0}']:.2f}")
    for fit in [r for r in rows if r["method"] == "fit"]:
        parts.append(f"{_name(fit)} {fit['avg_bits']:.2f} bits, {fit['compression_vs_fp16']:.2f}x, accuracy "
                     f"{_points(fit)} points ({fit['layers_kmeans']} of {fit['layers']} layers on palettes)")
    for mixed in [r for r in rows if r["mixed"]]:
        parts.append(f"{_name(mixed)} {mixed['avg_bits']:.2f} bits, accuracy {_points(mixed)} points")
    print_summary(parts)


def _paired(base: dict[str, list[float] | None], quant: dict[str, list[float] | None]) -> dict[str, object]:
    """Per metric (acc for compositional): the means before and after and, for accuracy, the paired
    change in points per seed, its mean and standard error (None with one seed)."""
    row: dict[str, object] = {}
    for metric, before in base.items():
        after, key = quant[metric], "acc" if metric == "compositional" else metric
        row[f"{key}_fp32"] = statistics.fmean(before) if before else None
        row[f"{key}_quant"] = statistics.fmean(after) if after else None
        if metric == "compositional" and before and after:
            diffs = [100 * (a - b) for a, b in zip(after, before, strict=True)]
            row.update(acc_fp32_seeds=before, acc_quant_seeds=after, acc_change_points=diffs,
                       acc_change_mean=statistics.fmean(diffs),
                       acc_change_se=statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None)
    return row


def _points(row: dict) -> str:  # type: ignore[type-arg]
    """`-1.0 (SE 0.8)`, or `-1.0` with one seed."""
    se = row["acc_change_se"]
    return f"{row['acc_change_mean']:+.1f}" + (f" (SE {se:.1f})" if se is not None else "")


def _name(row: dict) -> str:  # type: ignore[type-arg]
    """`rtn-g128-asym`, the --specs spelling of a row."""
    sym = "" if row["method"] == "kmeans" else "-sym" if row["symmetric"] else "-asym"
    group = f"-g{row['group']}" if row["group"] else ""
    side = "-side8" if row.get("side_bits") == 8 else ""
    return f"{row['method']}{group}{sym}{'-mixed' if row['mixed'] else ''}{side}"


if __name__ == "__main__":
    main()
