"""Budget sweep vs standalone searches: quality evaluations and the front reached at each budget.

For each seed: one sweep over the budgets (`hwnas search --budget a,b,c`: one quality cache, loosest
budget first, `--trials N` there and N/4 shared by the others) and one standalone search of N
trials per budget, each with its own cache. Reported per budget: quality evaluations (sub-DiTs whose
val loss was computed, not answered from a cache) and the hypervolume of the feasible evaluated
sub-DiTs under that budget (reference: the worst val loss any run evaluated under it, and the
budget). Goal (issue 15): the sweep costs at most 1.5x the quality evaluations of one search.

    OMP_NUM_THREADS=1 python benchmarks/budget_sweep.py --device pixel8 --budgets 1.4s,1.8s,2.4s --n 96 --seeds 3 \
        --json reports/budget-sweep.json
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json

from hwnas.search import SearchSettings, format_ms, hypervolume_2d, run_search
from hwnas.search.sweep import parse_budgets_ms, run_sweep

CHEAP_GRIDS = dict(max_grids=2, sample_prompts=1, sample_steps=1)
"""The searches write sample grids of their picks; the cheapest ones (grids are not what is measured)."""


def _evaluated(run_dir: Path, budget_ms: float) -> pd.DataFrame:
    t = pd.read_csv(run_dir / "trials.csv")
    return t[t["quality_evaluated"] & t["feasible"] & (t["latency_ms_hi"] <= budget_ms)]


def _evals(run_dir: Path) -> int:
    return int(json.loads((run_dir / "search_cost.json").read_text())["quality_evaluations"])


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--device", default="pixel8")
    ap.add_argument("--budgets", default="1.4s,1.8s,2.4s")
    ap.add_argument("--n", type=positive_int, default=96, help="--trials of every search")
    ap.add_argument("--seeds", type=positive_int, default=3, help="searches per budget: seeds SEED..SEED+SEEDS-1")
    ap.add_argument("--work", default="runs/budget-sweep", help="scratch folder for the runs")
    ap.add_argument("--fresh", action="store_true", help="rerun the standalone searches too")
    add_seed(ap, controls="the first search (the samplers and the first generation)")
    add_json(ap, what="the per-budget summary and every run")
    args = ap.parse_args()
    with user_input():
        budgets = parse_budgets_ms(args.budgets)
    seeds = range(args.seed, args.seed + args.seeds)
    work = Path(args.work)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    for old in work.glob("seed*/sweep"):  # a sweep rerun with other settings must not resume; seeded
        shutil.rmtree(old)                # standalone searches resume unchanged (they repeat exactly)
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for seed in seeds:
        base = SearchSettings(device=args.device, budget_ms=max(budgets), n_trials=args.n, seed=seed, **CHEAP_GRIDS)
        sweep = run_sweep(base, budgets, out=work / f"seed{seed}" / "sweep", report=False)
        for member in sweep.members:
            b = member.budget_ms
            single_dir = work / f"seed{seed}" / f"single-{format_ms(b)}"
            run_search(SearchSettings(device=args.device, budget_ms=b, n_trials=args.n, seed=seed, **CHEAP_GRIDS),
                       out=single_dir, report=False)
            rows.append({"seed": seed, "budget_ms": b, "sweep_evals": member.quality_evaluations,
                         "sweep_trials": member.trials, "carried": member.carried_trials,
                         "single_evals": _evals(single_dir), "sweep_dir": member.run_dir, "single_dir": single_dir})
        print(f"seed {seed}: sweep {sweep.quality_evaluations} evaluations "
              f"({time.perf_counter() - start:.0f} s so far)", flush=True)
    # hypervolume per budget: one reference for every run under that budget
    for b in budgets:
        mine = [r for r in rows if r["budget_ms"] == b]
        frames = {id(r): (_evaluated(r["sweep_dir"], b), _evaluated(r["single_dir"], b)) for r in mine}
        q_ref = max(float(f["quality"].max()) for pair in frames.values() for f in pair if len(f))
        for r in mine:
            sweep_f, single_f = frames[id(r)]
            r["sweep_hv"] = hypervolume_2d(list(zip(sweep_f["quality"], sweep_f["latency_ms"])), (q_ref, b))
            r["single_hv"] = hypervolume_2d(list(zip(single_f["quality"], single_f["latency_ms"])), (q_ref, b))
            r["q_ref"] = q_ref
    summary: dict[str, Any] = {"per_budget": {}}
    for b in budgets:
        mine = [r for r in rows if r["budget_ms"] == b]

        def ms(key: str, mine: list[dict[str, Any]] = mine) -> dict[str, float]:
            vals = [float(r[key]) for r in mine]
            return {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0}

        summary["per_budget"][format_ms(b)] = {k: ms(k) for k in ("sweep_evals", "single_evals", "sweep_hv",
                                                                   "single_hv", "carried")}
    totals = [sum(r["sweep_evals"] for r in rows if r["seed"] == s) for s in seeds]
    singles = {format_ms(b): [r["single_evals"] for r in rows if r["budget_ms"] == b] for b in budgets}
    mean_single = statistics.fmean(v for vals in singles.values() for v in vals)
    summary["sweep_evals_total"] = {"mean": statistics.fmean(totals),
                                    "sd": statistics.stdev(totals) if len(totals) > 1 else 0.0, "per_seed": totals}
    summary["ratio_to_one_search"] = {
        "vs_mean_single": statistics.fmean(totals) / mean_single,
        **{f"vs_single_{k}": statistics.fmean(totals) / statistics.fmean(v) for k, v in singles.items()},
        "vs_all_singles": statistics.fmean(totals) / sum(statistics.fmean(v) for v in singles.values()),
    }
    out = {"device": args.device, "budgets_ms": list(budgets), "n_trials": args.n, "seeds": list(seeds),
           "command": f"OMP_NUM_THREADS=1 python benchmarks/budget_sweep.py --device {args.device} --budgets "
                      f"{args.budgets} --n {args.n} --seed {args.seed} --seeds {args.seeds}",
           "summary": summary,
           "runs": [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()} for r in rows],
           "wall_s": round(time.perf_counter() - start, 1)}
    print(f"{'budget':>8} {'sweep evals':>14} {'search evals':>14} {'sweep HV':>16} {'search HV':>16} {'carried':>8}")
    for name, v in summary["per_budget"].items():
        print(f"{name:>8} " + " ".join(f"{v[k]['mean']:>{w - 6}.1f} ±{v[k]['sd']:>4.1f}" for k, w in
                                       (("sweep_evals", 15), ("single_evals", 15), ("sweep_hv", 17),
                                        ("single_hv", 17))) + f" {v['carried']['mean']:>8.1f}")
    write_json(args.json_out, out)
    ratios = summary["ratio_to_one_search"]
    print_summary([f"sweep {summary['sweep_evals_total']['mean']:.1f} evaluations = "
                   f"{ratios['vs_mean_single']:.2f}x a mean one-budget search (goal <= 1.5x)",
                   *(f"{ratios[k]:.2f}x the {k.removeprefix('vs_single_')} search" for k in ratios
                     if k.startswith("vs_single_")),
                   f"{ratios['vs_all_singles']:.2f}x all {len(budgets)} searches"])


if __name__ == "__main__":
    main()
