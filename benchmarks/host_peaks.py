"""Measure this machine's peak fp32 matmul throughput and memory bandwidth for `host.toml`.

Usage (from the repository root):

    PYTHONPATH=. .venv/bin/python benchmarks/host_peaks.py [--threads N]

Compute: the best of several timed `torch.mm` calls on square fp32 matrices (a multiply-add =
2 FLOPs), so the figure is what a well-tuned BLAS reaches here, i.e. a practical peak.
Bandwidth: a large numpy array copy (`np.copyto`, 512 MiB), counted as read + write bytes.
Prints TOML lines to paste into `device_profiles/host.toml` with the command and the CPU model.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _cpu_model() -> str:
    """The CPU model with family and model numbers (hypervisors often mask the name), as tables record it."""
    from hwnas.latency.profile import host_cpu

    return host_cpu()[0]


def matmul_gflops(*, n: int = 2048, repeats: int = 7, threads: int) -> float:
    """Best-of-`repeats` GFLOP/s of an n x n x n fp32 matmul in torch."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=torch.float32)
    b = torch.randn(n, n, dtype=torch.float32)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    gflops = matmul_gflops(threads=args.threads)
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


if __name__ == "__main__":
    main()
