"""Distillation benchmark: compositional accuracy vs steps and DiT evaluations per image, for the
28-step teacher sub-DiT, the undistilled sub-DiT at few steps, and DMD-only / KD-only / K-DMD
students (SnapGen++'s K-DMD; DMD: Yin et al. 2024).

    OMP_NUM_THREADS=1 python benchmarks/distill.py --config small --steps 60 --n 50 --out reports/distill.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hwnas.compress import DistillConfig, distill, from_supernet, quality_row, terms
from hwnas.space import load_config
from hwnas.train import load_supernet


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--config", default="small", help="tiny|small|full or a SubnetConfig JSON file")
    ap.add_argument("--steps", type=int, default=60, help="student updates per mode")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n", type=int, default=50, help="held-out prompts per evaluation")
    ap.add_argument("--teacher-steps", type=int, default=28)
    ap.add_argument("--modes", default="dmd,kd,kdmd")
    ap.add_argument("--work", default="runs/bench-distill")
    ap.add_argument("--out", default="reports/distill.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    net = load_supernet(args.checkpoint)
    cfg = net.space.preset(args.config) if args.config in ("tiny", "small", "full") else load_config(args.config)
    sub = from_supernet(net, cfg)
    rows = []

    def add(row: dict | None, **extra: object) -> None:
        if row is not None:
            rows.append({**row, **extra})
            print(json.dumps(rows[-1]), flush=True)

    for steps, scale in ((args.teacher_steps, 4.0), (4, 4.0), (4, 1.0), (2, 4.0), (8, 4.0)):
        add(quality_row(sub, cfg, stage=f"sub-DiT {steps} steps CFG {scale}", metric="compositional", n=args.n,
                        steps=steps, cfg_scale=scale, checkpoint=args.checkpoint),
            dit_evals=steps * (2 if scale != 1.0 else 1), mode="none")
    for mode in args.modes.split(","):
        dc = terms(mode, DistillConfig(steps=args.steps, batch_size=args.batch_size,  # type: ignore[arg-type]
                                       checkpoint_every=max(1, args.steps // 4)))
        student = from_supernet(net, cfg)
        t0 = time.perf_counter()
        summary = distill(net, student, out=Path(args.work) / f"{cfg.id}-{mode}", dc=dc, resume=False,
                          progress=False)
        for steps in (1, 2, 4):
            add(quality_row(student, cfg, stage=f"{mode} student {steps} steps", metric="compositional", n=args.n,
                            steps=steps, cfg_scale=1.0, checkpoint=args.checkpoint),
                dit_evals=steps, mode=mode, distill_steps=args.steps, distill_wall_s=round(time.perf_counter() - t0, 1),
                terms=summary["terms"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config_id": cfg.id, "describe": cfg.describe(),
                                          "supernet_step": net.meta.get("step"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
