"""LUT accuracy on this machine: predicted (sum of measured kernels) vs measured whole-step TVM latency.

Usage (from the repository root; needs the measured table latency_tables/host/shapes-32.csv):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lut_accuracy.py [--n 100] [--calibration 20] [--seed 0]
        [--cache runs/lut-validate-host.jsonl] [--json runs/lut-accuracy.json]

The same computation as `hwnas lut validate` (`hwnas.latency.validate.validate_table`): held-out random
sub-DiTs, each compiled whole with TVM and timed, against the LUT prediction, a linearly corrected LUT and
a FLOPs-linear baseline (both fitted on a separate calibration sample), plus the noise floor (one sub-DiT
timed repeatedly). Prints one row per held-out sub-DiT, the metrics, and a summary line with the LUT and
baseline side by side from this run. `--json` writes the report that `hwnas lut validate --json`
prints, less its interval check.
"""

from __future__ import annotations

from pathlib import Path

from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json

from hwnas.latency import load_profile, load_table
from hwnas.latency.validate import validate_table
from hwnas.space import load_space


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--experiment", default="experiments/shapes-32.toml")
    ap.add_argument("--device", default="host")
    ap.add_argument("--n", type=positive_int, default=100, help="held-out sub-DiTs")
    ap.add_argument("--calibration", type=positive_int, default=20, help="sub-DiTs the corrections are fitted on")
    add_seed(ap, controls="the held-out and calibration samples of sub-DiTs")
    ap.add_argument("--noise-repeats", type=int, default=5, help="times one sub-DiT is timed for the noise floor")
    ap.add_argument("--cache", help="JSON lines of measured sub-DiTs (resume)")
    add_json(ap, what="the validation report")
    opts = ap.parse_args()

    with user_input():
        space = load_space(Path(opts.experiment))
        prof = load_profile(opts.device)
        table = load_table(prof, space.name)
    rep = validate_table(table, space, prof, n=opts.n, seed=opts.seed, n_calibration=opts.calibration,
                         noise_repeats=opts.noise_repeats, cache=opts.cache)
    print(f"{'config':12s} {'flops':>10s} {'pred_ms':>8s} {'meas_ms':>8s} {'err%':>7s}")
    for row in rep["rows"]:
        err = 100 * (row["predicted_ms"] - row["measured_ms"]) / row["measured_ms"]
        print(f"{row['config_id']:12s} {row['flops']:10d} {row['predicted_ms']:8.3f} {row['measured_ms']:8.3f} "
              f"{err:+7.1f}")
    for name, r in (("LUT", rep), ("LUT corrected", rep["corrected"]), ("FLOPs-linear", rep["baseline"]),
                    ("LUT vs p10", rep["measured_p10_vs_prediction"])):
        print(f"{name:14s} n {r['n']:3d} within5 {r['within_5pct']:6.1%} within10 {r['within_10pct']:6.1%} "
              f"MAPE {r['mape']:5.1f}% max {r['max_abs_pct']:5.1f}% bias {r['bias_pct']:+5.1f}% "
              f"spearman {r['spearman']:.3f} kendall {r['kendall']:.3f} false-feasible "
              f"{r['false_feasible_rate']:.0%} (budget {r['budget_ms']:.2f} ms)")
    if "noise_floor" in rep:
        nf = rep["noise_floor"]
        print(f"noise floor: {nf['config_id']} timed {nf['times']}x: CV {nf['cv']:.1%}, max {nf['max_abs_pct']:.1f}% "
              f"from median, within5 {nf['within_5pct']:.0%}")
    write_json(opts.json_out, rep)
    c, b = rep["corrected"], rep["baseline"]
    print_summary([f"n={rep['n']} LUT within10 {rep['within_10pct']:.0%} within5 {rep['within_5pct']:.0%} "
                   f"spearman {rep['spearman']:.3f}",
                   f"corrected within10 {c['within_10pct']:.0%} within5 {c['within_5pct']:.0%}",
                   f"FLOPs baseline within10 {b['within_10pct']:.0%} spearman {b['spearman']:.3f}",
                   f"MAPE baseline/LUT-corrected {b['mape'] / max(c['mape'], 1e-9):.2f}x"])


if __name__ == "__main__":
    main()
