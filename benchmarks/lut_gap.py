"""Where the host LUT's error comes from: one sub-DiT step timed five ways, side by side.

Usage (from the repository root; needs latency_tables/host/shapes-32.csv):

    OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 .venv/bin/python benchmarks/lut_gap.py [--n 8] [--seed 0]
        [--json reports/lut-gap.json]

For each of the first `n` held-out sub-DiTs of `hwnas lut validate --seed S` (the same sample):

- `table`: the LUT's prediction (the sum of its stored kernel medians);
- `isolated`: every kernel of the step compiled and timed alone now, the way the LUT was built
  (warm caches: the kernel runs back to back with itself), summed over the step;
- `cold`: the same kernels, each call preceded by a write of 64 MiB (more than this CPU's caches),
  so weights and activations come from memory; the flush itself is not timed;
- `chain`: the step's kernels called in the step's order, one after the other (the caches hold
  whatever the previous kernels left), timed as one loop;
- `whole`: the whole step compiled as one graph and timed (what `hwnas lut validate` measures).

`table` vs `isolated` is drift since the table was built; `isolated` vs `chain` is what running
in context costs; `chain` vs `whole` is the glue the whole graph has that the kernels do not
(fused boundaries, layout copies, VM allocation). All times are thread CPU time on one thread,
medians of repeats of at least 1 ms. The summary line gives each way's ratio to `whole`.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json

from hwnas.latency import load_profile, load_table
from hwnas.latency.bench import _Positional, compile_module, load_local, subnet_inputs
from hwnas.latency.blocks import kernel_module
from hwnas.latency.kernels import kernels
from hwnas.latency.predict import predict_latency_ms
from hwnas.latency.validate import sample_subnets
from hwnas.model.static import StaticDiT
from hwnas.space import load_space

FLUSH_BYTES = 64 << 20
REPEATS = 15
MIN_REPEAT_S = 0.001


def _vm(module: Any, args: tuple[Any, ...], target: dict[str, Any]) -> tuple[Any, list[Any]]:
    """Compile `module` like the LUT does; return (callable main, its TVM inputs), warmed up."""
    return load_local(compile_module(module, args, target=target, threads=1), args, threads=1)


def _median_ms(call: Any, *, flush: np.ndarray | None = None) -> float:
    """Median thread-CPU time of `call()` in ms; with `flush`, caches are evicted before each call."""
    samples = []
    if flush is None:
        start = time.thread_time()
        call()
        number = max(1, int(MIN_REPEAT_S / max(time.thread_time() - start, 1e-7)) + 1)
        for _ in range(REPEATS):
            start = time.thread_time()
            for _ in range(number):
                call()
            samples.append((time.thread_time() - start) / number)
    else:
        for _ in range(REPEATS * 4):
            flush += 1  # writes every byte: the kernel's data leaves the caches
            start = time.thread_time()
            call()
            samples.append(time.thread_time() - start)
    return 1e3 * statistics.median(samples)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--experiment", default="experiments/shapes-32.toml")
    ap.add_argument("--n", type=positive_int, default=8, help="held-out sub-DiTs")
    add_seed(ap, controls="the held-out sample of sub-DiTs (the one `hwnas lut validate --seed` draws)")
    add_json(ap, what="the rows and median ratios")
    opts = ap.parse_args()

    with user_input():
        space = load_space(Path(opts.experiment))
        prof = load_profile("host")
        table = load_table(prof, space.name)
    flush = np.zeros(FLUSH_BYTES // 4, dtype=np.float32)
    compiled: dict[Any, tuple[Any, list[Any]]] = {}
    isolated: dict[Any, float] = {}
    cold: dict[Any, float] = {}
    rows = []
    print(f"{'config':12s} {'table':>7s} {'isol.':>7s} {'cold':>7s} {'chain':>7s} {'whole':>7s}  (ms per step)")
    for cfg in sample_subnets(space, opts.n, seed=opts.seed, purpose="validate"):
        keys = kernels(cfg, space, precision="fp32")
        for key in dict.fromkeys(keys):
            if key not in compiled:
                compiled[key] = _vm(*kernel_module(key, space), prof.target)
                func, inputs = compiled[key]
                isolated[key] = _median_ms(lambda f=func, a=inputs: f(*a))
                cold[key] = _median_ms(lambda f=func, a=inputs: f(*a), flush=flush)

        def chain(seq: list[tuple[Any, list[Any]]] = [compiled[k] for k in keys]) -> None:  # noqa: B006
            for func, inputs in seq:
                func(*inputs)

        whole_func, whole_inputs = _vm(_Positional(StaticDiT(space, cfg).eval()), subnet_inputs(space), prof.target)
        row = {"config_id": cfg.id, "kernels": len(keys),
               "table_ms": predict_latency_ms(cfg, table, steps=1, precision="fp32", space=space).step_ms,
               "isolated_ms": sum(isolated[k] for k in keys), "cold_ms": sum(cold[k] for k in keys),
               "chain_ms": _median_ms(chain), "whole_ms": _median_ms(lambda f=whole_func, a=whole_inputs: f(*a))}
        rows.append(row)
        print(f"{cfg.id:12s} " + " ".join(f"{row[k]:7.3f}" for k in
                                         ("table_ms", "isolated_ms", "cold_ms", "chain_ms", "whole_ms")), flush=True)

    ways = ("table_ms", "isolated_ms", "cold_ms", "chain_ms")
    ratios = {w: statistics.median(r[w] / r["whole_ms"] for r in rows) for w in ways}
    write_json(opts.json_out, {"experiment": space.name, "seed": opts.seed, "rows": rows,
                               "median_ratio_to_whole": ratios})
    print_summary([f"n={len(rows)} median ratio to the whole step: "
                   + ", ".join(f"{w[:-3]} {ratios[w]:.3f}" for w in ways)])


if __name__ == "__main__":
    main()
