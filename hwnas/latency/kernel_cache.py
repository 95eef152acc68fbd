"""Compiled kernels for measured LUTs: many kernels per shared library, cached on disk by what determines them.

A group of kernels is exported together: one `export_relax` of all their modules side by side, whose
Relax `main` is then cut into one function per kernel, each structurally equal to the kernel's own
export (what `bench.measure_kernel` compiles; tests check it). torch.export and its decompositions
cost ~0.2 s per call before the first op, so one call per group instead of per kernel saves that.
The functions go into one Relax IRModule (kernel i's is `k{i}`), compiled once with
`bench.compile_relax` for the profile's target. TVM's block
builder keeps one copy of structurally equal TensorIR functions, so kernels that share a layer
shape share its compiled code, and scheduling, LLVM and the linker run once per group instead of
once per kernel (compile CPU time per Up-block kernel about 7x lower with 16 per group on shapes-32;
`benchmarks/lut_build.py` measures it). Every function computes what the kernel's own executable
computes (tests compare outputs bit for bit).

The cache is a folder (`DEFAULT_KERNEL_CACHE`, or `hwnas lut build --cache DIR`) of
`<group>.so` (`.tar` where the host cannot link for the target) and `<group>.json`, which maps each
kernel's digest to its function. `kernel_digest` hashes everything the compiled code depends on: the
kernel's key, the experiment's `[model]` section and, for blocks, its stage's choices, the target, the
thread count, the TVM version and the code hash of `COMPILE_CODE_FILES`. Kernels are shared across
sub-DiTs, rebuilds and experiments whose `[model]` sections agree; a change to any of these compiles
afresh. Clearing it is deleting the folder.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwnas.io import atomic_write_json, sha256_bytes
from hwnas.latency.kernels import KernelKey, key_to_row
from hwnas.latency.table import KERNEL_CODE_FILES, code_hash, tvm_version
from hwnas.space import STAGES, SearchSpace

MEASURED_CODE_FILES: tuple[str, ...] = (
    *KERNEL_CODE_FILES, "latency/blocks.py", "latency/bench.py", "model/static.py", "model/attention.py",
    "model/ops.py", "model/forward.py", "latency/schedule.py",
)
"""Files a measured table depends on: the kernels' cost and shapes, the modules timed, the bench path."""

COMPILE_CODE_FILES: tuple[str, ...] = (*MEASURED_CODE_FILES, "latency/kernel_cache.py")
"""Files a cached kernel library depends on: the measured code plus the grouping here."""

DEFAULT_KERNEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hwnas" / "kernels"
"""Where `hwnas lut build` keeps compiled kernels unless told otherwise (`--cache DIR`, `--no-cache`)."""

_MODEL_FIELDS = ("resolution", "latent_downsample", "latent_channels", "patch_size", "hidden_size", "head_dim",
                 "kv_heads", "time_dim", "text_len", "text_dim", "bna_blocks", "kv_compress")
_FORMAT = 1


@dataclass(frozen=True)
class CompiledKernel:
    """Where a kernel's compiled code is: a shared library (or object tar) and the function in it."""

    lib: Path
    func: str


def kernel_digest(key: KernelKey, space: SearchSpace, *, target: Mapping[str, Any], threads: int) -> str:
    """SHA-256 (hex) of what the kernel's compiled code depends on (see the module docstring)."""
    stage = next((s for s in STAGES if key.kind == f"{s}_block"), None)
    data = {
        "format": _FORMAT, "key": key_to_row(key),
        "model": {name: getattr(space, name) for name in _MODEL_FIELDS},
        "stage": asdict(space.stages[stage]) if stage else None,
        "target": dict(target), "threads": threads, "tvm": tvm_version(), "code": code_hash(COMPILE_CODE_FILES),
    }
    return sha256_bytes(json.dumps(data, sort_keys=True, default=list).encode())


def lookup(cache_dir: str | Path, digests: Iterable[str]) -> dict[str, CompiledKernel]:
    """The kernels among `digests` compiled in `cache_dir` already (an index whose library is gone is skipped)."""
    wanted = set(digests)
    found: dict[str, CompiledKernel] = {}
    folder = Path(cache_dir)
    if not wanted or not folder.is_dir():
        return found
    for index in sorted(folder.glob("*.json")):
        try:
            data = json.loads(index.read_text())
            lib = folder / data["lib"]
            funcs = {d: f for d, f in data["kernels"].items() if d in wanted}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a torn or foreign file: its kernels are compiled again
        if funcs and data.get("format") == _FORMAT and lib.is_file():
            found.update({d: CompiledKernel(lib, f) for d, f in funcs.items()})
    return found


def compile_group(keys: Sequence[KernelKey], space: SearchSpace, target: dict[str, Any], threads: int,
                  digests: Sequence[str], out_dir: Path) -> dict[str, CompiledKernel]:
    """Compile `keys` into one library in `out_dir` and index it there; returns {digest: where}.

    The library is written under a temporary name and renamed, then its index written (both
    atomically), so a killed build leaves no index pointing at a torn library.
    """
    import tvm

    from hwnas.latency.bench import compile_relax

    if len(keys) != len(digests) or not keys:
        raise ValueError(f"need one digest per kernel and at least one kernel, got {len(keys)} and {len(digests)}")
    funcs = {tvm.ir.GlobalVar(f"k{i}"): f.with_attr("global_symbol", f"k{i}")
             for i, f in enumerate(export_group(keys, space))}
    ex = compile_relax(tvm.IRModule(funcs), target=target, threads=threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = uuid.uuid4().hex
    lib = _export(ex, out_dir, stem)
    atomic_write_json(out_dir / f"{stem}.json", {
        "format": _FORMAT, "lib": lib.name, "tvm": tvm_version(), "target": target, "threads": threads,
        "kernels": {d: f"k{i}" for i, d in enumerate(digests)},
        "describe": {f"k{i}": k.describe() for i, k in enumerate(keys)},
    })
    return {d: CompiledKernel(lib, f"k{i}") for i, d in enumerate(digests)}


class _SideBySide(nn.Module):
    """Kernel modules next to each other: `forward(*inputs of each, concatenated)` -> their outputs."""

    def __init__(self, modules: Sequence[nn.Module], counts: Sequence[int]) -> None:
        super().__init__()
        self.kernels, self.counts = nn.ModuleList(modules), tuple(counts)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs, at = [], 0
        for module, n in zip(self.kernels, self.counts):
            outs.append(module(*args[at:at + n]))
            at += n
        return tuple(outs)


def export_group(keys: Sequence[KernelKey], space: SearchSpace) -> list[Any]:
    """Each kernel's Relax `main`, structurally equal to `export_relax(*kernel_module(key, space))["main"]`,
    from one export of all of them: the combined function's bindings are cut into each output's slice."""
    from tvm import relax

    from hwnas.latency.bench import export_relax
    from hwnas.latency.blocks import kernel_module

    built = [kernel_module(k, space) for k in keys]
    counts = [len(args) for _, args in built]
    main = export_relax(_SideBySide([m for m, _ in built], counts), tuple(a for _, args in built for a in args))["main"]
    (block,) = main.body.blocks
    bindings = list(block.bindings)
    ret = main.body.body
    outputs = next((b.value for b in bindings if b.var.same_as(ret)), ret).fields
    if len(outputs) != len(keys):
        raise ValueError(f"the export of {len(keys)} kernels returned {len(outputs)} outputs")
    funcs, at = [], 0
    for out, n in zip(outputs, counts):
        needed, keep = {out}, []
        for b in reversed(bindings):
            if b.var in needed:
                keep.append(b)
                needed.update(relax.analysis.free_vars(b.value))
        gv = relax.Var("gv", relax.TupleType([out.ty]))
        body = relax.SeqExpr([relax.DataflowBlock([*reversed(keep), relax.VarBinding(gv, relax.Tuple([out]))])], gv)
        func = relax.Function(list(main.params[at:at + n]), body, gv.ty, main.is_pure, main.attrs)
        funcs.append(relax.utils.copy_with_new_vars(func))  # a variable is bound once per module
        at += n
    return funcs


def _export(ex: Any, out_dir: Path, stem: str) -> Path:
    """Write `ex` as `<stem>.so`, or `<stem>.tar` (objects the device links) where the host cannot link it."""
    partial = out_dir / f".{stem}.partial.so"
    try:
        ex.export_library(str(partial))
        final = out_dir / f"{stem}.so"
    except Exception:  # noqa: BLE001 - no host linker for a cross target: ship objects
        from tvm.contrib import tar

        partial.unlink(missing_ok=True)
        partial = out_dir / f".{stem}.partial.tar"
        ex.export_library(str(partial), fcompile=tar.tar)
        final = out_dir / f"{stem}.tar"
    os.replace(partial, final)
    return final


def load_library(lib: Path, kernels: Sequence[tuple[str, tuple[Any, ...]]], *, threads: int, warmup: int
                 ) -> tuple[Any, list[tuple[Any, list[Any]]]]:
    """`(vm, [(function, inputs)])` on this machine for each `(function name, torch inputs)` of one library,
    each function warmed up."""
    import tvm
    from tvm import relax

    from hwnas.latency.bench import set_local_threads

    set_local_threads(threads)
    dev = tvm.cpu()
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), dev)
    calls = []
    for name, args in kernels:
        func = vm[name]
        inputs = [tvm.runtime.tensor(a.detach().cpu().numpy(), dev) for a in args]
        for _ in range(warmup):
            func(*inputs)
        calls.append((func, inputs))
    return vm, calls
