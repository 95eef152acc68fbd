"""Screen fidelity: does a cheap val loss (few images, few t values) keep the full val loss's ranking
and its Pareto front, so that `hwnas search --screen IMAGESxT` can screen the trials?

A uniform sample of the predicted-feasible sub-DiTs (`hwnas.search.start.feasible_set`) is scored
with the full val loss (the search's: 64 images x 8 t values) and with each screen. Per screen: CPU
seconds per evaluation, Spearman and Kendall correlation with the full val loss, and what the
confirmation step (`hwnas.search.confirm`) would pick: the candidates are the screen's fronts 1-2,
scored with the full val loss; reported are how many candidates that is, the share of the true
front (by the full val loss) among them, and the hypervolume of the confirmed front over the true
front's (reference point: the worst full val loss of the sample, the largest latency).

    OMP_NUM_THREADS=1 python benchmarks/screen_fidelity.py --device pixel8 --budget 1.8s --n 600 \\
        --json reports/screen-fidelity.json
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import torch
from _common import add_json, add_seed, parser, positive_int, print_summary, write_json
from scipy import stats

from hwnas.metrics.val_loss import make_val_set, val_loss
from hwnas.paths import display_path
from hwnas.search import LatencyModel, SearchSettings, fits_budget, hypervolume_2d, parse_budget_ms, prepare
from hwnas.search.confirm import FULL_T_VALUES, front_ranks
from hwnas.search.start import feasible_set
from hwnas.train import DEFAULT_CHECKPOINT, load_supernet


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--device", default="pixel8")
    ap.add_argument("--budget", default="1.8s")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=positive_int, default=600, help="feasible sub-DiTs sampled")
    ap.add_argument("--screens", default="8x4,16x4,16x8,32x8", help="IMAGESxT values to compare")
    ap.add_argument("--val-images", type=positive_int, default=64, help="images of the full val loss")
    add_seed(ap, controls="the sample of feasible sub-DiTs")
    add_json(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        screens = [tuple(int(v) for v in item.lower().split("x")) for item in args.screens.split(",")]
        if any(len(sc) != 2 or min(sc) < 1 for sc in screens):
            raise ValueError
    except ValueError:
        ap.error(f"--screens {args.screens!r}: write IMAGESxT,... (e.g. 16x4,32x8)")
    try:
        ctx = prepare(SearchSettings(device=args.device, budget_ms=parse_budget_ms(args.budget)))
    except ValueError as exc:
        ap.error(str(exc))
    s = ctx.settings
    latency = LatencyModel(table=ctx.table, space=ctx.space, steps=s.steps, precision=s.precision,  # type: ignore[arg-type]
                           guidance=s.guidance)  # type: ignore[arg-type]
    feasible = feasible_set(ctx.space, fits_budget(latency, budget_ms=s.budget_ms, confidence=s.confidence))
    cfgs = random.Random(args.seed).sample(feasible, min(args.n, len(feasible)))
    lat = [latency(c).total_ms for c in cfgs]
    ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    net = load_supernet(ckpt)

    def score(n: int, grid: int) -> tuple[list[float], float, str]:
        torch.manual_seed(0)
        val = make_val_set(net, n=n, grid=grid, seed=0)
        start = time.process_time()
        values = [val_loss(net, c, val) for c in cfgs]
        return values, (time.process_time() - start) / len(cfgs), val.description

    full, full_cpu, full_desc = score(args.val_images, FULL_T_VALUES)
    ref = (max(full), max(lat))
    true_ranks = front_ranks(list(zip(full, lat)))
    true_front = {i for i, r in enumerate(true_ranks) if r == 1}
    true_hv = hypervolume_2d(list(zip(full, lat)), ref)
    rows = []
    for n, grid in screens:
        cheap, cpu, desc = score(n, grid)
        cand = [i for i, r in enumerate(front_ranks(list(zip(cheap, lat)))) if r <= 2]
        rows.append({"screen": f"{n}x{grid}", "description": desc, "cpu_s_per_eval": cpu,
                     "cost_vs_full": cpu / full_cpu,
                     "spearman": float(stats.spearmanr(cheap, full)[0]),
                     "kendall": float(stats.kendalltau(cheap, full)[0]),
                     "candidates": len(cand), "true_front_found": len(true_front & set(cand)) / len(true_front),
                     "confirmed_hv_share": hypervolume_2d([(full[i], lat[i]) for i in cand], ref) / true_hv})
    print(f"{len(cfgs)} of {len(feasible)} feasible sub-DiTs on {s.device} under {s.budget_ms:g} ms; full: "
          f"{full_desc} ({full_cpu:.3f} CPU-s each); true front {len(true_front)} points")
    print(f"{'screen':<7} {'CPU-s':>6} {'cost':>5} {'Spearman':>9} {'Kendall':>8} {'cand.':>6} {'front found':>12} "
          f"{'HV share':>9}")
    for r in rows:
        print(f"{r['screen']:<7} {r['cpu_s_per_eval']:>6.3f} {r['cost_vs_full']:>5.2f} {r['spearman']:>9.3f} "
              f"{r['kendall']:>8.3f} {r['candidates']:>6} {r['true_front_found']:>12.0%} "
              f"{r['confirmed_hv_share']:>9.1%}")
    best = max(rows, key=lambda r: (r["confirmed_hv_share"], -r["cost_vs_full"]))
    print_summary([f"best screen {best['screen']}: {best['cost_vs_full']:.2f}x the cost of the full val loss",
                   f"Spearman {best['spearman']:.3f}",
                   f"confirmed front {best['confirmed_hv_share']:.1%} of the true front's HV"])
    if args.json_out:
        write_json(args.json_out, {
            "rows": rows, "full": {"description": full_desc, "cpu_s_per_eval": full_cpu},
            "sample": {"n": len(cfgs), "feasible": len(feasible), "seed": args.seed, "true_front": len(true_front)},
            "reference_point": {"val_loss": ref[0], "latency_ms": ref[1]},
            "settings": {"device": s.device, "budget_ms": s.budget_ms, "steps": s.steps, "precision": s.precision,
                         "confidence": s.confidence},
            "provenance": {"checkpoint": display_path(ckpt), "latency_table": ctx.table.source_label,
                           "command": "python " + " ".join([display_path(sys.argv[0]), *sys.argv[1:]])},
        })


if __name__ == "__main__":
    main()
