"""Measure kernels and whole sub-DiT steps with TVM 0.27 (Relax), locally or through `tvm.rpc`.

Path (the one seen working with TVM 0.27, docs/platform-notes.md): PyTorch module -> `torch.export` -> Relax
(`from_exported_program`) -> `tvm.compile` for the profile's target (CPU targets: operator fusion and
hwnas's hand-written TensorIR schedules, `hwnas.latency.schedule`; other targets: TVM's default
pipeline; no tuning) -> `relax.VirtualMachine` -> warm-up calls -> `repeat` repeats of
at least `min_repeat_ms`: thread CPU time with one local thread (robust to other processes on a shared
machine), else `time_evaluator` (wall clock, locally with several threads and remotely). A `Timing` holds the median, p10, p90
and coefficient of variation of the per-repeat means in ms, and n = repeats.

Remote devices: cross-compile here, `export_library`, upload and time through an RPC session
from a tracker (`connect_tracker`). The thread count is the profile's `threads`
(`TVM_NUM_THREADS` locally, `runtime.config_threadpool` remotely).

    timing = measure_kernel(key, profile=profile, space=space)
    step = time_subnet_tvm(extract_subnet(supernet, cfg), profile=profile)
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import socket
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwnas.latency.blocks import kernel_module
from hwnas.latency.kernels import KernelKey
from hwnas.latency.profile import DeviceProfile
from hwnas.latency.table import Timing
from hwnas.space import SearchSpace

DEFAULT_REPEAT = 30
DEFAULT_MIN_REPEAT_MS = 1
DEFAULT_WARMUP = 3
DEFAULT_ROUNDS = 5
"""Repeats and their minimum length. With one thread on this machine the clock is the calling thread's CPU
time (`time_interleaved`: the repeats split into `DEFAULT_ROUNDS` rounds); with more threads or remotely
it is `time_evaluator`'s wall clock."""


class TrackerError(RuntimeError):
    """The RPC tracker cannot be reached, or no server is registered under the key."""


class _Positional(nn.Module):
    """A static sub-DiT with a positional forward returning the velocity (what `torch.export` traces)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.model(x, t, text, text_mask)  # (B, C, H, W)


# Compiling ----------------------------------------------------------------------------------


def set_local_threads(threads: int) -> None:
    """Make TVM's local thread pool use `threads` workers (before the first TVM call where possible)."""
    os.environ["TVM_NUM_THREADS"] = str(threads)
    import tvm

    try:
        tvm.get_global_func("runtime.config_threadpool")(1, threads)
    except Exception:  # noqa: BLE001 - older runtimes: the environment variable is enough
        pass


class _LinearKN(nn.Module):
    """`nn.Linear` with its weight stored transposed, `(in, out)`: `x @ W^T + b` without a transpose op.

    TVM imports `linear` as `permute_dims(W)` + `matmul`; folding those transposes of constant
    weights (Relax `FoldConstant` compiles and runs one function per weight) took 44 s of a 50 s
    sub-DiT compile here. A deployed model stores its weights in the layout its kernels read, so
    doing it once in torch is what the device would run, at no compile cost.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight_kn = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=False)  # (in, out)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.matmul(x, self.weight_kn)  # (..., out)
        return y if self.bias is None else y + self.bias


def _weights_kn(module: nn.Module) -> nn.Module:
    """A copy of `module` with every `nn.Linear` replaced by `_LinearKN` (same outputs)."""
    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, _LinearKN(child))
    return module


def export_relax(module: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
    """Relax IRModule of `module(*args)` via `torch.export` (weights bound as constants, stored `(in, out)`)."""
    from tvm.relax.frontend.torch import from_exported_program

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(_weights_kn(module).eval(), args)
        return from_exported_program(program, keep_params_as_input=False)


def compile_relax(mod: Any, *, target: dict[str, Any], threads: int = 1, schedule: bool = True) -> Any:
    """`tvm.compile` of `mod` for `target` (a TVM 0.27 target dict).

    LLVM (CPU) targets get the hand-written schedules of `hwnas.latency.schedule` (`threads` > 1:
    parallel outer loops) unless `schedule` is False; other targets the default Relax pipeline.
    """
    import tvm

    if schedule and target.get("kind") == "llvm":
        from hwnas.latency.schedule import compile_relax_scheduled

        return compile_relax_scheduled(mod, target=target, threads=threads)
    return tvm.compile(mod, target=tvm.target.Target(target))


def compile_module(module: nn.Module, args: tuple[torch.Tensor, ...], *, target: dict[str, Any], threads: int = 1,
                   schedule: bool = True) -> Any:
    """Executable of `module(*args)` for `target` (see `compile_relax`)."""
    return compile_relax(export_relax(module, args), target=target, threads=threads, schedule=schedule)


def compile_kernel_library(key: KernelKey, space: SearchSpace, target: dict[str, Any], threads: int,
                           path: Path) -> Path:
    """Compile one kernel exactly as `measure_kernel` does and write it to `path` (a shared library)."""
    module, args = kernel_module(key, space)
    compile_module(module, args, target=target, threads=threads).export_library(str(path))
    return path


def run_parallel(fn: Callable[..., Any], arg_tuples: Sequence[tuple[Any, ...]], *, jobs: int) -> Iterator[tuple[int, Any]]:
    """Yield `(index, fn(*args))` as each finishes: in this process for `jobs` == 1, else in `jobs`
    spawned processes of one thread each (compiling in parallel; TVM's and torch's thread pools do
    not survive fork)."""
    if jobs == 1:
        for i, args in enumerate(arg_tuples):
            yield i, fn(*args)
        return
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_one_thread_worker) as pool:
        futures = {pool.submit(fn, *args): i for i, args in enumerate(arg_tuples)}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()


def _one_thread_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["TVM_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def load_local(lib: Any, args: Sequence[torch.Tensor], *, threads: int, warmup: int = DEFAULT_WARMUP
               ) -> tuple[Any, list[Any]]:
    """`(main, inputs)` of an executable or a library path on this machine, warmed up."""
    import tvm
    from tvm import relax

    set_local_threads(threads)
    dev = tvm.cpu()
    mod = tvm.runtime.load_module(str(lib)) if isinstance(lib, (str, Path)) else lib
    vm = relax.VirtualMachine(mod, dev)
    inputs = [tvm.runtime.tensor(a.detach().cpu().numpy(), dev) for a in args]
    for _ in range(warmup):
        vm["main"](*inputs)
    return vm["main"], inputs


# Timing -------------------------------------------------------------------------------------


def timing_from_seconds(per_repeat_s: list[float]) -> Timing:
    """A measured `Timing` (ms) from per-repeat mean seconds: median, p10, p90 (nearest rank), CV."""
    if not per_repeat_s:
        raise ValueError("no repeats to summarise")
    ms = sorted(s * 1e3 for s in per_repeat_s)
    n = len(ms)

    def pct(q: float) -> float:
        return ms[min(n - 1, max(0, round(q * (n - 1))))]

    median = statistics.median(ms)
    mean = statistics.fmean(ms)
    cv = statistics.pstdev(ms) / mean if n > 1 and mean > 0 else 0.0
    return Timing(median, min(pct(0.1), median), max(pct(0.9), median), cv, n, "measured")


def _time_executable(ex: Any, args: tuple[torch.Tensor, ...], *, remote: Any | None, repeat: int,
                     min_repeat_ms: int, warmup: int, threads: int) -> Timing:
    """Load `ex` (locally or on `remote`), warm up, and time `main` with `time_evaluator`."""
    import tvm
    from tvm import relax

    if remote is None:
        set_local_threads(threads)
        dev = tvm.cpu()
        vm = relax.VirtualMachine(ex, dev)
    else:
        dev = remote.cpu()
        try:
            remote.get_function("runtime.config_threadpool")(1, threads)
        except Exception:  # noqa: BLE001 - a server without the function keeps its default pool
            pass
        with tempfile.TemporaryDirectory(prefix="hwnas-rpc-") as tmp:
            lib = _export_for_remote(ex, Path(tmp))
            remote.upload(str(lib))
            vm = relax.VirtualMachine(remote.load_module(lib.name), dev)
    inputs = [tvm.runtime.tensor(a.detach().cpu().numpy(), dev) for a in args]
    for _ in range(warmup):
        vm["main"](*inputs)
    if remote is None and threads == 1:
        return _time_thread_cpu(vm["main"], inputs, repeat=repeat, min_repeat_ms=max(min_repeat_ms, 1))
    evaluator = vm.time_evaluator("main", dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return timing_from_seconds(list(evaluator(*inputs).results))


def _time_thread_cpu(func: Any, inputs: list[Any], *, repeat: int, min_repeat_ms: int) -> Timing:
    """Per-call CPU time of the calling thread (`time.thread_time_ns`): `time_interleaved` of one call.

    With one TVM thread the work runs on the calling thread, so its CPU time is the latency the
    code would have on an idle core; wall time on a shared machine also counts other processes'
    time slices, which hit a 20 ms sub-DiT step far more often than a 0.2 ms kernel and made the
    sum of kernels disagree with the whole step by ~2x (measured here, 2026-11-26).
    """
    return time_interleaved([(func, inputs)], repeat=repeat, min_repeat_ms=min_repeat_ms)[0]


def time_interleaved(calls: Sequence[tuple[Any, Sequence[Any]]], *, repeat: int = DEFAULT_REPEAT,
                     min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS, rounds: int = DEFAULT_ROUNDS) -> list[Timing]:
    """Thread-CPU timing of several `(func, inputs)` calls (warmed up), in `rounds` round-robin rounds.

    Each round times every call ~`repeat / rounds` times (each repeat >= `min_repeat_ms`), so one
    call's repeats are spread over the whole measurement. A call's median is the median of its
    round medians: on this shared machine bursts of interference slow a thread by up to ~50% for
    a fraction of a second (measured 2026-11-26: 15 of 105 rounds of one step), and back-to-back
    repeats land wholly inside or outside one. `cv` is the spread of the round medians; p10/p90
    are over all repeats.
    """
    rounds = max(1, min(rounds, repeat))
    per_round = [repeat // rounds + (r < repeat % rounds) for r in range(rounds)]  # sums to `repeat`
    numbers = []
    for func, inputs in calls:
        start = time.thread_time_ns()
        func(*inputs)
        once_ns = max(time.thread_time_ns() - start, 1)
        numbers.append(max(1, -(-max(min_repeat_ms, 1) * 1_000_000 // once_ns)))
    samples: list[list[float]] = [[] for _ in calls]
    medians: list[list[float]] = [[] for _ in calls]
    for r in range(rounds):
        for i, (func, inputs) in enumerate(calls):
            this_round = []
            for _ in range(per_round[r]):
                start = time.thread_time_ns()
                for _ in range(numbers[i]):
                    func(*inputs)
                this_round.append((time.thread_time_ns() - start) / numbers[i] / 1e9)
            samples[i] += this_round
            medians[i].append(statistics.median(this_round))
    out = []
    for all_s, round_s in zip(samples, medians):
        t = timing_from_seconds(all_s)
        mid = 1e3 * statistics.median(round_s)
        cv = statistics.pstdev(round_s) / statistics.fmean(round_s) if len(round_s) > 1 else t.cv
        out.append(Timing(mid, min(t.p10_ms, mid), max(t.p90_ms, mid), cv, t.n, "measured"))
    return out


def _export_for_remote(ex: Any, tmp: Path) -> Path:
    """Write the executable as a shared library (host-like targets) or an object tar (cross targets)."""
    # A fresh name per upload: overwriting a library the server has loaded kills its worker (SIGBUS).
    stem = f"kernel-{os.getpid()}-{time.monotonic_ns()}"
    lib = tmp / f"{stem}.so"
    try:
        ex.export_library(str(lib))
    except Exception:  # noqa: BLE001 - no host linker for this target: ship objects, the server links
        from tvm.contrib import tar

        lib = tmp / f"{stem}.tar"
        ex.export_library(str(lib), fcompile=tar.tar)
    return lib


def measure_kernel(key: KernelKey, *, profile: DeviceProfile, space: SearchSpace, remote: Any | None = None,
                   repeat: int = DEFAULT_REPEAT, min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS,
                   warmup: int = DEFAULT_WARMUP, seed: int = 0) -> Timing:
    """Latency of one kernel at batch 1 on the profile's device: build, compile, time.

    `remote` is an RPC session (`connect_tracker(...)`); None runs on this machine.
    """
    module, args = kernel_module(key, space, seed=seed)
    ex = compile_module(module, args, target=profile.target, threads=profile.threads)
    return _time_executable(ex, args, remote=remote, repeat=repeat, min_repeat_ms=min_repeat_ms,
                            warmup=warmup, threads=profile.threads)


def subnet_inputs(space: SearchSpace, *, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random `(x, t, text, text_mask)` of a sub-DiT's step (see `hwnas.model.export.example_inputs`)."""
    from hwnas.model.export import example_inputs

    return example_inputs(space, batch=batch, seed=seed)


def time_subnet_tvm(static_model: nn.Module, *, profile: DeviceProfile, batch: int = 1, remote: Any | None = None,
                    repeat: int = DEFAULT_REPEAT, min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS,
                    warmup: int = DEFAULT_WARMUP) -> Timing:
    """Latency of one whole denoiser step of a static sub-DiT (`extract_subnet` / `StaticDiT`).

    Same compiler path, target and threads as the LUT kernels, so the sum of a sub-DiT's kernel
    entries predicts this. The model is exported in eval mode, fp32, on CPU; its training flag is
    restored afterwards.
    """
    space: SearchSpace = static_model.space  # type: ignore[assignment]
    was_training = static_model.training
    try:
        wrapper = _Positional(static_model.eval().float().cpu())
        args = subnet_inputs(space, batch=batch)
        ex = compile_module(wrapper, args, target=profile.target, threads=profile.threads)
    finally:
        static_model.train(was_training)
    return _time_executable(ex, args, remote=remote, repeat=repeat, min_repeat_ms=min_repeat_ms,
                            warmup=warmup, threads=profile.threads)


# onnxruntime reference ------------------------------------------------------------------------


def time_onnxruntime(module: nn.Module, args: tuple[torch.Tensor, ...], *, threads: int,
                     repeat: int = DEFAULT_REPEAT, min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS,
                     warmup: int = DEFAULT_WARMUP) -> Timing:
    """Latency of `module(*args)` under onnxruntime's CPU provider (all graph optimisations,
    `threads` intra-op threads), timed like the TVM kernels: per-repeat means of >= `min_repeat_ms`,
    thread CPU time with one thread (onnxruntime then runs on the calling thread), else wall clock."""
    import onnxruntime as ort

    clock = time.thread_time if threads == 1 else time.perf_counter

    names = [f"in{i}" for i in range(len(args))]
    with tempfile.TemporaryDirectory(prefix="hwnas-ort-") as tmp:
        path = Path(tmp) / "kernel.onnx"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, str(path), input_names=names, opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    for _ in range(warmup):
        session.run(None, feed)
    per_repeat: list[float] = []
    number = 1
    for _ in range(repeat):
        while True:
            start = clock()
            for _ in range(number):
                session.run(None, feed)
            elapsed = clock() - start
            if elapsed * 1e3 >= min_repeat_ms or number >= 1 << 16:
                break
            number = max(number * 2, int(number * min_repeat_ms / max(elapsed * 1e3, 1e-3)) + 1)
        per_repeat.append(elapsed / number)
    return timing_from_seconds(per_repeat)


# RPC ------------------------------------------------------------------------------------------


def parse_tracker(tracker: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); ValueError quoting a malformed value."""
    host, _, port = tracker.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"tracker must be HOST:PORT, got {tracker!r}")
    return host, int(port)


def connect_tracker(tracker: str, key: str, *, timeout_s: float = 5.0, wait_free_s: float = 60.0,
                    session_timeout_s: int = 0) -> Any:
    """An RPC session to a device registered under `key` at `tracker` (`HOST:PORT`).

    Raises `TrackerError` with one clear line when the tracker does not answer within `timeout_s`,
    has no server under `key`, or none of them is free within `wait_free_s` (TVM's own client
    would retry for a minute, then block for ever).
    """
    host, port = parse_tracker(tracker)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise TrackerError(f"TVM RPC tracker {host}:{port} is unreachable ({exc.strerror or exc}); start it with "
                           f"`python -m tvm.exec.rpc_tracker --host {host} --port {port}`") from None
    from tvm import rpc

    client = rpc.connect_tracker(host, port)
    keys = tracker_keys(client)
    if key not in keys:
        raise TrackerError(f"no RPC server is registered under key {key!r} at tracker {host}:{port} "
                           f"(registered: {', '.join(sorted(keys)) or 'none'})")
    deadline = time.monotonic() + wait_free_s
    while keys.get(key, 0) < 1:
        if time.monotonic() > deadline:
            raise TrackerError(f"no free RPC server under key {key!r} at tracker {host}:{port} after "
                               f"{wait_free_s:.0f} s (is the device still up?)")
        time.sleep(1.0)
        keys = tracker_keys(client)
    return client.request(key, priority=1, session_timeout=session_timeout_s)


def tracker_keys(client: Any) -> dict[str, int]:
    """{key: free servers} the tracker reports (its queue status)."""
    summary = client.summary()
    out: dict[str, int] = {}
    for key, info in summary.get("queue_info", {}).items():
        out[key] = int(info.get("free", 0))
    return out
