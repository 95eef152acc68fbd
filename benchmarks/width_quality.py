"""Supernet diagnosis: how each stage's width (and depth) costs quality, one stage at a time.

    OMP_NUM_THREADS=1 python benchmarks/width_quality.py [--checkpoint DIR] [--seed 0]
        [--json reports/width-quality.json]

Starting from the largest sub-DiT, one stage at a time (Down, Middle, Up, then all three) takes
each width choice (then each depth choice) with everything else at its largest, and the
validation flow-matching loss of that sub-DiT is measured on the supernet's fixed validation set
(64 held-out images on an 8-point t grid, `hwnas.train.validation`; --seed 0 is the set the search
uses). The mean predictor scores
~1.1 on shapes-32; a sub-DiT whose loss stays far above the largest's leaves visible per-pixel noise
in its samples.

Each width is printed with its channel count next to the values one patch token carries
(patch^2 x channels): an outer stage narrower than that cannot pass per-pixel detail (the noise
the velocity must reproduce) through its linear patch embedding. shapes-32 has 48 values per
token (4x4 RGB) against 24/32/40 channels at widths 0.375/0.5/0.625 of 64; snapgenpp-1024 has 64
(2x2x16) against >= 768. The summary line gives, per stage, the loss at the smallest width over
the largest sub-DiT's loss.
"""

from __future__ import annotations

import dataclasses

import torch
from _common import add_json, add_seed, parser, print_summary, user_input, write_json

from hwnas.space import STAGES, SubnetConfig
from hwnas.train import load_supernet
from hwnas.train.validation import make_val_set, val_loss


def with_stages(cfg: SubnetConfig, stages: tuple[str, ...], **change: object) -> SubnetConfig:
    return dataclasses.replace(cfg, **{s: dataclasses.replace(cfg.stage(s), **change) for s in stages})


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--checkpoint", default=None, help="supernet directory (default: the shipped proxy)")
    add_seed(ap, controls="the validation set (images, noise)")
    add_json(ap, what="the val loss of every width and depth choice")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with user_input():
        net = load_supernet(args.checkpoint)
    space, val = net.space, make_val_set(net, seed=args.seed)
    largest = space.largest()
    base = val_loss(net, largest, val)
    patch_values = space.patch_values
    print(f"{space.name}, supernet step {net.meta.get('step')}: largest {largest.describe()} val loss {base:.3f}; "
          f"a patch token carries {patch_values} values; channels per width: "
          + ", ".join(f"{w:g}: {space.dim(w)}" for w in space.stages["down"].width))
    rows = []
    for knob in ("width", "depth"):
        groups = [(s,) for s in STAGES] + ([tuple(STAGES)] if knob == "width" else [])
        for stages in groups:
            choices = sorted({c for s in stages for c in getattr(space.stages[s], knob)})
            losses = {}
            for value in choices:
                try:
                    cfg = with_stages(largest, stages, **{knob: value})
                    space.validate(cfg)
                except ValueError:
                    continue
                losses[value] = val_loss(net, cfg, val)
            rows.append({"knob": knob, "stages": list(stages), "val_loss": losses})
            cells = "  ".join(f"{v:g}: {loss:.3f}" for v, loss in losses.items())
            print(f"{knob:5s} {'+'.join(stages):18s} {cells}", flush=True)
    write_json(args.json_out, {
        "experiment": space.name, "checkpoint": str(args.checkpoint or "shipped proxy"),
        "supernet_step": net.meta.get("step"), "val_set": val.description, "largest_val_loss": base,
        "patch_values": patch_values, "channels": {str(w): space.dim(w) for w in space.stages["down"].width},
        "rows": rows})
    widths = [r for r in rows if r["knob"] == "width" and len(r["stages"]) == 1]
    print_summary(["val loss at the smallest width / largest sub-DiT: " + ", ".join(
        f"{r['stages'][0]} {min(r['val_loss'].items())[1] / base:.1f}x" for r in widths)])


if __name__ == "__main__":
    main()
