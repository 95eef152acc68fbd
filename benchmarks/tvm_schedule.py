"""Default (unscheduled) TVM vs scheduled TVM (`hwnas.latency.schedule`) vs onnxruntime vs PyTorch per block kind.

Usage (from the repository root):

    OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 .venv/bin/python benchmarks/tvm_schedule.py
        [--experiment experiments/shapes-32.toml] [--device host] [--repeat 20] [--no-large] [--seed 0]
        [--json runs/tvm-schedule.json]

For each kernel kind of the space (Down/Up blocks once per attention type), the kernel at the median FLOPs
of that kind is exported once and timed side by side in this run: TVM with the default Relax pipeline
(`compile_relax(..., schedule=False)`), TVM with the hand-written CPU schedules as the LUT compiles it
(`compile_relax_scheduled`), onnxruntime (CPU provider, all graph optimisations) and torch eager, each with
the host profile's thread count (one thread: thread CPU time, robust to the other jobs on this machine).
Also prints the compile seconds of both TVM builds, the scheduled build's max |difference| to the default
build (relative to the output's max |value|) and the number of PrimFuncs it scheduled as matmuls.
Then one large matmul, a Linear of 256 tokens x 1024 -> 4096 (2 x 256 x 1024 x 4096 FLOPs, a multiply-add
is 2 FLOPs), in GFLOP/s (`--no-large` skips it; the default build takes seconds per call there).
The last line is the summary: median speedup default/scheduled and median ratios scheduled/ORT and
default/ORT over the rows.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json
from tvm_vs_ort import torch_thread_ms  # benchmarks/ is on sys.path when run as a script

from hwnas.latency import enumerate_kernels, kernel_flops, load_profile
from hwnas.latency.bench import (
    _time_executable,
    compile_relax,
    export_relax,
    time_onnxruntime,
)
from hwnas.latency.blocks import kernel_module
from hwnas.latency.kernels import KernelKey
from hwnas.latency.schedule import compile_relax_scheduled, schedule_module
from hwnas.space import load_space


def _vm_output(ex: Any, args: tuple[torch.Tensor, ...]) -> np.ndarray:
    """First output of `main` on this machine's CPU."""
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a.detach().numpy()) for a in args])
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def _matmul_funcs(mod: Any, *, target: dict[str, Any]) -> int:
    """PrimFuncs of `mod` that `schedule_module` schedules as matmuls (after legalization and fusion)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline

    tgt = tvm.target.Target(target)
    with tgt:
        fused = tvm.transform.Sequential(pipeline.library_dispatch_passes(tgt) + pipeline.legalize_passes(tgt))(mod)
    return len(schedule_module(fused, target=target)[1].matmul)


def _picks(keys: list[KernelKey]) -> dict[str, KernelKey]:
    """{row name: kernel at the median FLOPs}, Down/Up blocks split by attention type."""
    groups: dict[str, list[KernelKey]] = {}
    for k in keys:
        name = f"{k.kind}/{k.op.attn}" if k.kind in ("down_block", "up_block") else k.kind
        groups.setdefault(name, []).append(k)
    return {name: sorted(ks, key=kernel_flops)[len(ks) // 2] for name, ks in groups.items()}


def _compile_both(mod: Any, *, target: dict[str, Any]) -> tuple[Any, Any, float, float]:
    """(default build, scheduled build, compile seconds of each) of one exported Relax module."""
    start = time.perf_counter()
    ex_def = compile_relax(mod, target=target, schedule=False)
    mid = time.perf_counter()
    ex_sch = compile_relax_scheduled(mod, target=target)
    return ex_def, ex_sch, mid - start, time.perf_counter() - mid


def _large(*, target: dict[str, Any], threads: int, repeat: int, seed: int) -> dict[str, float]:
    """GFLOP/s of a 256 x 1024 -> 4096 Linear: default TVM (one call), scheduled TVM, onnxruntime, torch;
    returns {runtime: ms}."""
    torch.manual_seed(seed)
    module, args = torch.nn.Linear(1024, 4096), (torch.randn(1, 256, 1024),)
    flops = 2 * 256 * 1024 * 4096
    ex_def, ex_sch, def_s, sch_s = _compile_both(export_relax(module, args), target=target)
    t_def = _time_executable(ex_def, args, remote=None, repeat=1, min_repeat_ms=1, warmup=0, threads=threads)
    t_sch = _time_executable(ex_sch, args, remote=None, repeat=repeat, min_repeat_ms=1, warmup=2, threads=threads)
    t_ort = time_onnxruntime(module, args, threads=threads, repeat=repeat, min_repeat_ms=1)
    t_torch = torch_thread_ms(module, args, repeat=max(3, repeat // 4))
    rows = [("tvm default", t_def.median_ms), ("tvm scheduled", t_sch.median_ms), ("onnxruntime", t_ort.median_ms),
            ("torch", t_torch)]
    print(f"large Linear 256x1024->4096 ({flops / 1e9:.2f} GFLOP); compile default {def_s:.2f} s, "
          f"scheduled {sch_s:.2f} s")
    for name, ms in rows:
        print(f"  {name:14s} {ms:10.2f} ms {flops / (ms * 1e6):8.1f} GFLOP/s", flush=True)
    return dict(rows)


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--experiment", default="experiments/shapes-32.toml")
    ap.add_argument("--device", default="host")
    ap.add_argument("--repeat", type=positive_int, default=20, help="timed repeats per kernel and runtime")
    ap.add_argument("--no-large", action="store_true", help="skip the 256x1024->4096 Linear")
    add_seed(ap, controls="the kernels' random weights and inputs")
    add_json(ap, what="one row per kind, the large Linear's times and the summary ratios")
    opts = ap.parse_args()

    with user_input():
        space = load_space(Path(opts.experiment))
        prof = load_profile(opts.device)
    torch.set_num_threads(prof.threads)
    target = prof.target
    picks = _picks(enumerate_kernels(space, precisions=("fp32",)))
    print(f"device {prof.name}: {prof.threads} thread(s), target {target}; {len(picks)} kinds of {space.name} "
          f"(kernel at the median FLOPs of each)")
    print(f"{'kind':18s} {'MFLOP':>7s} {'mm_fn':>5s} {'def_ms':>8s} {'sch_ms':>8s} {'ort_ms':>8s} {'torch_ms':>8s} "
          f"{'def_c_s':>7s} {'sch_c_s':>7s} {'def/sch':>7s} {'sch/ort':>7s} {'def/ort':>7s} {'max|d|':>8s}")
    speedups, sch_ort, def_ort, rows = [], [], [], []
    for name, key in picks.items():
        module, args = kernel_module(key, space, seed=opts.seed)
        mod = export_relax(module, args)
        ex_def, ex_sch, def_s, sch_s = _compile_both(mod, target=target)
        out_def, out_sch = _vm_output(ex_def, args), _vm_output(ex_sch, args)
        diff = float(np.abs(out_def - out_sch).max() / max(float(np.abs(out_def).max()), 1e-12))
        kwargs = {"remote": None, "repeat": opts.repeat, "min_repeat_ms": 1, "warmup": 3, "threads": prof.threads}
        t_def = _time_executable(ex_def, args, **kwargs)
        t_sch = _time_executable(ex_sch, args, **kwargs)
        t_ort = time_onnxruntime(module, args, threads=prof.threads, repeat=opts.repeat, min_repeat_ms=1)
        torch_ms = torch_thread_ms(module, args, repeat=opts.repeat)
        speedups.append(t_def.median_ms / t_sch.median_ms)
        sch_ort.append(t_sch.median_ms / t_ort.median_ms)
        def_ort.append(t_def.median_ms / t_ort.median_ms)
        mm_fn = _matmul_funcs(mod, target=target)
        rows.append({"kind": name, "flops": kernel_flops(key), "matmul_funcs": mm_fn, "default_ms": t_def.median_ms,
                     "scheduled_ms": t_sch.median_ms, "ort_ms": t_ort.median_ms, "torch_ms": torch_ms,
                     "default_compile_s": def_s, "scheduled_compile_s": sch_s, "max_rel_diff": diff})
        print(f"{name:18s} {kernel_flops(key) / 1e6:7.2f} {mm_fn:5d} "
              f"{t_def.median_ms:8.4f} {t_sch.median_ms:8.4f} {t_ort.median_ms:8.4f} {torch_ms:8.4f} "
              f"{def_s:7.2f} {sch_s:7.2f} {speedups[-1]:7.2f} {sch_ort[-1]:7.2f} {def_ort[-1]:7.2f} "
              f"{diff:8.1e}", flush=True)
    large = None if opts.no_large else _large(target=target, threads=prof.threads, repeat=opts.repeat, seed=opts.seed)
    summary = {"default_over_scheduled_median": statistics.median(speedups),
               "scheduled_over_ort_median": statistics.median(sch_ort),
               "default_over_ort_median": statistics.median(def_ort)}
    write_json(opts.json_out, {"experiment": space.name, "device": prof.name, "threads": prof.threads, "target": target,
                               "seed": opts.seed, "repeat": opts.repeat, "rows": rows, "large_linear_ms": large,
                               **summary})
    print_summary([f"over {len(speedups)} kinds: speedup default/scheduled median "
                   f"{summary['default_over_scheduled_median']:.2f} (range {min(speedups):.2f}-{max(speedups):.2f})",
                   f"scheduled/ORT median {summary['scheduled_over_ort_median']:.2f} "
                   f"(range {min(sch_ort):.2f}-{max(sch_ort):.2f})",
                   f"default/ORT median {summary['default_over_ort_median']:.2f}"])


if __name__ == "__main__":
    main()
