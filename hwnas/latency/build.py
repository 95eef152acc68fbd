"""Measured LUT builds: every kernel of a search space timed with TVM, resumable and atomic.

The table (`latency_tables/<device>/<experiment>.csv` + sidecar) is rewritten atomically after
every kernel (`write_table`), so a killed build loses at most the kernel in flight; rerunning it
keeps the entries whose provenance (target, threads, TVM version, code hash, CPU) still matches
and measures only the rest. On this machine with one thread the kernels go in chunks of
`CHUNK`: compiled first (`jobs` processes at a time), then timed together in interleaved rounds
(`time_interleaved`), then written; a killed build loses at most the chunk in flight. A remote
device that drops mid-build is reconnected `retries` times per kernel; after that the build
stops with `DeviceDroppedError` and a rerun resumes it.
"""

from __future__ import annotations

import datetime as _dt
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwnas.latency.bench import (
    DEFAULT_MIN_REPEAT_MS,
    DEFAULT_REPEAT,
    DEFAULT_ROUNDS,
    DEFAULT_WARMUP,
    TrackerError,
    compile_kernel_library,
    connect_tracker,
    load_local,
    measure_kernel,
    run_parallel,
    time_interleaved,
)
from hwnas.latency.blocks import kernel_module
from hwnas.latency.kernels import KernelKey, enumerate_kernels
from hwnas.latency.profile import DeviceProfile, host_cpu
from hwnas.latency.table import (
    DEFAULT_TABLE_DIR,
    KERNEL_CODE_FILES,
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

MEASURED_CODE_FILES: tuple[str, ...] = (
    *KERNEL_CODE_FILES, "latency/blocks.py", "latency/bench.py", "model/static.py", "model/attention.py",
    "model/ops.py", "model/forward.py", "latency/schedule.py",
)
"""Files a measured table depends on: the kernels' cost and shapes, the modules timed, the bench path."""

CHUNK = 64
"""Kernels compiled, then timed together, per step of a local build (each round spans ~0.5-1 s)."""


class DeviceDroppedError(RuntimeError):
    """The remote device stopped answering; the entries measured so far are saved."""


@dataclass(frozen=True)
class BuildReport:
    """What a build did: the table written, kernels measured now, kept from before, discarded as stale."""

    table: LatencyTable
    measured: int
    kept: int
    discarded: int
    wall_s: float
    paths: tuple[Path, Path]
    note: str = ""


def measured_meta(profile: DeviceProfile, space: SearchSpace, *, experiment_path: str, remote: bool,
                  repeat: int, min_repeat_ms: int, warmup: int) -> TableMeta:
    """Provenance of a measured table built now (the CPU is recorded for the local machine only)."""
    cpu, cores = host_cpu() if not remote else (None, None)
    return TableMeta(
        device=profile.name, experiment=space.name, experiment_path=experiment_path, source="measured",
        target=profile.target, tvm_version=tvm_version(), threads=profile.threads, precisions=("fp32",),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        code_hash=code_hash(MEASURED_CODE_FILES), code_files=MEASURED_CODE_FILES, host_cpu=cpu, host_cores=cores,
        calibration=(f"none: TVM {tvm_version()} Relax, " + ("hwnas CPU schedules (hwnas/latency/schedule.py)"
                     if profile.target.get("kind") == "llvm" else "default pipeline")
                     + f" (no tuning), {warmup} warm-up calls, "
                     f"{repeat} repeats of >= {min_repeat_ms} ms, batch 1, {profile.threads} thread(s), "
                     + ("time_evaluator wall clock through tvm.rpc" if remote else
                        f"thread CPU time, median of {DEFAULT_ROUNDS} rounds interleaved over {CHUNK} kernels"
                        if profile.threads == 1 else "time_evaluator wall clock")),
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
              ("code hash", old.meta.code_hash, meta.code_hash), ("CPU", old.meta.host_cpu, meta.host_cpu))
    for what, was, now in checks:
        if was != now:
            note = f"discarded {len(old.entries)} entries of the old table: {what} changed ({was!r} -> {now!r})"
            return {}, len(old.entries), note
    return {k: t for k, t in old.entries.items() if t.source == "measured"}, 0, ""


def build_measured_table(profile: DeviceProfile, space: SearchSpace, *, experiment_path: str,
                         table_dir: str | Path = DEFAULT_TABLE_DIR, keys: Sequence[KernelKey] | None = None,
                         tracker: str | None = None, rpc_key: str | None = None, retries: int = 2,
                         repeat: int = DEFAULT_REPEAT, min_repeat_ms: int = DEFAULT_MIN_REPEAT_MS,
                         warmup: int = DEFAULT_WARMUP, progress: bool = True, jobs: int = 1) -> BuildReport:
    """Measure every kernel of `space` (or `keys`) on the profile's device and write the table.

    Local when `tracker` is None, else through the RPC tracker (`HOST:PORT`) and `rpc_key` (the
    profile's `rpc_key` by default). Existing valid entries are kept (resume); entries of other
    keys already in the table stay too. `jobs` compile processes for local one-thread builds.
    """
    start = time.perf_counter()
    remote_key = rpc_key or profile.rpc_key
    if tracker is not None and not remote_key:
        raise ValueError(f"device {profile.name!r} has no rpc_key in its profile; pass --key")
    if tracker is None and not profile.local:
        raise ValueError(f"device {profile.name!r} is not this machine (local = false); measure it through an "
                         f"RPC tracker: hwnas lut build --device {profile.name} --tracker HOST:PORT")
    meta = measured_meta(profile, space, experiment_path=experiment_path, remote=tracker is not None,
                         repeat=repeat, min_repeat_ms=min_repeat_ms, warmup=warmup)
    paths = table_paths(profile.name, space.name, table_dir=table_dir)
    entries, discarded, note = _resume_entries(paths, meta, profile)
    wanted = list(keys) if keys is not None else enumerate_kernels(space, precisions=("fp32",))
    todo = [k for k in wanted if k not in entries]
    kept = len(wanted) - len(todo)
    session = connect_tracker(tracker, remote_key) if tracker is not None else None
    bar = _progress(len(wanted), initial=kept, enabled=progress, desc=f"lut {profile.name}/{space.name}")
    measured = 0
    written = paths
    try:
        if not todo:  # nothing to measure: still (re)write the sidecar so provenance is current
            written = write_table(LatencyTable(meta, dict(entries),
                                               profile.text_encoder, profile.vae_decoder), table_dir=table_dir)
        if session is None and profile.threads == 1:
            for lo in range(0, len(todo), CHUNK):
                chunk = todo[lo:lo + CHUNK]
                entries.update(_measure_chunk(chunk, profile, space, jobs=jobs, repeat=repeat,
                                              min_repeat_ms=min_repeat_ms, warmup=warmup))
                measured += len(chunk)
                written = write_table(LatencyTable(meta, dict(entries), profile.text_encoder, profile.vae_decoder),
                                      table_dir=table_dir)
                bar.update(len(chunk))
            todo = []
        for key in todo:
            for attempt in range(retries + 1):
                try:
                    timing = measure_kernel(key, profile=profile, space=space, remote=session, repeat=repeat,
                                            min_repeat_ms=min_repeat_ms, warmup=warmup)
                    break
                except Exception as exc:  # only remote failures are retried
                    if session is None:
                        raise
                    if attempt == retries:
                        raise DeviceDroppedError(
                            f"device {remote_key!r} at {tracker} failed on {key.describe()} after {retries + 1} "
                            f"tries ({exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                            f"{len(entries)} entries are saved, rerun the same command to resume") from None
                    time.sleep(min(2.0 * (attempt + 1), 10.0))
                    assert tracker is not None  # a session is only made with a tracker
                    try:
                        session = connect_tracker(tracker, remote_key)
                    except TrackerError as lost:
                        raise DeviceDroppedError(f"{lost}; {len(entries)} entries are saved, rerun the same "
                                                 f"command to resume") from None
            entries[key] = timing
            measured += 1
            written = write_table(LatencyTable(meta, dict(entries), profile.text_encoder, profile.vae_decoder),
                                  table_dir=table_dir)
            bar.update(1)
    finally:
        bar.close()
    table = LatencyTable(meta, entries, profile.text_encoder, profile.vae_decoder)
    return BuildReport(table, measured, kept, discarded, time.perf_counter() - start, written, note)


def _measure_chunk(keys: Sequence[KernelKey], profile: DeviceProfile, space: SearchSpace, *, jobs: int,
                   repeat: int, min_repeat_ms: int, warmup: int) -> dict[KernelKey, Timing]:
    """Compile `keys` into shared libraries (`jobs` processes), then time them together."""
    with tempfile.TemporaryDirectory(prefix="hwnas-lut-") as tmp:
        libs: dict[int, Path] = dict(run_parallel(
            compile_kernel_library,
            [(k, space, profile.target, profile.threads, Path(tmp) / f"k{i}.so") for i, k in enumerate(keys)],
            jobs=jobs))
        calls = [load_local(libs[i], kernel_module(k, space)[1], threads=profile.threads, warmup=warmup)
                 for i, k in enumerate(keys)]
        return dict(zip(keys, time_interleaved(calls, repeat=repeat, min_repeat_ms=min_repeat_ms)))


def _progress(total: int, *, initial: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar on stderr (updates at most every few seconds when stderr is not a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, file=sys.stderr, unit="kernel",
                mininterval=0.5 if sys.stderr.isatty() else 20.0, dynamic_ncols=True)
