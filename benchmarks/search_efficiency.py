"""Search efficiency: hypervolume per sampler and start at N trials, against random search at 4N and
against a reference front of every predicted-feasible sub-DiT; evaluations to 95% of its hypervolume.

Quality is the proxy supernet's val loss (the search's own quality, `--val-images` validation
images); latency the device's LUT; a trial is feasible when its latency's one-sided upper bound
(the search's `--confidence`) is within the budget, as in `hwnas search`. Each run is the search's
own machinery on an in-memory study: `first_trials` (the start), `search_sampler`, `run_trial`,
`run_loop`, seeded `--seed`, `--seed` + 1, ... for every sampler and start. A sampler does not know
how many trials it will get, so HV@N is read off the first N trials of one longer run.

Reference front: every sub-DiT predicted within the budget (`hwnas.search.start.feasible_set`;
10,556 on pixel8 at 1.8 s, 4 steps), or a uniform `--reference` of them where there are more, each
evaluated once. Hypervolume (`hypervolume_2d`, both objectives minimised) is taken against one fixed
reference point: (val loss of the fastest sub-DiT, the largest predicted latency of any feasible
sub-DiT). Every run starts from the fastest sub-DiT, so a run's hypervolume is what it found beyond
that free point; a point with a worse val loss than the fastest is dominated by it anyway.
Evaluations are distinct sub-DiTs whose val loss a run computed (infeasible trials cost none).

Caches (runs/cache/search-efficiency/, git-ignored): the val loss of each sub-DiT by config id
(JSONL, shared by every run, so each sub-DiT is evaluated once), the feasible set, and each finished
run. An interrupted benchmark resumes; only the run in progress is redone (from cached val losses).

    OMP_NUM_THREADS=1 python benchmarks/search_efficiency.py --device pixel8 --budget 1.8s \\
        --seeds 5 --n 48,96 --json reports/search-efficiency.json
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from _common import add_json, add_seed, parser, positive_int, positive_ints, print_summary, write_json

from hwnas.io import atomic_write_json
from hwnas.latency.table import table_paths
from hwnas.paths import display_path, repo_path
from hwnas.search import (
    SAMPLERS,
    STARTS,
    LatencyModel,
    QualityModel,
    SearchSettings,
    first_trials,
    fits_budget,
    hypervolume_2d,
    params_from_config,
    parse_budget_ms,
    prepare,
    run_loop,
    run_trial,
    search_sampler,
)
from hwnas.search.run import run_identity
from hwnas.search.start import feasible_set
from hwnas.search.study import DIRECTIONS
from hwnas.space import SubnetConfig

CACHE_DIR = repo_path("runs/cache/search-efficiency")
TARGET = 0.95
"""Fraction of the reference hypervolume that `evals_to_target` counts the evaluations to."""
MAX_TRIALS = {"nsga2": 2000, "nsga3": 2000, "tpe": 384, "gp": 96, "random": 12000}
"""Default trial caps per sampler: TPE's and GP's proposals slow down as trials accumulate (GP takes
seconds each by 96), random search needs thousands of evaluations for 95%."""


@dataclass(frozen=True)
class Trial:
    config_id: str
    feasible: bool
    quality: float | None
    latency_ms: float


def _key(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete lines of `path` (a line cut short by a kill is skipped)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _append_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)


class QualityCache:
    """Val losses by config id in a JSONL file, loaded into `quality.cache` and appended by `flush`."""

    def __init__(self, path: Path, quality: QualityModel) -> None:
        self.path, self.quality = path, quality
        for row in _read_jsonl(path):
            quality.cache[row["config_id"]] = float(row["val_loss"])
        self._written = set(quality.cache)

    def flush(self) -> None:
        new = [k for k in self.quality.cache if k not in self._written]
        _append_jsonl(self.path, [{"config_id": k, "val_loss": self.quality.cache[k]} for k in new])
        self._written.update(new)


def evaluated(trials: list[Trial]) -> list[tuple[float, float]]:
    """(val loss, latency_ms) of each sub-DiT a run evaluated, in the order it first did."""
    seen: set[str] = set()
    out = []
    for t in trials:
        if t.feasible and t.quality is not None and t.config_id not in seen:
            seen.add(t.config_id)
            out.append((t.quality, t.latency_ms))
    return out


def pareto_points(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (val loss, latency) points, both minimised, by increasing latency."""
    out: list[tuple[float, float]] = []
    for q, lat in sorted(set(points), key=lambda p: (p[1], p[0])):
        if not out or q < out[-1][0]:
            out.append((q, lat))
    return out


def hv_at(trials: list[Trial], n: int, ref: tuple[float, float]) -> float:
    return hypervolume_2d([(t.quality, t.latency_ms) for t in trials[:n] if t.feasible and t.quality is not None],
                          ref)


def evals_at(trials: list[Trial], n: int) -> int:
    return len({t.config_id for t in trials[:n] if t.feasible})


def evals_to_target(trials: list[Trial], ref: tuple[float, float], target_hv: float) -> int | None:
    """Distinct evaluations until the hypervolume first reaches `target_hv`; None if the run never does.
    (The hypervolume of a growing prefix never falls, so a bisection finds the first.)"""
    points = evaluated(trials)
    if hypervolume_2d(points, ref) < target_hv:
        return None
    lo, hi = 1, len(points)
    while lo < hi:
        mid = (lo + hi) // 2
        if hypervolume_2d(points[:mid], ref) >= target_hv:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _run(sampler: str, start: str, seed: int, *, ctx: Any, latency: LatencyModel, quality: QualityModel,
         fits: Callable[[SubnetConfig], bool], min_trials: int, max_trials: int, chunk: int,
         done: Callable[[list[Trial]], bool]) -> tuple[list[Trial], float]:
    """One search as `hwnas search` runs it, in memory: at least `min_trials` trials, then `chunk` more at
    a time until `done` or `max_trials`. Returns (trials, wall seconds)."""
    s = ctx.settings
    study = optuna.create_study(directions=list(DIRECTIONS), sampler=search_sampler(
        sampler, start=start, space=ctx.space, fits=fits, seed=seed, population_size=s.population_size))  # type: ignore[arg-type]
    for cfg in first_trials(ctx.space, latency, start=start, sampler=sampler,  # type: ignore[arg-type]
                            fastest=ctx.feasibility.fastest, budget_ms=s.budget_ms, confidence=s.confidence,
                            population_size=s.population_size, seed=seed):
        study.enqueue_trial(params_from_config(cfg, ctx.space))

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        return run_trial(trial, space=ctx.space, latency=latency, quality=quality, budget_ms=s.budget_ms,
                         confidence=s.confidence)

    def trials() -> list[Trial]:
        out = []
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            a = t.user_attrs["hwnas"]
            out.append(Trial(a["config_id"], bool(a["feasible"]), a["quality"], float(a["latency_ms"])))
        return out

    start_s = time.perf_counter()
    n = min_trials
    run_loop(study, objective, n_trials=n)
    while n < max_trials and not done(trials()):
        n = min(n + chunk, max_trials)
        run_loop(study, objective, n_trials=n)
    return trials(), time.perf_counter() - start_s


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _evals_summary(values: list[int | None], done: list[int], cap: int) -> dict[str, Any]:
    """Median over seeds of the evaluations to the target. A seed that never reached it had spent `done`
    evaluations (its run stopped at `cap` trials): the median is None when half or more never did, and
    `at_least` is a lower bound on it either way (the unreached seeds counted at what they had spent)."""
    reached = sorted(v for v in values if v is not None)
    med = statistics.median(reached + [math.inf] * (len(values) - len(reached)))
    bound = statistics.median(v if v is not None else d for v, d in zip(values, done))
    return {"median": None if math.isinf(med) else med, "at_least": bound, "per_seed": values,
            "evaluations_spent": done, "reached": len(reached), "seeds": len(values), "max_trials": cap}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--device", default="pixel8")
    ap.add_argument("--budget", default="1.8s")
    ap.add_argument("--checkpoint", default=None, help="supernet checkpoint (default: the shipped proxy)")
    ap.add_argument("--n", type=positive_ints, default=[48, 96],
                    help="trial counts N at which hypervolumes are compared (default: 48,96)")
    ap.add_argument("--seeds", type=positive_int, default=5, help="seeds per sampler and start")
    add_seed(ap, controls="the runs: seed, seed + 1, ... (--seeds of them)")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--starts", default=",".join(STARTS))
    ap.add_argument("--max-trials", default=",".join(f"{k}={v}" for k, v in MAX_TRIALS.items()),
                    help="SAMPLER=TRIALS,...: runs continue past max(N) (in steps of max(N)) until 95%% of the "
                         "reference hypervolume or this many trials")
    ap.add_argument("--reference", type=int, default=20000,
                    help="at most this many feasible sub-DiTs in the reference front (a uniform subset if more)")
    ap.add_argument("--val-images", type=int, default=64, help="validation images of the val loss")
    ap.add_argument("--reference-only", action="store_true", help="evaluate the reference front and stop")
    add_json(ap, what="the report")
    args = ap.parse_args()
    ns = sorted(set(args.n))
    try:
        caps = {**MAX_TRIALS, **{k: int(v) for k, _, v in (item.partition("=") for item in args.max_trials.split(","))}}
    except ValueError:
        ap.error(f"--max-trials {args.max_trials!r}: write SAMPLER=TRIALS,... (e.g. nsga2=2000,gp=96)")
    samplers = args.samplers.split(",")
    starts = args.starts.split(",")
    for name in samplers:
        if name not in SAMPLERS:
            ap.error(f"unknown sampler {name!r}; choose from {list(SAMPLERS)}")
    for name in starts:
        if name not in STARTS:
            ap.error(f"unknown start {name!r}; choose from {list(STARTS)}")
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # NSGA-III's, once per run
    wall0, cpu0 = time.perf_counter(), time.process_time()

    try:
        ctx = prepare(SearchSettings(device=args.device, budget_ms=parse_budget_ms(args.budget),
                                     checkpoint=args.checkpoint, val_images=args.val_images))
    except ValueError as exc:
        ap.error(str(exc))
    s = ctx.settings
    default = SearchSettings(device=s.device, budget_ms=s.budget_ms)  # the code's defaults, not chosen here
    ident = run_identity(ctx)
    latency = LatencyModel(table=ctx.table, space=ctx.space, steps=s.steps, precision=s.precision,  # type: ignore[arg-type]
                           guidance=s.guidance)  # type: ignore[arg-type]
    fits = fits_budget(latency, budget_ms=s.budget_ms, confidence=s.confidence)

    from hwnas.metrics.val_loss import make_val_set
    from hwnas.train import DEFAULT_CHECKPOINT, load_supernet

    ckpt = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    net = load_supernet(ckpt)
    torch.manual_seed(0)
    val = make_val_set(net, n=s.val_images, seed=0)  # as `hwnas search` builds it
    quality = QualityModel(net=net, val=val)
    qcache = QualityCache(CACHE_DIR / f"quality-{net.space.name}-{ident['checkpoint_sha256'][:12]}-"
                                      f"val{s.val_images}.jsonl", quality)

    # the reference: every predicted-feasible sub-DiT (or a uniform subset), each evaluated once
    setup = {k: ident[k] for k in ("device", "budget_ms", "steps", "precision", "confidence", "guidance",
                                   "latency_table_sha256", "experiment_sha256")}
    fpath = CACHE_DIR / f"feasible-{_key(setup)}.json"
    if fpath.is_file():
        feasible = [SubnetConfig.from_dict(d) for d in json.loads(fpath.read_text())]
    else:
        feasible = feasible_set(ctx.space, fits)
        atomic_write_json(fpath, [c.to_dict() for c in feasible])
    pool = (feasible if len(feasible) <= args.reference
            else random.Random(args.seed).sample(feasible, args.reference))
    todo = [c for c in pool if c.id not in quality.cache]
    print(f"reference: {len(pool)} of {len(feasible)} feasible sub-DiTs, {len(todo)} to evaluate "
          f"({s.val_images} val images)", flush=True)
    for i, cfg in enumerate(todo, 1):
        quality(cfg)
        if i % 100 == 0 or i == len(todo):
            qcache.flush()
            print(f"  evaluated {i}/{len(todo)} ({quality.cpu_s / i:.3f} CPU-s each)", flush=True)
    if args.reference_only:
        return
    points = {c.id: (quality.cache[c.id], latency(c).total_ms) for c in pool}
    fastest = ctx.feasibility.fastest
    q_fast, _ = quality(fastest)
    ref = (q_fast, max(latency(c).total_ms for c in feasible))
    ref_hv = hypervolume_2d(list(points.values()), ref)
    front_size = len(pareto_points(list(points.values())))
    target_hv = TARGET * ref_hv

    # the runs: every sampler and start, seeds base .. base + seeds - 1; each cached once finished. The
    # samplers' feasibility predicate is the LUT's, looked up in the feasible set (the same answers, ~40x
    # faster for the random sampler's rejection draws); run_trial still predicts each trial's latency,
    # and the check below compares the two on every trial.
    feasible_ids = {c.id for c in feasible}

    def tabulated(cfg: SubnetConfig) -> bool:
        return cfg.id in feasible_ids

    nmax = max(ns)
    code = hashlib.sha256(b"".join(repo_path(f"hwnas/search/{name}.py").read_bytes()
                                   for name in ("start", "study", "objective"))).hexdigest()  # what proposes
    run_key = _key({**setup, "code": code, "checkpoint_sha256": ident["checkpoint_sha256"], "val_images": s.val_images,
                    "population_size": s.population_size, "optuna": optuna.__version__, "target": TARGET,
                    "reference": len(pool)})
    rpath = CACHE_DIR / f"runs-{run_key}.jsonl"
    cached = {(r["sampler"], r["start"], r["seed"]): r for r in _read_jsonl(rpath)}
    runs: dict[tuple[str, str], list[list[Trial]]] = {}
    seeds = [args.seed + i for i in range(args.seeds)]

    def reached(trials: list[Trial]) -> bool:
        return hypervolume_2d(evaluated(trials), ref) >= target_hv

    first = [default.sampler, "random"]  # the headline runs first
    for sampler in sorted(samplers, key=lambda name: first.index(name) if name in first else len(first)):
        cap = caps[sampler]
        need = 4 * nmax if sampler == "random" else nmax
        for start in starts:
            for seed in seeds:
                row = cached.get((sampler, start, seed))
                if row is None or len(row["trials"]) < need or row["max_trials"] < cap and not row["reached"]:
                    trials, wall = _run(sampler, start, seed, ctx=ctx, latency=latency, quality=quality, fits=tabulated,
                                        min_trials=need, max_trials=max(cap, need), chunk=nmax, done=reached)
                    row = {"sampler": sampler, "start": start, "seed": seed, "max_trials": max(cap, need),
                           "reached": reached(trials), "wall_s": round(wall, 2),
                           "trials": [[t.config_id, t.feasible, t.quality, t.latency_ms] for t in trials]}
                    _append_jsonl(rpath, [row])
                    qcache.flush()
                    print(f"  {sampler}/{start} seed {seed}: {len(trials)} trials in {wall:.0f} s", flush=True)
                cached[(sampler, start, seed)] = row
                runs.setdefault((sampler, start), []).append([Trial(*t) for t in row["trials"]])

    checked = [t for group in runs.values() for trials in group for t in trials]
    mismatched = sum(t.feasible != (t.config_id in feasible_ids) for t in checked)
    if mismatched:
        raise SystemExit(f"{mismatched} of {len(checked)} trials disagree with the feasible set: latency is not "
                         f"monotone where feasible_set assumes it")

    # the table
    rows = []
    for (sampler, start), group in runs.items():
        cap = max(caps[sampler], 4 * nmax if sampler == "random" else nmax)
        row: dict[str, Any] = {"sampler": sampler, "start": start, "seeds": len(group)}
        for n in ns + ([4 * n for n in ns] if sampler == "random" else []):
            hvs = [hv_at(t, n, ref) for t in group]
            mean, sd = _mean_sd(hvs)
            row[f"hv@{n}"] = {"mean": mean, "sd": sd, "per_seed": hvs, "of_reference": mean / ref_hv,
                              "feasible_trials": statistics.mean(sum(x.feasible for x in t[:n]) for t in group),
                              "evaluations": statistics.mean(evals_at(t, n) for t in group),
                              "best_val_loss": statistics.mean(min(q for q, _ in evaluated(t[:n])) for t in group)}
        row["evals_to_95"] = _evals_summary([evals_to_target(t, ref, target_hv) for t in group],
                                            [len(evaluated(t)) for t in group], cap)
        row["wall_s_per_run"] = statistics.mean(cached[(sampler, start, sd)]["wall_s"] for sd in seeds)
        rows.append(row)
    by = {(r["sampler"], r["start"]): r for r in rows}
    unit = f"val loss x ms (reference point: val loss {ref[0]:.5f}, {ref[1]:.1f} ms)"
    print(f"\ndevice {s.device}, budget {s.budget_ms:g} ms, {s.steps} steps {s.precision}, feasible = one-sided "
          f"{s.confidence:.0%} upper bound <= budget; quality: {val.description} of {display_path(ckpt)}")
    print(f"feasible-set check: all {len(checked)} trials' LUT feasibility agrees with the tabulated set")
    print(f"reference front: {front_size} Pareto points of {len(pool)} feasible sub-DiTs, HV {ref_hv:.4f}, "
          f"best val loss {min(q for q, _ in points.values()):.4f}; "
          f"HV in {unit}")
    head = f"{'sampler':<8} {'start':<9}" + "".join(f" {'HV@' + str(n):>17}" for n in ns)
    print(head + f" {'evals@' + str(nmax):>9} {'best@' + str(nmax):>9} {'evals to 95%':>13} {'reached':>8}")
    for r in rows:
        cells = "".join(f" {r[f'hv@{n}']['mean']:>8.4f} ± {r[f'hv@{n}']['sd']:<6.4f}" for n in ns)
        e = r["evals_to_95"]
        med = f">{e['at_least']:g}" if e["median"] is None else f"{e['median']:g}"
        print(f"{r['sampler']:<8} {r['start']:<9}{cells} {r[f'hv@{nmax}']['evaluations']:>9.1f} "
              f"{r[f'hv@{nmax}']['best_val_loss']:>9.4f} {med:>13} "
              f"{e['reached']:>4}/{e['seeds']}")
    for start in starts:
        if ("random", start) in by:
            r = by[("random", start)]
            cells = "  ".join(f"random@{4 * n} {r[f'hv@{4 * n}']['mean']:.4f} ± {r[f'hv@{4 * n}']['sd']:.4f}"
                              for n in ns)
            print(f"random/{start}: {cells}")

    dflt = by.get((default.sampler, default.start))
    rnd = by.get(("random", default.start))
    summary: dict[str, Any] = {}
    if dflt and rnd:
        summary = {
            "default": {str(n): dflt[f"hv@{n}"]["mean"] for n in ns},
            "default_sd": {str(n): dflt[f"hv@{n}"]["sd"] for n in ns},
            "random_4x": {str(n): rnd[f"hv@{4 * n}"]["mean"] for n in ns},
            "random_4x_sd": {str(n): rnd[f"hv@{4 * n}"]["sd"] for n in ns},
            "evals_to_95": {"default": dflt["evals_to_95"]["median"], "random": rnd["evals_to_95"]["median"]},
            "evals_to_95_at_least": {"default": dflt["evals_to_95"]["at_least"],
                                     "random": rnd["evals_to_95"]["at_least"]},
        }
        ratios = "; ".join(f"HV {default.sampler}@{n} / random@{4 * n} = "
                           f"{summary['default'][str(n)] / summary['random_4x'][str(n)]:.3f}" for n in ns)
        d95, r95 = summary["evals_to_95"]["default"], summary["evals_to_95"]["random"]
        if d95 and r95:
            fewer = f"{r95 / d95:.2f}x fewer"
        elif d95:  # random's median is censored: its lower bound gives a lower bound on the ratio
            r95 = f">{summary['evals_to_95_at_least']['random']:g}"
            fewer = f"more than {summary['evals_to_95_at_least']['random'] / d95:.1f}x fewer"
        else:
            fewer = "the default did not reach it in half the seeds"
        print_summary([f"default {default.sampler}/{default.start}, random with the {default.start} start: {ratios}",
                       f"evaluations to 95% of the reference HV {d95} vs {r95} ({fewer})", f"{args.seeds} seeds"])
    if args.json_out:
        table_csv = table_paths(s.device, ctx.space.name, table_dir=repo_path(s.table_dir))[0]
        write_json(args.json_out, {
            **summary,
            "default_sampler": {"sampler": default.sampler, "start": default.start},
            "random": f"the random sampler with the {default.start} start (its default)",
            "hv_unit": unit, "reference_point": {"val_loss": ref[0], "latency_ms": ref[1],
                                                 "why": "val loss of the fastest sub-DiT (every run's first trial), "
                                                        "the largest predicted latency of any feasible sub-DiT"},
            "feasibility_check": {"trials": len(checked), "disagreeing": mismatched},
            "reference": {"feasible_sub_dits": len(feasible), "evaluated": len(pool), "pareto_points": front_size,
                          "best_val_loss": min(q for q, _ in points.values()),
                          "hv": ref_hv, "target": TARGET, "how": "every predicted-feasible sub-DiT"
                          if len(pool) == len(feasible) else f"a uniform {len(pool)} of the feasible sub-DiTs"},
            "table": rows,
            "settings": {"device": s.device, "budget_ms": s.budget_ms, "steps": s.steps, "precision": s.precision,
                         "confidence": s.confidence, "guidance": s.guidance, "population_size": s.population_size,
                         "n": ns, "seeds": seeds, "samplers": samplers, "starts": starts,
                         "max_trials": {k: caps[k] for k in samplers},
                         "val_images": s.val_images, "evaluations": "distinct sub-DiTs whose val loss a run computed"},
            "provenance": {"quality": f"{val.description}; proxy supernet {display_path(ckpt)} (training step "
                                      f"{net.meta.get('step', '?')}, sha256 {ident['checkpoint_sha256'][:16]})",
                           "latency": f"{display_path(table_csv)} ({ctx.table.source_label}, sha256 "
                                      f"{ident['latency_table_sha256'][:16]})",
                           "experiment": display_path(s.experiment), "optuna": optuna.__version__,
                           "command": "python " + " ".join([display_path(sys.argv[0]), *sys.argv[1:]]),
                           "wall_s": round(time.perf_counter() - wall0, 1),
                           "cpu_s": round(time.process_time() - cpu0, 1)},
        })


if __name__ == "__main__":
    main()
