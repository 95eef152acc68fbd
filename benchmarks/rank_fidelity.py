"""Rank fidelity of the proxy supernet: does weight sharing rank sub-DiTs the way training each
of them alone does?

    # 1. train each sub-DiT of SUBNETS from scratch, alone, with the supernet's recipe (resumable:
    #    rerunning continues every run where it stopped)
    python benchmarks/rank_fidelity.py train --runs runs/standalone [--parallel 4] [--steps 1200]
    # 2. compare: Kendall tau / Spearman rho of inherited vs stand-alone val loss, with bootstrap
    #    95% intervals, against two zero-cost baselines (parameter count, FLOPs per step)
    python benchmarks/rank_fidelity.py report --runs runs/standalone [--seed 0] \
        [--json reports/rank-fidelity.json --plot reports/rank-fidelity.png]

The stand-alone val loss is the flow-matching loss of the run's EMA weights on the validation set
the search uses (64 images, 8 t values, seed 0), logged during training; "full budget" is the
last step every run reached and "half budget" the logged step nearest half of it, so the table
shows whether the ranking had settled. The inherited val loss is the supernet's (the search's
quality signal) on the same set. `report` prints a table and a summary line of rank correlations
(the supernet's against the baselines', all on the same runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json
from scipy import stats

from hwnas.cost import count_params, flops_per_step
from hwnas.space import SearchSpace, StageConfig, SubnetConfig, load_space

DEFAULT_EXPERIMENT = "experiments/shapes-latent.toml"


def subnets(space: SearchSpace) -> dict[str, SubnetConfig]:
    """The sub-DiTs compared: the extremes, SnapGen++'s presets, each attention kind, narrow and
    wide outer stages, shallow and deep, and a few mixed ones."""

    def sub(down: tuple, middle: tuple, up: tuple) -> SubnetConfig:
        def stage(w: float, d: int, f: int, attn: str = "full", r: int = 0) -> StageConfig:
            return StageConfig(width=w, depth=d, ffn_ratio=f, attn=attn, radius=r)  # type: ignore[arg-type]

        return SubnetConfig(down=stage(*down), middle=stage(*middle), up=stage(*up))

    out = {
        "smallest": space.smallest(),
        "largest": space.largest(),
        **space.presets(),
        "bna-half": sub((0.5, 6, 4, "bna", 1), (0.5, 10, 3), (0.5, 10, 4, "bna", 1)),
        "global-0.75": sub((0.75, 6, 4, "global"), (0.75, 10, 3), (0.75, 10, 4, "global")),
        "narrow-outer": sub((0.375, 4, 3, "assa", 1), (1.0, 10, 4), (0.375, 8, 3, "assa", 1)),
        "wide-outer": sub((1.0, 4, 4, "assa", 2), (0.375, 4, 2), (1.0, 6, 4, "assa", 2)),
        "shallow": sub((0.75, 2, 3, "assa", 2), (0.75, 4, 3), (0.75, 6, 3, "assa", 2)),
        "deep-narrow": sub((0.5, 6, 2, "bna", 2), (0.5, 10, 2), (0.5, 10, 2, "bna", 2)),
        "mixed-a": sub((0.625, 4, 3, "bna", 1), (0.625, 6, 3), (0.625, 8, 3, "global")),
        "mixed-b": sub((1.0, 2, 2, "global"), (0.5, 8, 4), (0.5, 10, 4, "bna", 2)),
    }
    for cfg in out.values():
        space.validate(cfg)
    return out


def _train(args: argparse.Namespace) -> None:
    with user_input():
        space = load_space(args.experiment)
    runs = Path(args.runs)
    pending = []
    for name, cfg in subnets(space).items():
        run = runs / name
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.json").write_text(cfg.to_json() + "\n")
        cmd = [sys.executable, "-m", "hwnas.cli", "train", "--experiment", args.experiment, "--out", str(run),
               "--standalone", str(run / "config.json"), "--threads", "1", "--quiet"]
        for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size),
                            ("--max-wall-s", args.max_wall_s), ("--stop-at", args.stop_at),
                            ("--cache-dir", args.cache_dir)):
            if value is not None:
                cmd += [flag, str(value)]
        if (run / "train_state.pt").exists():
            cmd.append("--resume")
        pending.append((name, cmd, run))
    running: list[tuple[str, subprocess.Popen, float]] = []
    failed = []
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < args.parallel:
            name, cmd, run = pending.pop(0)
            log = (run / "train.log").open("a")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                   env={**os.environ, "OMP_NUM_THREADS": "1"}),
                            time.perf_counter()))
        for item in list(running):
            name, proc, began = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                if proc.returncode:
                    failed.append(name)
                print(f"{name:<13} {status} in {time.perf_counter() - began:.0f} s", flush=True)
        time.sleep(1.0)
    print(f"trained {len(subnets(space)) - len(failed)} stand-alone sub-DiTs in "
          f"{time.perf_counter() - start:.0f} s; failed: {failed or 'none'}")
    if failed:
        sys.exit(1)


def _val_log(run: Path) -> dict[int, float]:
    with (run / "val_log.csv").open() as fh:
        return {int(row["step"]): float(row["subnet"]) for row in csv.DictReader(fh)}


def _taus(pred: np.ndarray, truth: np.ndarray, *, boot: int, seed: int) -> dict[str, object]:
    """Kendall tau and Spearman rho of `pred` against `truth` (both: lower is better), with 95%
    percentile-bootstrap intervals over resampled sub-DiTs."""
    tau = float(stats.kendalltau(pred, truth).statistic)
    rho = float(stats.spearmanr(pred, truth).statistic)
    rng = np.random.default_rng(seed)
    taus, rhos = [], []
    for _ in range(boot):
        idx = rng.integers(len(pred), size=len(pred))
        if len(set(idx)) < 3:
            continue
        taus.append(stats.kendalltau(pred[idx], truth[idx]).statistic)
        rhos.append(stats.spearmanr(pred[idx], truth[idx]).statistic)
    taus_a, rhos_a = np.array(taus, dtype=float), np.array(rhos, dtype=float)
    taus_a, rhos_a = taus_a[np.isfinite(taus_a)], rhos_a[np.isfinite(rhos_a)]
    return {"kendall_tau": tau, "spearman": rho,
            "kendall_tau_ci": [float(np.percentile(taus_a, 2.5)), float(np.percentile(taus_a, 97.5))],
            "spearman_ci": [float(np.percentile(rhos_a, 2.5)), float(np.percentile(rhos_a, 97.5))]}


def _report(args: argparse.Namespace) -> None:
    import torch

    from hwnas.metrics.val_loss import make_val_set, val_loss
    from hwnas.train import load_supernet

    torch.set_num_threads(args.threads)
    with user_input():
        net = load_supernet(args.checkpoint)
    space = net.space
    runs = Path(args.runs)
    configs = subnets(space)
    missing = [name for name in configs if not (runs / name / "val_log.csv").exists()]
    if missing:
        print(f"left out (no validation logged yet; continue them with `train`): {', '.join(missing)}")
    configs = {name: cfg for name, cfg in configs.items() if name not in missing}
    logs = {name: _val_log(runs / name) for name in configs}
    common = sorted(set.intersection(*(set(log) for log in logs.values())))
    if not common:
        raise SystemExit(f"{runs}: the runs share no logged step; continue them with `train`")
    full = common[-1]
    half = min(common, key=lambda s: abs(s - full / 2))
    val = make_val_set(net, n=64, seed=0)
    rows = []
    for name, cfg in configs.items():
        rows.append({"name": name, "config_id": cfg.id, "describe": cfg.describe(),
                     "params": count_params(cfg, space), "flops_per_step": flops_per_step(cfg, space),
                     "inherited": val_loss(net, cfg, val),
                     "standalone": logs[name][full],
                     "standalone_half": logs[name][half] if half != full else None})
    inherited = np.array([r["inherited"] for r in rows])
    alone = np.array([r["standalone"] for r in rows])
    alone_half = np.array([r["standalone_half"] for r in rows], dtype=float)
    # zero-cost baselines predict "bigger is better": their predicted loss is minus the size
    params = -np.array([r["params"] for r in rows], dtype=float)
    flops = -np.array([r["flops_per_step"] for r in rows], dtype=float)
    main = _taus(inherited, alone, boot=args.boot, seed=args.seed)
    result = {
        "n": len(rows), **main, "left_out": missing,
        "baselines": {"params": float(stats.kendalltau(params, alone).statistic),
                      "flops": float(stats.kendalltau(flops, alone).statistic)},
        "baselines_detail": {"params": _taus(params, alone, boot=args.boot, seed=args.seed),
                             "flops": _taus(flops, alone, boot=args.boot, seed=args.seed)},
        # with one logged step in common there is no earlier ranking to compare against
        "half_budget": None if half == full else {
            "step": half, **_taus(inherited, alone_half, boot=args.boot, seed=args.seed),
            "standalone_half_vs_full_tau": float(stats.kendalltau(alone_half, alone).statistic)},
        "full_budget_step": full,
        "supernet": {"checkpoint": str(args.checkpoint or "checkpoints/shapes-latent"),
                     "experiment": space.name, "step": net.meta.get("step"),
                     "samples": net.meta.get("samples"), "init_from": net.meta.get("init_from")},
        "standalone_runs": {"steps": full, "batch_size": _batch_size(runs / rows[0]["name"])},
        "val_set": val.description,
        "rows": rows,
    }
    print(f"{'sub-DiT':<13} {'describe':<40} {'params':>8} {'inherited':>9} {'alone':>8} {'alone/2':>8}")
    for r in rows:
        half = "-" if r["standalone_half"] is None else f"{r['standalone_half']:.4f}"
        print(f"{r['name']:<13} {r['describe']:<40} {r['params'] / 1e6:7.2f}M {r['inherited']:9.4f} "
              f"{r['standalone']:8.4f} {half:>8}")
    write_json(args.json_out, result)
    if args.plot:
        _plot(rows, args.plot, result)
    lo, hi = main["kendall_tau_ci"]
    print_summary([f"n={len(rows)}: Kendall tau inherited vs stand-alone {main['kendall_tau']:.3f} "
                   f"[{lo:.3f}, {hi:.3f}], Spearman {main['spearman']:.3f}",
                   f"baselines: params tau {result['baselines']['params']:.3f}, "
                   f"FLOPs tau {result['baselines']['flops']:.3f}",
                   f"supernet minus params {main['kendall_tau'] - result['baselines']['params']:+.3f}",
                   f"at half budget (step {half}) tau {result['half_budget']['kendall_tau']:.3f}"
                   if result["half_budget"] else f"no half budget: the runs share one logged step ({full})"])


def _batch_size(run: Path) -> int | None:
    meta = json.loads((run / "supernet.json").read_text())
    return meta["train"]["batch_size"]


def _plot(rows: list[dict], path: str, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwnas.io import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    alone = [r["standalone"] for r in rows]
    for ax, key, label, tau in (
            (axes[0], "inherited", "val loss inherited from the supernet", result["kendall_tau"]),
            (axes[1], "params", "parameters (M)", result["baselines"]["params"])):
        xs = [r[key] / (1e6 if key == "params" else 1) for r in rows]
        ax.scatter(xs, alone)
        for x, y, r in zip(xs, alone, rows):
            ax.annotate(r["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("val loss trained stand-alone")
        ax.set_title(f"Kendall tau {tau:+.3f}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"rank fidelity, {result['supernet']['experiment']}, n={result['n']}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    ap = parser(__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train (or continue) every stand-alone sub-DiT",
                        description="Train (or continue) every stand-alone sub-DiT, one `hwnas train --standalone` "
                                    "process each. Writes training runs under --runs and no JSON report; no "
                                    "--seed: each run draws from the experiment's [train] seed.")
    tr.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    tr.add_argument("--runs", required=True, help="one run directory per sub-DiT goes here")
    tr.add_argument("--parallel", type=positive_int, default=1, help="runs at a time (one CPU thread each)")
    tr.add_argument("--steps", type=positive_int, default=None, help="override [train] steps")
    tr.add_argument("--batch-size", type=positive_int, default=None, help="override [train] batch_size")
    tr.add_argument("--max-wall-s", type=float, default=None, help="stop each run after this long")
    tr.add_argument("--stop-at", type=positive_int, default=None,
                    help="stop each run at this step of its --steps schedule (resumable)")
    tr.add_argument("--cache-dir", default=None, help="shared encoded training set")
    rep = sub.add_parser("report", help="rank correlations, baselines, table, JSON and plot")
    rep.add_argument("--checkpoint", default=None, help="supernet (default: the shipped proxy)")
    rep.add_argument("--runs", required=True)
    rep.add_argument("--boot", type=positive_int, default=2000, help="bootstrap resamples")
    add_seed(rep, controls="the bootstrap resamples")
    rep.add_argument("--threads", type=positive_int, default=2)
    add_json(rep, what="the correlations, baselines and rows")
    rep.add_argument("--plot", default=None, help="write the scatter plots here (PNG)")
    args = ap.parse_args()
    _train(args) if args.cmd == "train" else _report(args)


if __name__ == "__main__":
    main()
