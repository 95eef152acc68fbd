"""Distillation benchmark: quality vs steps and DiT evaluations per image, for the 28-step teacher
sub-DiT, the undistilled sub-DiT at few steps, and DMD-only / KD-only / K-DMD students
(SnapGen++'s K-DMD; DMD: Yin et al. 2024). Quality is the compositional checker on held-out
shapes prompts and fd_ref (lower is better), both on the shipped proxy unless --checkpoint.

Distil here (CPU, a few hundred updates):

    OMP_NUM_THREADS=1 python benchmarks/distill.py --run reports/RUN --pick best --steps 300 --n 100 \
        --out reports/distill.json

or score students distilled elsewhere (`benchmarks/distill_long.sh` on a GPU): every directory
under --students holding a model.json is one student, named by its directory:

    OMP_NUM_THREADS=1 python benchmarks/distill.py --run reports/RUN --students runs/distill-long \
        --n 346 --out reports/distill-long.json

The summary line gives each student's quality at 4 steps next to the undistilled sub-DiT's at
4 steps (CFG 1, the same 4 DiT evaluations) and at 28 steps with CFG 4 (56 evaluations).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from hwnas.compress import (
    DistillConfig,
    distill,
    from_supernet,
    load_subdit,
    quality_row,
    resolve_pick,
    terms,
)
from hwnas.io import atomic_write_json
from hwnas.space import load_config
from hwnas.train import load_supernet

METRICS = (("compositional", 1.0), ("fd_ref", 200 / 346))  # metric, share of --n (fd_ref is ~2x costlier)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--run", help="a search run directory (with --pick)")
    ap.add_argument("--pick", default="best")
    ap.add_argument("--config", default="small", help="tiny|small|full or a SubnetConfig JSON file (without --run)")
    ap.add_argument("--students", help="score the students under this directory instead of distilling")
    ap.add_argument("--steps", type=int, default=60, help="student updates per mode")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n", type=int, default=50, help="held-out prompts per compositional evaluation")
    ap.add_argument("--modes", default="dmd,kd,kdmd")
    ap.add_argument("--work", default="runs/bench-distill")
    ap.add_argument("--seeds", default="0", help="evaluation seeds (noise and prompt order); rows give the mean")
    ap.add_argument("--baselines", default="28:4,4:4,4:1,2:1,8:4",
                    help="undistilled sub-DiT rows, steps:CFG each (28:4 is the teacher row of the summary)")
    ap.add_argument("--student-steps", default="1,2,4", help="sampling steps at which students are scored")
    ap.add_argument("--out", default="reports/distill.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = load_supernet(args.checkpoint)
    if args.run:
        cfg = resolve_pick(args.run, args.pick)
    else:
        cfg = net.space.preset(args.config) if args.config in ("tiny", "small", "full") else load_config(args.config)
    rows: list[dict] = []
    seeds = [int(x) for x in args.seeds.split(",")]
    student_steps = [int(x) for x in args.student_steps.split(",")]

    def score(model, *, stage: str, steps: int, scale: float, **extra: object) -> None:  # type: ignore[no-untyped-def]
        """One row per metric: the mean over --seeds (fd_ref at n=100 moves by ~+-60 between seeds)."""
        for metric, share in METRICS:
            per_seed = [quality_row(model, cfg, stage=stage, metric=metric, n=max(2, round(args.n * share)),
                                    steps=steps, cfg_scale=scale, checkpoint=args.checkpoint, seed=seed)
                        for seed in seeds]
            if per_seed[0] is not None:
                values = [r["value"] for r in per_seed]  # type: ignore[index]
                rows.append({**per_seed[0], "value": statistics.fmean(values), "values": values, "seeds": seeds,
                             "sd": statistics.stdev(values) if len(values) > 1 else None,
                             "dit_evals": steps * (2 if scale != 1.0 else 1), **extra})
                print(json.dumps(rows[-1]), flush=True)

    sub = from_supernet(net, cfg)
    baselines = [(int(a), float(b)) for a, b in (x.split(":") for x in args.baselines.split(","))]
    for steps, scale in baselines:
        score(sub, stage=f"sub-DiT {steps} steps CFG {scale}", steps=steps, scale=scale, mode="none")
    if args.students:
        for model_json in sorted(Path(args.students).glob("*/model.json")):
            student = load_subdit(model_json.parent)
            if student.cfg != cfg:
                raise SystemExit(f"{model_json.parent}: a student of {student.cfg.id}, not of {cfg.id}")
            info = json.loads(model_json.read_text()).get("distill", {})
            for steps in student_steps:
                score(student, stage=f"{model_json.parent.name} student {steps} steps", steps=steps, scale=1.0,
                      mode=model_json.parent.name, distill_steps=info.get("step"), terms=info.get("terms"),
                      distill=info.get("distill"))
    else:
        for mode in args.modes.split(","):
            dc = terms(mode, DistillConfig(steps=args.steps, batch_size=args.batch_size,  # type: ignore[arg-type]
                                           checkpoint_every=max(1, args.steps // 4)))
            student = from_supernet(net, cfg)
            t0 = time.perf_counter()
            summary = distill(net, student, out=Path(args.work) / f"{cfg.id}-{mode}", dc=dc, resume=False,
                              progress=False)
            wall = round(time.perf_counter() - t0, 1)
            for steps in student_steps:
                score(student, stage=f"{mode} student {steps} steps", steps=steps, scale=1.0, mode=mode,
                      distill_steps=args.steps, distill_wall_s=wall, terms=summary["terms"])
    atomic_write_json(args.out, {"config_id": cfg.id, "describe": cfg.describe(),
                                 "supernet_step": net.meta.get("step"), "rows": rows})
    _summary(rows)


def _summary(rows: list[dict]) -> None:
    def value(stage: str, metric: str) -> float | None:
        return next((r["value"] for r in rows if r["stage"] == stage and r["metric"] == metric), None)

    parts = []
    for metric, _ in METRICS:
        teacher, base = value("sub-DiT 28 steps CFG 4.0", metric), value("sub-DiT 4 steps CFG 1.0", metric)
        students = sorted({r["mode"] for r in rows if r["mode"] != "none"})
        cells = [f"{m} {value(f'{m} student 4 steps', metric):.3g}" for m in students
                 if value(f"{m} student 4 steps", metric) is not None]
        head = ([f"teacher 28 steps {teacher:.3g}"] if teacher is not None else []) + (
            [f"sub-DiT 4 steps {base:.3g}"] if base is not None else [])
        parts.append(f"{metric}: " + ", ".join(head + cells))
    print("summary: " + "; ".join(parts))


if __name__ == "__main__":
    main()
