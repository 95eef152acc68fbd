"""Quality of the shipped proxy supernet per sub-DiT: compositional accuracy (per category),
fd_ref and validation loss, plus the cost of one val-loss call (the search's quality signal).

    OMP_NUM_THREADS=1 python benchmarks/proxy_quality.py [--checkpoint DIR] [--n 200] [--steps 28] [--seed 0]
        [--json reports/proxy-quality.json] [--grids reports/proxy-samples]

Prints a table and a final summary line comparing the sub-DiTs side by side (ratios to `full`);
`read` is the share of detected objects whose shape the checker read, and the JSON rows count
the failed prompts by first unmet requirement (`failures`: shape, color, count, relation).
Every number comes from the checkpoint named in the header (proxy scale: shapes-32). `--grids DIR`
also draws a 4x4 sample grid of tiny, small and full there (DIR/NAME.png).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json

from hwnas.metrics.evaluate import evaluate
from hwnas.metrics.fd_ref import load_reference
from hwnas.metrics.val_loss import make_val_set, val_loss
from hwnas.train import generate, load_supernet, save_grid
from hwnas.train.supernet import DEFAULT_CHECKPOINT

CONFIGS = ("smallest", "tiny", "small", "full", "largest")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--checkpoint", default=None, help="supernet directory (default: the shipped proxy)")
    ap.add_argument("--n", type=positive_int, default=200, help="held-out prompts (and fd_ref images)")
    ap.add_argument("--steps", type=positive_int, default=28)
    ap.add_argument("--cfg-scale", type=float, default=4.0)
    add_seed(ap, controls="the validation set, the evaluation (noise and prompt order) and the grids' noise")
    ap.add_argument("--grids", default=None, metavar="DIR", help="write sample grids of tiny, small and full here")
    add_json(ap, what="the rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with user_input():
        net = load_supernet(args.checkpoint)
        load_reference(Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT)  # fd_ref needs it
    space = net.space
    print(f"checkpoint {args.checkpoint or 'checkpoints/shapes-32'} (step {net.meta.get('step')}), "
          f"{space.name}; n={args.n}, {args.steps} Euler steps, CFG {args.cfg_scale}, seed {args.seed}")
    val = make_val_set(net, n=64, seed=args.seed)
    rows = []
    for name in CONFIGS:
        cfg = {"smallest": space.smallest(), "largest": space.largest()}.get(name) or space.preset(name)
        start = time.perf_counter()
        reps = 5
        for _ in range(reps):
            loss = val_loss(net, cfg, val)
        val_ms = (time.perf_counter() - start) / reps * 1e3
        comp = evaluate(net, cfg, metric="compositional", n=args.n, steps=args.steps,
                        cfg_scale=args.cfg_scale, seed=args.seed, checkpoint=args.checkpoint)
        fd = evaluate(net, cfg, metric="fd_ref", n=args.n, steps=args.steps, cfg_scale=args.cfg_scale,
                      seed=args.seed, checkpoint=args.checkpoint)
        rows.append({"config": name, "config_id": cfg.id, "describe": cfg.describe(), "val_loss": loss,
                     "val_loss_ms": val_ms, "compositional": comp["value"],
                     "per_category": comp["per_category"], "failures": comp["failures"],
                     "shapes_read": comp["shapes_read"], "fd_ref": fd["value"]})
        if args.grids and name in ("tiny", "small", "full"):
            prompts = ["a red circle", "two green squares", "a blue triangle above a yellow circle",
                       "a magenta square and a cyan triangle"]
            batch = [p for p in prompts for _ in range(4)]
            images = generate(net, batch, cfg, steps=args.steps, cfg_scale=args.cfg_scale, seed=args.seed)
            save_grid(images, Path(args.grids) / f"{name}.png", ncol=4, labels=batch)
    cats = list(rows[0]["per_category"])
    print(f"{'sub-DiT':<9} {'id':<10} {'val loss':>8} {'ms/call':>7} {'comp.':>6} {'fd_ref':>8} {'read':>5}  "
          + " ".join(f"{c[:9]:>9}" for c in cats))
    for r in rows:
        read = "-" if r["shapes_read"] is None else f"{r['shapes_read']:.2f}"
        print(f"{r['config']:<9} {r['config_id']:<10} {r['val_loss']:8.4f} {r['val_loss_ms']:7.1f} "
              f"{r['compositional']:6.3f} {r['fd_ref']:8.3f} {read:>5}  "
              + " ".join(f"{r['per_category'][c]:9.3f}" for c in cats))
    full = next(r for r in rows if r["config"] == "full")
    write_json(args.json_out, rows)
    print_summary(
        f"{r['config']}: comp {r['compositional']:.3f} ({r['compositional'] - full['compositional']:+.3f} vs full), "
        f"fd_ref x{r['fd_ref'] / full['fd_ref']:.2f}, val loss x{r['val_loss'] / full['val_loss']:.3f}"
        for r in rows)


if __name__ == "__main__":
    main()
