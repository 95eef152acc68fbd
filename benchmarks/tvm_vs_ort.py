"""TVM (as the LUT compiles: hwnas CPU schedules, no tuning) vs onnxruntime vs PyTorch eager per block kind,
with roofline efficiency.

Usage (from the repository root):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/tvm_vs_ort.py [--experiment experiments/shapes-32.toml]
        [--per-kind 1] [--repeat 30] [--seed 0] [--json runs/tvm-vs-ort.json]

For each kernel kind of the space, the kernel(s) at the median FLOPs of that kind are built once and timed
side by side in this run: TVM exactly as the LUT does (`hwnas.latency.bench`), onnxruntime (CPU provider,
all graph optimisations) and torch eager, each with the host profile's thread count (one thread: thread
CPU time, robust to the other jobs on this shared machine). Roofline time = max(FLOPs / peak, bytes / bandwidth)
with the host profile's peak scaled to the thread count (the profile's peak is for all cores) and its
bandwidth; efficiency = roofline / measured.
Also prints the TVM compile time per kernel and the full LUT build time it implies.
The last line is the summary: median TVM/ORT ratio over kinds and median roofline efficiencies.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json

from hwnas.latency import enumerate_kernels, kernel_bytes, kernel_flops, load_profile
from hwnas.latency.bench import _time_executable, compile_module, time_onnxruntime, timing_from_seconds
from hwnas.latency.blocks import kernel_module
from hwnas.space import load_space


def torch_thread_ms(module: torch.nn.Module, args: tuple[torch.Tensor, ...], *, repeat: int) -> float:
    """Median ms of `module(*args)` in torch eager, thread CPU time (one torch thread), 10 calls per repeat."""
    with torch.no_grad():
        for _ in range(3):
            module(*args)
        samples = []
        for _ in range(repeat):
            start = time.thread_time()  # one torch thread: the work runs on this thread
            for _ in range(10):
                module(*args)
            samples.append((time.thread_time() - start) / 10)
    return timing_from_seconds(samples).median_ms


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--experiment", default="experiments/shapes-32.toml")
    ap.add_argument("--device", default="host")
    ap.add_argument("--per-kind", type=positive_int, default=1, help="kernels timed per kind (at FLOPs quantiles)")
    ap.add_argument("--repeat", type=positive_int, default=30, help="timed repeats per kernel and runtime")
    add_seed(ap, controls="the kernels' random weights and inputs")
    add_json(ap, what="one row per kernel and the summary ratios")
    opts = ap.parse_args()

    with user_input():
        space = load_space(Path(opts.experiment))
        prof = load_profile(opts.device)
    torch.set_num_threads(prof.threads)
    cores = int(prof.target.get("num-cores", prof.threads))
    peak_gflops = prof.peak_gflops["fp32"].value * min(prof.threads, cores) / cores
    bw_gbps = prof.bandwidth_gbps.value
    keys = enumerate_kernels(space, precisions=("fp32",))
    by_kind: dict[str, list] = {}
    for k in keys:
        by_kind.setdefault(k.kind, []).append(k)

    print(f"device {prof.name}: {prof.threads} thread(s), roofline peak {peak_gflops:.0f} GFLOP/s (profile peak x "
          f"{prof.threads}/{cores} cores), {bw_gbps:.0f} GB/s; {len(keys)} kernels in {space.name}")
    head = (f"{'kind':13s} {'MFLOP':>7s} {'KB':>7s} {'roof_ms':>8s} {'tvm_ms':>8s} {'tvm_cv':>6s} {'ort_ms':>8s} "
            f"{'torch_ms':>8s} {'tvm/ort':>7s} {'eff_tvm':>7s} {'eff_ort':>7s} {'compile_s':>9s}")
    print(head)
    ratios, eff_tvm, eff_ort, compile_s, rows = [], [], [], [], []
    compile_by_kind: dict[str, list[float]] = {}
    for kind, ks in by_kind.items():
        ks = sorted(ks, key=kernel_flops)
        picks = [ks[len(ks) * (2 * i + 1) // (2 * opts.per_kind)] for i in range(opts.per_kind)]
        for key in picks:
            module, args = kernel_module(key, space, seed=opts.seed)
            start = time.perf_counter()
            ex = compile_module(module, args, target=prof.target)
            compile_s.append(time.perf_counter() - start)
            compile_by_kind.setdefault(kind, []).append(compile_s[-1])
            tvm_t = _time_executable(ex, args, remote=None, repeat=opts.repeat, min_repeat_ms=1, warmup=3,
                                     threads=prof.threads)
            ort_t = time_onnxruntime(module, args, threads=prof.threads, repeat=opts.repeat, min_repeat_ms=1)
            torch_ms = torch_thread_ms(module, args, repeat=opts.repeat)
            flops, nbytes = kernel_flops(key), kernel_bytes(key)
            roof_ms = max(flops / (peak_gflops * 1e6), nbytes / (bw_gbps * 1e6))
            ratios.append(tvm_t.median_ms / ort_t.median_ms)
            eff_tvm.append(roof_ms / tvm_t.median_ms)
            eff_ort.append(roof_ms / ort_t.median_ms)
            rows.append({"kind": kind, "flops": flops, "bytes": nbytes, "roofline_ms": roof_ms,
                         "tvm_ms": tvm_t.median_ms, "tvm_cv": tvm_t.cv, "ort_ms": ort_t.median_ms, "torch_ms": torch_ms,
                         "tvm_over_ort": ratios[-1], "eff_tvm": eff_tvm[-1], "eff_ort": eff_ort[-1],
                         "compile_s": compile_s[-1]})
            print(f"{kind:13s} {flops / 1e6:7.2f} {nbytes / 1e3:7.1f} {roof_ms:8.4f} {tvm_t.median_ms:8.4f} "
                  f"{tvm_t.cv:6.2f} {ort_t.median_ms:8.4f} {torch_ms:8.4f} {ratios[-1]:7.2f} {eff_tvm[-1]:7.1%} "
                  f"{eff_ort[-1]:7.1%} {compile_s[-1]:9.1f}", flush=True)
    build_s = sum(len(by_kind[kind]) * statistics.median(s) for kind, s in compile_by_kind.items())
    print(f"LUT build estimate: {len(keys)} kernels, compile time per kind x kernels of that kind = "
          f"~{build_s / 60:.0f} min (+ export, linking and timing) at this machine's current load")
    summary = {"tvm_over_ort_median": statistics.median(ratios), "eff_tvm_median": statistics.median(eff_tvm),
               "eff_ort_median": statistics.median(eff_ort), "lut_build_estimate_s": build_s}
    write_json(opts.json_out, {"experiment": space.name, "device": prof.name, "threads": prof.threads,
                               "roofline_peak_gflops": peak_gflops, "bandwidth_gbps": bw_gbps, "seed": opts.seed,
                               "repeat": opts.repeat, "rows": rows, **summary})
    print_summary([f"tvm/ort median {summary['tvm_over_ort_median']:.2f} (range {min(ratios):.2f}-{max(ratios):.2f}) "
                   f"over {len(ratios)} kernels", f"roofline efficiency median tvm {summary['eff_tvm_median']:.1%}, "
                   f"ort {summary['eff_ort_median']:.1%}"])


if __name__ == "__main__":
    main()
