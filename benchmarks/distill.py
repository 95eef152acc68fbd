"""Distillation benchmark: quality vs steps and DiT evaluations per image, for the 28-step teacher
sub-DiT, the undistilled sub-DiT at few steps, and DMD-only / KD-only / K-DMD students
(SnapGen++'s K-DMD; DMD: Yin et al. 2024). Quality is the compositional checker on held-out
shapes prompts and fd_ref (lower is better), both on --checkpoint (default: the shipped proxy; with
--run, the checkpoint that search used).

Distil here (CPU, a few hundred updates):

    OMP_NUM_THREADS=1 python benchmarks/distill.py --run reports/RUN --pick best --steps 300 --n 100 \
        --json reports/distill.json

or score students distilled elsewhere (`benchmarks/distill_long.sh` on a GPU): every directory
under --students holding a model.json is one student, named by its directory:

    OMP_NUM_THREADS=1 python benchmarks/distill.py --run reports/RUN --students runs/distill-long \
        --n 346 --json reports/distill-long.json

Each quality number is the mean over --eval-seeds evaluation seeds (--seed, --seed + 1, ...: noise
and prompt order); --seed also seeds the distillation. --distill-at K distils students to sample in
K steps (default 4); where the few-step gap only opens below 4 steps, distil there:

    OMP_NUM_THREADS=1 python benchmarks/distill.py --checkpoint checkpoints/shapes-latent --config full \
        --students runs/distill-full-k2 --distill-at 2 --n 100 --eval-seeds 3 --json reports/distill-latent-k2.json

The table has one row per stage and metric. The summary line gives, per metric, each student at K
steps (CFG 1, K DiT evaluations) and the 28-step sub-DiT (CFG 4, 56 evaluations) over the
undistilled sub-DiT at K steps with CFG 1, and, where the undistilled K-step CFG 4 row exists, the
share of the few-step gap (28 steps CFG 4 minus K steps CFG 4) that each student closes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from _common import add_json, add_seed, parser, positive_int, positive_ints, print_summary, user_input, write_json

from hwnas.compress import (
    DistillConfig,
    distill,
    from_supernet,
    load_subdit,
    quality_row,
    resolve_pick,
    run_checkpoint,
    terms,
)
from hwnas.space import resolve_config
from hwnas.train import load_supernet

METRICS = (("compositional", 1.0), ("fd_ref", 200 / 346))  # metric, share of --n (fd_ref is ~2x costlier)
MODES = ("dmd", "kd", "kdmd")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--run", help="a search run directory (with --pick)")
    ap.add_argument("--pick", default="best")
    ap.add_argument("--config", default="small",
                    help="tiny|small|full|largest|smallest, an id, config JSON or a JSON file (without --run)")
    ap.add_argument("--students", help="score the students under this directory instead of distilling")
    ap.add_argument("--steps", type=positive_int, default=60, help="student updates per mode")
    ap.add_argument("--batch-size", type=positive_int, default=8)
    ap.add_argument("--n", type=positive_int, default=50, help="held-out prompts per compositional evaluation")
    ap.add_argument("--modes", type=_modes, default="dmd,kd,kdmd", help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--work", default="runs/bench-distill", help="the students distilled here go under this directory")
    add_seed(ap, controls="the distillation and the first evaluation seed")
    ap.add_argument("--eval-seeds", type=positive_int, default=1,
                    help="evaluate at this many seeds (--seed, --seed + 1, ...); rows give the mean")
    ap.add_argument("--baselines", type=_baselines, default="28:4,4:4,4:1,2:4,2:1,8:4",
                    help="undistilled sub-DiT rows, steps:CFG each (28:4 is the teacher row of the summary)")
    ap.add_argument("--student-steps", type=positive_ints, default="1,2,4",
                    help="sampling steps at which students are scored")
    ap.add_argument("--distill-at", type=positive_int, default=DistillConfig().student_steps,
                    help="steps the students learn to sample in (and the summary compares at; default: "
                         "`hwnas distill`'s)")
    add_json(ap, what="the config and every row")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with user_input():
        checkpoint = run_checkpoint(args.run, args.checkpoint)
        net = load_supernet(checkpoint)
        cfg = resolve_pick(args.run, args.pick) if args.run else resolve_config(net.space, args.config)
        net.space.validate(cfg)
    rows: list[dict] = []
    seeds = list(range(args.seed, args.seed + args.eval_seeds))
    print(f"{cfg.describe()} ({cfg.id}), supernet step {net.meta.get('step')}; evaluation seeds {seeds}")
    print(f"{'stage':<34} {'metric':<13} {'value':>9} {'sd':>8} {'n':>4} {'DiT evals':>9}", flush=True)

    def score(model, *, stage: str, steps: int, scale: float, **extra: object) -> None:  # type: ignore[no-untyped-def]
        """One row per metric: the mean over the evaluation seeds (fd_ref at n=100 moves by ~+-60 between seeds)."""
        for metric, share in METRICS:
            per_seed = [quality_row(model, cfg, stage=stage, metric=metric, n=max(2, round(args.n * share)),
                                    steps=steps, cfg_scale=scale, checkpoint=checkpoint, seed=seed)
                        for seed in seeds]
            if per_seed[0] is not None:
                values = [r["value"] for r in per_seed]  # type: ignore[index]
                rows.append({**per_seed[0], "value": statistics.fmean(values), "values": values, "seeds": seeds,
                             "sd": statistics.stdev(values) if len(values) > 1 else None,
                             "dit_evals": steps * (2 if scale != 1.0 else 1), **extra})
                r = rows[-1]
                sd = "-" if r["sd"] is None else f"{r['sd']:.3g}"
                print(f"{stage:<34} {metric:<13} {r['value']:9.4g} {sd:>8} {r['n']:4d} {r['dit_evals']:9d}",
                      flush=True)

    sub = from_supernet(net, cfg)
    for steps, scale in args.baselines:
        score(sub, stage=f"sub-DiT {steps} steps CFG {scale}", steps=steps, scale=scale, mode="none")
    if args.students:
        for model_json in sorted(Path(args.students).glob("*/model.json")):
            student = load_subdit(model_json.parent)
            if student.cfg != cfg:
                raise SystemExit(f"{model_json.parent}: a student of {student.cfg.id}, not of {cfg.id}")
            info = json.loads(model_json.read_text()).get("distill", {})
            for steps in args.student_steps:
                score(student, stage=f"{model_json.parent.name} student {steps} steps", steps=steps, scale=1.0,
                      mode=model_json.parent.name, distill_steps=info.get("step"), terms=info.get("terms"),
                      distill=info.get("distill"))
    else:
        for mode in args.modes:
            dc = terms(mode, DistillConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                                           student_steps=args.distill_at, checkpoint_every=max(1, args.steps // 4)))
            student = from_supernet(net, cfg)
            t0 = time.perf_counter()
            summary = distill(net, student, out=Path(args.work) / f"{cfg.id}-{mode}", dc=dc, resume=False,
                              progress=False)
            wall = round(time.perf_counter() - t0, 1)
            for steps in args.student_steps:
                score(student, stage=f"{mode} student {steps} steps", steps=steps, scale=1.0, mode=mode,
                      distill_steps=args.steps, distill_wall_s=wall, terms=summary["terms"])
    write_json(args.json_out, {"config_id": cfg.id, "describe": cfg.describe(),
                               "supernet_step": net.meta.get("step"), "rows": rows})
    print_summary(_summary(rows, args.distill_at))


def _summary(rows: list[dict], k: int) -> list[str]:
    """Per metric: each student at `k` steps and the 28-step teacher over the undistilled sub-DiT at `k`
    steps (CFG 1), and the share of the few-step gap each student closes, all measured in this run on
    the same prompts and noise."""

    def value(stage: str, metric: str) -> float | None:
        return next((r["value"] for r in rows if r["stage"] == stage and r["metric"] == metric), None)

    parts = []
    students = sorted({r["mode"] for r in rows if r["mode"] != "none"})
    for metric, _ in METRICS:
        base = value(f"sub-DiT {k} steps CFG 1.0", metric)
        if base is None:
            continue
        better = "higher" if metric == "compositional" else "lower"
        teacher, guided = value("sub-DiT 28 steps CFG 4.0", metric), value(f"sub-DiT {k} steps CFG 4.0", metric)
        scored = [(m, v) for m in students if (v := value(f"{m} student {k} steps", metric)) is not None]
        ratios = [f"{name} {_ratio(v, base)}" for name, v in [("teacher 28 steps", teacher), *scored] if v is not None]
        if teacher is not None and guided is not None and teacher != guided:
            ratios += [f"{m} closes {(v - guided) / (teacher - guided):.0%} of the gap" for m, v in scored]
        parts.append(f"{metric} ({better} is better) over the undistilled sub-DiT at {k} steps ({base:.3g}): "
                     + (", ".join(ratios) or "nothing to compare"))
    return parts or [f"no undistilled {k}-step row (add {k}:1 to --baselines) to compare with"]


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else f"{value:.3g} (base 0)"


def _modes(text: str) -> list[str]:
    modes = text.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown mode {bad[0]!r}; choose from {', '.join(MODES)}")
    return modes


def _baselines(text: str) -> list[tuple[int, float]]:
    try:
        pairs = [(int(a), float(b)) for a, b in (x.split(":") for x in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give steps:CFG pairs, e.g. 28:4,4:1") from None
    if any(steps < 1 for steps, _ in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: steps must be >= 1")
    return pairs


if __name__ == "__main__":
    main()
