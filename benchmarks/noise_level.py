"""Supernet diagnosis: from which noise level a sub-DiT loses the layout of its images.

    OMP_NUM_THREADS=1 python benchmarks/noise_level.py [--checkpoint DIR] [--config full] [--n 64]
        [--levels 0.1,0.3,0.5,0.7,0.9,1] [--steps 28] [--cfg-scale 4] [--seed 0] [--json OUT]

Validation images of the shapes dataset are noised to time t0 (x_t0 = (1 - t0) x0 + t0 noise, in
the latent of a latent experiment) and integrated back to t = 0 with their captions as prompts
(SDEdit), and the compositional checker scores the result against the caption. t0 = 1 is plain
generation from the captions. The steps scale with t0 (round(steps x t0), at least one), so every
level takes steps of the same size as a full run of --steps.

A model that restores the images from small t0 but not from large t0 draws detail well and fails
at composing the scene from text; one that fails from every t0 cannot draw the shapes at all. Per
level the table gives the accuracy, the share of detected objects whose shape was read, and the
failed images by first unmet requirement (`hwnas.metrics.compositional.Failure`); the first row
scores the real images (the checker's own accuracy). The summary line gives each level's accuracy
over the real images'.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass

import torch
from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json

from hwnas.data import make_dataset
from hwnas.data.shapes import parse_prompt
from hwnas.metrics.compositional import FAILURES, CompositionalScore, score
from hwnas.space import resolve_config
from hwnas.train import generate, load_supernet


def noise_levels(text: str) -> list[float]:
    """An argparse type: comma-separated times in (0, 1], e.g. 0.1,0.5,1."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated times, e.g. 0.1,0.5,1") from None
    if any(not 0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every time must be in (0, 1]")
    return values


@dataclass(frozen=True)
class Level:
    """The checker's verdict on the images restored from one start time (`t0` "real": the originals)."""

    t0: str
    score: CompositionalScore
    wall_s: float

    def to_dict(self) -> dict[str, object]:
        return {"t0": self.t0, "wall_s": self.wall_s, **asdict(self.score)}


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--checkpoint", default=None, help="supernet directory (default: the shipped proxy)")
    ap.add_argument("--config", default="full", help="sub-DiT: a preset, smallest, largest or config JSON")
    ap.add_argument("--n", type=positive_int, default=64, help="validation images per level")
    ap.add_argument("--levels", type=noise_levels, default=[0.1, 0.3, 0.5, 0.7, 0.9, 1.0],
                    help="start times t0, comma-separated (default: 0.1,0.3,0.5,0.7,0.9,1)")
    ap.add_argument("--steps", type=positive_int, default=28, help="Euler steps of a run from t0 = 1")
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    add_seed(ap, controls="the validation images and the noise")
    add_json(ap, what="the rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with user_input():
        net = load_supernet(args.checkpoint)
        if net.space.dataset != "shapes":
            raise ValueError(f"the compositional checker needs the shapes dataset, not {net.space.dataset!r}")
        cfg = resolve_config(net.space, args.config)
    val = make_dataset("shapes", split="val", resolution=net.space.resolution, size=args.n, seed=args.seed)
    images = torch.stack([val[i][0] for i in range(args.n)])  # (n, 3, H, W) in [-1, 1]
    captions = [val[i][1] for i in range(args.n)]
    specs = [parse_prompt(c) for c in captions]
    print(f"checkpoint {args.checkpoint or 'the shipped proxy'} ({net.space.name}), {cfg.describe()}; "
          f"n={args.n} val images, {args.steps} Euler steps from t0 = 1, CFG {args.cfg_scale}, seed {args.seed}")
    rows = [Level("real", score(images.permute(0, 2, 3, 1).numpy(), specs), 0.0)]
    for t0 in args.levels:
        start = time.perf_counter()
        out = generate(net, captions, cfg, steps=max(1, round(args.steps * t0)), cfg_scale=args.cfg_scale,
                       seed=args.seed, init=images, start=t0)
        rows.append(Level(f"{t0:g}", score(out.permute(0, 2, 3, 1).numpy(), specs), time.perf_counter() - start))
    print(f"{'t0':>5} {'accuracy':>8} {'read':>5}  " + " ".join(f"{k:>8}" for k in FAILURES) + "  wall s")
    for r in rows:
        read = "-" if r.score.shapes_read is None else f"{r.score.shapes_read:.2f}"
        print(f"{r.t0:>5} {r.score.accuracy:8.3f} {read:>5}  "
              + " ".join(f"{r.score.failures[k]:8d}" for k in FAILURES) + f"  {r.wall_s:6.1f}")
    write_json(args.json_out, {"checkpoint": args.checkpoint, "config": cfg.to_dict(), "describe": cfg.describe(),
                               "n": args.n, "steps": args.steps, "cfg_scale": args.cfg_scale, "seed": args.seed,
                               "rows": [r.to_dict() for r in rows]})
    real = rows[0].score.accuracy or 1.0
    print_summary(f"t0 {r.t0}: accuracy x{r.score.accuracy / real:.2f} of the real images'" for r in rows[1:])


if __name__ == "__main__":
    main()
