"""Search efficiency: hypervolume reached by NSGA-II at N trials vs random search at N and 4N trials
(several seeds, one fixed reference point), and LUT latency predictions per second.

Quality is the shipped proxy supernet's val loss (cached by config id and shared by every run, so a
sub-DiT is evaluated once); latency the device's LUT; constraint latency <= budget. Studies are
in memory (the storage is not what is measured here).

    OMP_NUM_THREADS=1 python benchmarks/search_efficiency.py --device pixel8 --budget 1.8s --n 64 --seeds 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import optuna
import torch

from hwnas.metrics.val_loss import make_val_set
from hwnas.search import (
    LatencyModel,
    QualityModel,
    SearchSettings,
    hypervolume_2d,
    make_sampler,
    params_from_config,
    parse_budget_ms,
    prepare,
    run_trial,
)
from hwnas.train import load_supernet


def _run(method: str, n: int, seed: int, *, ctx, latency: LatencyModel, quality: QualityModel,  # type: ignore[no-untyped-def]
         population: int) -> list[tuple[float, float]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=make_sampler(method, seed=seed, population_size=population))  # type: ignore[arg-type]
    study.enqueue_trial(params_from_config(ctx.feasibility.fastest, ctx.space))  # as `hwnas search` does
    study.optimize(lambda t: run_trial(t, space=ctx.space, latency=latency, quality=quality,
                                       budget_ms=ctx.settings.budget_ms), n_trials=n)
    return [(t.values[0], t.values[1]) for t in study.trials if t.user_attrs["hwnas"]["feasible"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="pixel8")
    ap.add_argument("--budget", default="1.8s")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--n", type=int, default=64, help="trials of NSGA-II (random gets N and 4N)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--val-images", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ctx = prepare(SearchSettings(device=args.device, budget_ms=parse_budget_ms(args.budget)))
    s = ctx.settings
    net = load_supernet(args.checkpoint)
    quality = QualityModel(net=net, val=make_val_set(net, n=args.val_images))
    latency = LatencyModel(table=ctx.table, space=ctx.space, steps=s.steps, precision=s.precision)  # type: ignore[arg-type]

    start = time.perf_counter()
    runs: dict[tuple[str, int], list[list[tuple[float, float]]]] = {}
    plan = [("nsga2", args.n), ("random", args.n), ("random", 4 * args.n)]
    for method, n in plan:
        runs[(method, n)] = [_run(method, n, seed, ctx=ctx, latency=latency, quality=quality,
                                  population=args.population) for seed in range(args.seeds)]
    wall_s = time.perf_counter() - start
    worst_q = max(q for pts in runs.values() for run in pts for q, _ in run)
    ref = (worst_q + 1e-3, s.budget_ms)  # fixed for every method and seed: worst feasible val loss seen, the budget

    print(f"device {s.device}, budget {s.budget_ms:g} ms, {s.steps} steps {s.precision}; quality: val loss of "
          f"{net.space.name} (step {net.meta.get('step')}); reference point (val loss {ref[0]:.5f}, {ref[1]:g} ms)")
    print(f"{'method':<8} {'trials':>6} {'HV mean':>12} {'HV std':>12} {'best val loss':>14} {'feasible':>9}")
    means = {}
    for (method, n), pts in runs.items():
        hvs = [hypervolume_2d(run, ref) for run in pts]
        means[(method, n)] = statistics.mean(hvs)
        best = statistics.mean(min(q for q, _ in run) for run in pts)
        feas = statistics.mean(len(run) for run in pts)
        print(f"{method:<8} {n:>6} {means[(method, n)]:>12.4f} {statistics.pstdev(hvs):>12.4f} {best:>14.5f} "
              f"{feas:>9.1f}")

    rng = random.Random(0)
    cfgs = [ctx.space.sample(rng) for _ in range(2000)]
    t0 = time.perf_counter()
    for cfg in cfgs:
        latency(cfg)
    per_s = len(cfgs) / (time.perf_counter() - t0)
    print(f"quality evaluations {quality.evaluations} ({quality.cpu_s:.1f} CPU-s), cache hits {quality.hits}; "
          f"search wall {wall_s:.1f} s; LUT predictions/s {per_s:,.0f}")
    n = args.n
    print(f"SUMMARY HV nsga2@{n} / random@{n} = {means[('nsga2', n)] / means[('random', n)]:.3f}; "
          f"nsga2@{n} / random@{4 * n} = {means[('nsga2', n)] / means[('random', 4 * n)]:.3f} "
          f"({args.seeds} seeds); LUT {per_s:,.0f} predictions/s")


if __name__ == "__main__":
    main()
