"""Measured LUT builds: every kernel of a search space timed with TVM, resumable and atomic.

Kernels are compiled about `GROUP` to a library (`kernel_cache.compile_group`: shared TensorIR
functions, one LLVM and link step per group) by `jobs` worker processes, into a kernel cache when one
is given (a kernel compiled there before, by any build, is not compiled again), and each is timed
until its interval is tight (`adaptive.StopRule`).

Locally, compiling and timing take turns: a wave of up to `CHUNK` kernels is compiled, then timed
together in interleaved rounds (thread CPU time with one thread) while no compiler runs. On this
2-core machine, timing beside two compile workers read kernels ~30% slow, so overlapping would buy
the ~2% of a build that timing takes with accuracy (`benchmarks/lut_build.py` measures both). A
remote device (RPC tracker) times the kernels ready so far while the host compiles the next groups.

The table (`latency_tables/<device>/<experiment>.csv` + sidecar) is rewritten atomically after each
timed wave (locally) or kernel (remotely), so a killed build loses at most what was in flight;
rerunning it keeps the entries whose provenance (target, threads, TVM version, code hash, CPU,
timing method) still matches and measures only the rest. A remote device that drops mid-build is
reconnected `retries` times per kernel; after that the build stops with `DeviceDroppedError` and a
rerun resumes it.
"""

from __future__ import annotations

import datetime as _dt
import functools
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

from hwnas.latency.adaptive import DEFAULT_STOP, StopRule, time_evaluated, time_rounds
from hwnas.latency.bench import DEFAULT_WARMUP, TrackerError, connect_tracker
from hwnas.latency.blocks import kernel_module
from hwnas.latency.kernel_cache import (
    MEASURED_CODE_FILES,
    CompiledKernel,
    compile_group,
    kernel_digest,
    load_library,
    lookup,
)
from hwnas.latency.kernels import KernelKey, enumerate_kernels
from hwnas.latency.profile import DeviceProfile, host_cpu
from hwnas.latency.table import (
    DEFAULT_TABLE_DIR,
    CorruptTableError,
    LatencyTable,
    TableMeta,
    Timing,
    code_hash,
    read_table,
    table_paths,
    tvm_version,
    write_table,
)
from hwnas.space import SearchSpace

__all__ = ["CHUNK", "GROUP", "MEASURED_CODE_FILES", "BuildReport", "DeviceDroppedError", "build_measured_table",
           "measured_meta"]

GROUP = 16.0
"""Kernels per compiled library, counting a block as 1 and any other kernel as `_SMALL` (its compile is
that much cheaper), so the groups of a wave take about as long."""

_SMALL = 0.25

CHUNK = 1024
"""Kernels per wave of a local build: compiled, then timed together. One wave holds a whole shapes-32 table
(611 kernels: a round spans ~2 s), so every kernel is timed under the same conditions and no compile
worker waits for a wave's last group; with a kernel cache a killed build loses only the timing."""


class DeviceDroppedError(RuntimeError):
    """The remote device stopped answering; the entries measured so far are saved."""


@dataclass(frozen=True)
class BuildReport:
    """What a build did: the table written, kernels measured now, kept from before, discarded as stale;
    of those measured, how many were compiled now and how many came from the kernel cache; wall seconds
    spent waiting for compiles and timing."""

    table: LatencyTable
    measured: int
    kept: int
    discarded: int
    wall_s: float
    paths: tuple[Path, Path]
    note: str = ""
    compiled: int = 0
    cached: int = 0
    compile_s: float = 0.0
    timing_s: float = 0.0


def measured_meta(profile: DeviceProfile, space: SearchSpace, *, experiment_path: str, remote: bool,
                  stop: StopRule, warmup: int) -> TableMeta:
    """Provenance of a measured table built now (the CPU is recorded for the local machine only)."""
    cpu, cores = host_cpu() if not remote else (None, None)
    clock = ("time_evaluator wall clock through tvm.rpc" if remote else
             f"thread CPU time, rounds interleaved over <= {CHUNK} kernels" if profile.threads == 1
             else "time_evaluator wall clock")
    return TableMeta(
        device=profile.name, experiment=space.name, experiment_path=experiment_path, source="measured",
        target=profile.target, tvm_version=tvm_version(), threads=profile.threads, precisions=("fp32",),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        code_hash=code_hash(MEASURED_CODE_FILES), code_files=MEASURED_CODE_FILES, host_cpu=cpu, host_cores=cores,
        calibration=(f"none: TVM {tvm_version()} Relax, " + ("hwnas CPU schedules (hwnas/latency/schedule.py)"
                     if profile.target.get("kind") == "llvm" else "default pipeline")
                     + f" (no tuning), kernels compiled ~{GROUP:g} per library, {warmup} warm-up calls, "
                     f"{stop.describe()}, batch 1, {profile.threads} thread(s), {clock}"),
    )


def _resume_entries(path_pair: tuple[Path, Path], meta: TableMeta,
                    profile: DeviceProfile) -> tuple[dict[KernelKey, Timing], int, str]:
    """Entries of an existing table still valid for `meta`, how many were dropped, and why."""
    csv_path, meta_path = path_pair
    if not csv_path.exists() and not meta_path.exists():
        return {}, 0, ""
    try:
        old = read_table(csv_path, meta_path, text_encoder=profile.text_encoder, vae_decoder=profile.vae_decoder)
    except CorruptTableError as exc:
        raise CorruptTableError(f"{exc}; delete {csv_path} and {meta_path} to start the build afresh") from None
    checks = (("source", old.meta.source, "measured"), ("target", old.meta.target, meta.target),
              ("threads", old.meta.threads, meta.threads), ("TVM version", old.meta.tvm_version, meta.tvm_version),
              ("code hash", old.meta.code_hash, meta.code_hash), ("CPU", old.meta.host_cpu, meta.host_cpu),
              ("timing method", old.meta.calibration, meta.calibration))
    for what, was, now in checks:
        if was != now:
            note = f"discarded {len(old.entries)} entries of the old table: {what} changed ({was!r} -> {now!r})"
            return {}, len(old.entries), note
    return {k: t for k, t in old.entries.items() if t.source == "measured"}, 0, ""


def build_measured_table(profile: DeviceProfile, space: SearchSpace, *, experiment_path: str,
                         table_dir: str | Path = DEFAULT_TABLE_DIR, keys: Sequence[KernelKey] | None = None,
                         tracker: str | None = None, rpc_key: str | None = None, retries: int = 2,
                         stop: StopRule = DEFAULT_STOP, warmup: int = DEFAULT_WARMUP, progress: bool = True,
                         jobs: int = 1, cache: str | Path | None = None, overlap: bool | None = None) -> BuildReport:
    """Measure every kernel of `space` (or `keys`) on the profile's device and write the table.

    Local when `tracker` is None, else through the RPC tracker (`HOST:PORT`) and `rpc_key` (the
    profile's `rpc_key` by default). Existing valid entries are kept (resume); entries of other
    keys already in the table stay too. `jobs` compile processes; `cache` is the kernel cache folder
    (None: compile into a temporary folder). `overlap` times while compiling (default: remotely only).
    """
    start = time.perf_counter()
    remote_key = rpc_key or profile.rpc_key
    if tracker is not None and not remote_key:
        raise ValueError(f"device {profile.name!r} has no rpc_key in its profile; pass --key")
    if tracker is None and not profile.local:
        raise ValueError(f"device {profile.name!r} is not this machine (local = false); measure it through an "
                         f"RPC tracker: hwnas lut build --device {profile.name} --tracker HOST:PORT")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs!r}")
    if cache is not None:
        try:
            Path(cache).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot use {str(cache)!r} as the kernel cache folder ({exc.strerror or exc})") from None
    meta = measured_meta(profile, space, experiment_path=experiment_path, remote=tracker is not None,
                         stop=stop, warmup=warmup)
    paths = table_paths(profile.name, space.name, table_dir=table_dir)
    entries, discarded, note = _resume_entries(paths, meta, profile)
    wanted = list(keys) if keys is not None else enumerate_kernels(space, precisions=("fp32",))
    todo = sorted({k for k in wanted if k not in entries}, key=lambda k: (k.precision, astuple(k.op)))
    kept = len(wanted) - len(todo)
    remote = _Remote(connect_tracker(tracker, remote_key), profile.threads) if tracker is not None else None
    bar = _progress(len(wanted), initial=kept, enabled=progress, desc=f"lut {profile.name}/{space.name}",
                    unit="kernel compiled" if remote is None else "kernel timed")
    measured = compiled = cached = 0
    compile_s = timing_s = 0.0
    written = paths

    def write() -> tuple[Path, Path]:
        return write_table(LatencyTable(meta, dict(entries), profile.text_encoder, profile.vae_decoder),
                           table_dir=table_dir)

    try:
        if not todo:  # nothing to measure: still (re)write the sidecar so provenance is current
            written = write()
        with ExitStack() as stack:
            lib_dir = Path(cache) if cache is not None else Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="hwnas-kernels-")))
            digests = {k: kernel_digest(k, space, target=profile.target, threads=profile.threads) for k in todo}
            found = lookup(lib_dir, digests.values())
            cached = sum(digests[k] in found for k in todo)
            compiled = len(todo) - cached
            if remote is None:
                bar.update(cached)
            batches = _ready_batches(todo, digests, found, space=space, profile=profile, jobs=jobs, lib_dir=lib_dir,
                                     overlap=remote is not None if overlap is None else overlap, stack=stack,
                                     compiled=bar.update if remote is None else lambda n: None)
            while True:
                t0 = time.perf_counter()
                batch = next(batches, None)
                compile_s += time.perf_counter() - t0
                if batch is None:
                    break
                t0 = time.perf_counter()
                if remote is None:
                    bar.set_postfix_str(f"timing {len(batch)}")
                    entries.update(_time_local(batch, space=space, profile=profile, stop=stop, warmup=warmup))
                    measured += len(batch)
                    written = write()
                    bar.set_postfix_str("")
                else:
                    assert tracker is not None and remote_key is not None  # a session is only made with both
                    for key, where in batch:
                        entries[key], remote = _time_remote_retrying(
                            remote, key, where, space=space, stop=stop, warmup=warmup, retries=retries,
                            tracker=tracker, remote_key=remote_key, saved=len(entries))
                        measured += 1
                        written = write()
                        bar.update(1)
                timing_s += time.perf_counter() - t0
    finally:
        bar.close()
    table = LatencyTable(meta, entries, profile.text_encoder, profile.vae_decoder)
    return BuildReport(table, measured, kept, discarded, time.perf_counter() - start, written, note,
                       compiled=compiled, cached=cached, compile_s=compile_s, timing_s=timing_s)


# Compiling -------------------------------------------------------------------------------------

_Ready = tuple[KernelKey, CompiledKernel]


def _groups(keys: Sequence[KernelKey], size: float) -> list[list[KernelKey]]:
    """Consecutive runs of `keys` (sorted, so alike shapes are adjacent) of about `size` block units each."""
    groups: list[list[KernelKey]] = [[]]
    weight = 0.0
    for key in keys:
        if weight >= size:
            groups.append([])
            weight = 0.0
        groups[-1].append(key)
        weight += 1.0 if key.op.is_block else _SMALL
    return [g for g in groups if g]


def _ready_batches(todo: Sequence[KernelKey], digests: dict[KernelKey, str], found: dict[str, CompiledKernel], *,
                   space: SearchSpace, profile: DeviceProfile, jobs: int, lib_dir: Path, overlap: bool,
                   stack: ExitStack, compiled: Callable[[int], None]) -> Iterator[list[_Ready]]:
    """Batches of compiled kernels; `compiled(n)` is told as each group is done. Without `overlap`: waves of
    `CHUNK` kernels (cached or compiled now), each yielded once all of it is compiled, and the next wave
    compiled only when the caller asks (after timing this one). With it: the cached kernels, then each group
    as it is done, every group compiling from the start."""
    where = {d: found[d] for d in digests.values() if d in found}

    def args(group: list[KernelKey]) -> tuple[Any, ...]:
        return (group, space, profile.target, profile.threads, [digests[k] for k in group], lib_dir)

    def placed(keys: Sequence[KernelKey]) -> list[_Ready]:
        return [(k, where[digests[k]]) for k in keys]

    pool: ProcessPoolExecutor | None = None
    if overlap or jobs > 1:
        pool = stack.enter_context(ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                       initializer=_one_thread_worker))
    if overlap:
        assert pool is not None
        ready = [k for k in todo if digests[k] in where]
        for lo in range(0, len(ready), CHUNK):
            yield placed(ready[lo:lo + CHUNK])
        futures: dict[Future[dict[str, CompiledKernel]], list[KernelKey]] = {
            pool.submit(compile_group, *args(g)): g for g in _groups([k for k in todo if digests[k] not in where],
                                                                     GROUP)}
        for fut in as_completed(futures):
            where.update(fut.result())
            compiled(len(futures[fut]))
            yield placed(futures[fut])
        return
    for lo in range(0, len(todo), CHUNK):
        wave = todo[lo:lo + CHUNK]
        groups = _groups([k for k in wave if digests[k] not in where], GROUP)
        if pool is None:  # compile here, between timings
            for group in groups:
                where.update(compile_group(*args(group)))
                compiled(len(group))
        else:
            running = {pool.submit(compile_group, *args(g)): g for g in groups}
            for fut in as_completed(running):
                where.update(fut.result())
                compiled(len(running[fut]))
        yield placed(wave)


def _one_thread_worker() -> None:
    import torch

    os.environ["OMP_NUM_THREADS"] = os.environ["TVM_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# Timing ----------------------------------------------------------------------------------------


def _time_local(batch: Sequence[tuple[KernelKey, CompiledKernel]], *, space: SearchSpace, profile: DeviceProfile,
                stop: StopRule, warmup: int) -> dict[KernelKey, Timing]:
    """Time a batch on this machine: with one thread all together in interleaved rounds of thread CPU
    time, else one after another with `time_evaluator` (wall clock)."""
    import tvm

    by_lib: dict[Path, list[tuple[KernelKey, str]]] = {}
    for key, where in batch:
        by_lib.setdefault(where.lib, []).append((key, where.func))
    keys: list[KernelKey] = []
    calls: list[tuple[Any, list[Any]]] = []
    out: dict[KernelKey, Timing] = {}
    for lib, items in by_lib.items():
        vm, lib_calls = load_library(lib, [(f, kernel_module(k, space)[1]) for k, f in items],
                                     threads=profile.threads, warmup=warmup)
        if profile.threads == 1:
            keys += [k for k, _ in items]
            calls += lib_calls
            continue
        for (key, func), (_, inputs) in zip(items, lib_calls):
            ev = vm.time_evaluator(func, tvm.cpu(), number=1, repeat=stop.per_round,
                                   min_repeat_ms=int(round(stop.min_repeat_ms)))
            out[key] = time_evaluated(functools.partial(_evaluate, ev, inputs), stop)
    out.update(zip(keys, time_rounds(calls, stop)))
    return out


def _evaluate(evaluator: Any, inputs: Sequence[Any]) -> list[float]:
    """One round of a `time_evaluator`: seconds per repeat."""
    return [float(s) for s in evaluator(*inputs).results]


class _Remote:
    """An RPC session and the kernel libraries uploaded to it (each once per session)."""

    def __init__(self, session: Any, threads: int) -> None:
        self.session, self.threads = session, threads
        self._vms: dict[Path, Any] = {}

    def time(self, where: CompiledKernel, args: Sequence[Any], *, stop: StopRule, warmup: int) -> Timing:
        import tvm
        from tvm import relax

        dev = self.session.cpu()
        vm = self._vms.get(where.lib)
        if vm is None:
            try:
                self.session.get_function("runtime.config_threadpool")(1, self.threads)
            except Exception:  # noqa: BLE001 - a server without the function keeps its default pool
                pass
            # A fresh name per upload: overwriting a library the server has loaded kills its worker (SIGBUS).
            name = f"hwnas-{uuid.uuid4().hex}{where.lib.suffix}"
            self.session.upload(str(where.lib), target=name)
            vm = self._vms[where.lib] = relax.VirtualMachine(self.session.load_module(name), dev)
        inputs = [tvm.runtime.tensor(a.detach().cpu().numpy(), dev) for a in args]
        for _ in range(warmup):
            vm[where.func](*inputs)
        ev = vm.time_evaluator(where.func, dev, number=1, repeat=stop.per_round,
                               min_repeat_ms=int(round(stop.min_repeat_ms)))
        return time_evaluated(lambda: list(ev(*inputs).results), stop)


def _time_remote_retrying(remote: _Remote, key: KernelKey, where: CompiledKernel, *, space: SearchSpace,
                          stop: StopRule, warmup: int, retries: int, tracker: str, remote_key: str,
                          saved: int) -> tuple[Timing, _Remote]:
    """Time one kernel on the device, reconnecting up to `retries` times; (timing, the session now in use)."""
    args = kernel_module(key, space)[1]
    for attempt in range(retries + 1):
        try:
            return remote.time(where, args, stop=stop, warmup=warmup), remote
        except Exception as exc:  # noqa: BLE001 - any RPC failure: reconnect and retry
            if attempt == retries:
                raise DeviceDroppedError(
                    f"device {remote_key!r} at {tracker} failed on {key.describe()} after {retries + 1} tries "
                    f"({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {saved} entries "
                    "are saved, rerun the same command to resume") from None
            time.sleep(min(2.0 * (attempt + 1), 10.0))
            try:
                remote = _Remote(connect_tracker(tracker, remote_key), remote.threads)
            except TrackerError as lost:
                raise DeviceDroppedError(f"{lost}; {saved} entries are saved, rerun the same command to resume"
                                         ) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _progress(total: int, *, initial: int, enabled: bool, desc: str, unit: str) -> Any:
    """A tqdm bar on stderr (updates at most every few seconds when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, file=sys.stderr, unit=unit,
                mininterval=0.5 if sys.stderr.isatty() else 20.0, dynamic_ncols=True)
