"""Measure this machine's peak fp32 matmul throughput and memory bandwidth for `host.toml`.

Usage (from the repository root):

    PYTHONPATH=. .venv/bin/python benchmarks/host_peaks.py [--threads N] [--seed 0] [--json runs/host-peaks.json]

Compute: the best of several timed `torch.mm` calls on square fp32 matrices (a multiply-add =
2 FLOPs), so the figure is what a well-tuned BLAS reaches here, i.e. a practical peak.
Bandwidth: a large numpy array copy (`np.copyto`, 512 MiB), counted as read + write bytes.
Prints TOML lines to paste into `device_profiles/host.toml` with the command and the CPU model, then a
table of both figures against the ones host.toml holds now, and a summary line of their ratios (on the
CPU that measured host.toml's figures, a ratio far below 1 says the machine is busy: rerun it quiet).
"""

from __future__ import annotations

import os
import time

import numpy as np
from _common import add_json, add_seed, parser, positive_int, print_summary, write_json


def _cpu_model() -> str:
    """The CPU model with family and model numbers (hypervisors often mask the name), as tables record it."""
    from hwnas.latency.profile import host_cpu

    return host_cpu()[0]


def matmul_gflops(*, n: int = 2048, repeats: int = 7, threads: int, seed: int = 0) -> float:
    """Best-of-`repeats` GFLOP/s of an n x n x n fp32 matmul in torch (random matrices drawn from `seed`)."""
    import torch

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, dtype=torch.float32, generator=gen)
    b = torch.randn(n, n, dtype=torch.float32, generator=gen)
    torch.mm(a, b)  # warm-up
    best_s = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best_s = min(best_s, time.perf_counter() - t0)
    return 2 * n**3 / best_s / 1e9


def copy_gbps(*, size_bytes: int = 512 * 2**20, repeats: int = 7) -> float:
    """Best-of-`repeats` GB/s of a large array copy (bytes read + bytes written)."""
    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # warm-up, page faults
    best_s = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best_s = min(best_s, time.perf_counter() - t0)
    return 2 * size_bytes / best_s / 1e9


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count() or 1, help="torch threads of the matmul")
    add_seed(ap, controls="the matmul's random matrices")
    add_json(ap, what="both figures, with the CPU, threads and date")
    args = ap.parse_args()
    from hwnas.latency import load_profile

    profile = load_profile("host")
    gflops = matmul_gflops(threads=args.threads, seed=args.seed)
    gbps = copy_gbps()
    date = time.strftime("%Y-%m-%d")
    print(f"# cpu_model = {_cpu_model()!r}, cores = {os.cpu_count()}, threads = {args.threads}, date = {date}")
    # The host profile's peaks are those of the CPU that measured them (its TVM target follows the
    # running CPU), so each source names that CPU.
    on = f"on {_cpu_model()}, {os.cpu_count()} cores"
    print(f"[peak.fp32]\ngflops = {gflops:.1f}\nsource = \"measured: {on}, benchmarks/host_peaks.py, torch.mm "
          f"2048x2048x2048 fp32 on {args.threads} threads, best of 7, {date}\"")
    print(f"[memory]\nbandwidth_gbps = {gbps:.1f}\nsource = \"measured: {on}, benchmarks/host_peaks.py, np.copyto of "
          f"512 MiB counted as read + write, best of 7, {date}\"")
    rows = [("fp32 matmul GFLOP/s", gflops, profile.peak_gflops["fp32"].value),
            ("copy GB/s", gbps, profile.bandwidth_gbps.value)]
    print(f"\n{'figure':<20} {'now':>8} {'host.toml':>9} {'now/toml':>8}")
    for name, now, toml in rows:
        print(f"{name:<20} {now:8.1f} {toml:9.1f} {now / toml:8.2f}")
    write_json(args.json_out, {"cpu_model": _cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
                               "date": date, "seed": args.seed, "fp32_gflops": gflops, "bandwidth_gbps": gbps,
                               "host_toml": {"fp32_gflops": rows[0][2], "bandwidth_gbps": rows[1][2]}})
    cores = profile.target.get("num-cores", "all")
    print_summary([f"matmul now ({args.threads} threads) / host.toml ({cores} cores) {gflops / rows[0][2]:.2f}",
                   f"copy bandwidth now / host.toml {gbps / rows[1][2]:.2f}"])


if __name__ == "__main__":
    main()
