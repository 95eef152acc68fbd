"""Hand-written CPU schedules for the fused TensorIR of a Relax module (no tuning, milliseconds to apply).

`tvm.compile`'s default build for CPU legalizes every op into its own unscheduled loop nest (no fusion),
so a matmul runs as a scalar triple loop. `scheduled_pipeline` adds operator fusion (FuseOps, FuseTIR)
and then, per PrimFunc (`schedule_module`):

* matmul-like blocks, `C[b.., i, j] += X[.., k] * Y[.., k, j]` (linear / matmul / batched attention
  matmuls, and convolutions whose output width has input stride <= 2: conv2d_transpose of Upsample,
  the stride-2 Downsample conv), with any fused epilogue after them: split j into (j_outer, j_vec_tiles,
  lanes) and i into (i_outer, i_tile), reorder to `b.., j_outer, i_outer, k.., i_tile, j_vec_tiles,
  lanes`, accumulate the `i_tile x (j_vec_tiles * lanes)` tile in a local buffer (`cache_write`, kept in
  vector registers by LLVM), vectorize the lanes, unroll the tile, split off the zero-init
  (`decompose_reduction`), inline an elementwise epilogue (bias add) into the tile's write-back, and pack
  the operand that carries j into a contiguous `K x tile` panel per j_outer when its K x N slab exceeds
  `_PACK_MIN_BYTES`; with `threads` > 1 the outermost tile loop runs in parallel;
* every other block without a reduction (elementwise / injective, not bool): vectorize the innermost loop
  where a vector width (lanes, lanes / 2, ..., 4) divides its extent.

Left as they are: layer norm / softmax / max reductions, matmuls whose j extent has no divisor >= 4
(the ASSA gate, N = heads = 3), the stride-4 patch-embedding conv, bool blocks. A function whose
schedule raises keeps its unscheduled body (`ScheduleReport.failed`), and a module whose scheduled build
fails raises (a latency table must not mix compilers silently).
`compile_relax_scheduled` mirrors `hwnas.latency.bench.compile_relax` with the schedule.

    ex = compile_relax_scheduled(export_relax(module, args), target=profile.target)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_ISA_LANES = (("avx512f", 16), ("avx2", 8), ("avx", 8), ("sse2", 4), ("neon", 4), ("asimd", 4))
"""fp32 lanes per vector register by CPU feature, widest first."""

_ROW_TILES = (8, 6, 4, 3, 2, 1)
"""Rows of the register tile (unrolled), largest dividing the row extent first."""

_MAX_COL_STRIDE = 2
"""Largest input stride of the vectorized output axis (a stride-4 patch-embedding conv measured 1.3x slower
gathered than scalar, the stride-2 downsample conv 3.9x faster)."""

_PACK_MIN_BYTES = 1 << 18
"""Pack the j-carrying operand when its K x N fp32 slab exceeds this (256 KiB, about half an L2)."""


@dataclass(frozen=True)
class ScheduleReport:
    """Which PrimFuncs `schedule_module` changed: matmul-scheduled, only vectorized, or failed (kept as is)."""

    matmul: tuple[str, ...]
    vectorized: tuple[str, ...]
    failed: tuple[str, ...]


@dataclass(frozen=True)
class _Matmul:
    """Loop roles of a matmul-like block `C[b.., i, j] += X * Y` as positions in its loop nest; `extents` per loop."""

    batch: tuple[int, ...]
    row: int | None
    col: int
    reduce: tuple[int, ...]
    extents: tuple[int, ...]
    col_operand: int  # read-buffer index of the operand that carries j (packed when large)


# Target ---------------------------------------------------------------------------------------


def vector_lanes(target: dict[str, Any]) -> int:
    """fp32 lanes of the widest vector unit the `target` dict's LLVM mcpu / mattr enable (16 with AVX-512)."""
    import tvm
    from tvm.target import codegen

    tgt = tvm.target.Target(target)
    for feature, lanes in _ISA_LANES:
        try:
            if codegen.target_has_features(feature, tgt):
                return lanes
        except Exception:  # noqa: BLE001, S112 - a feature name unknown to this target's LLVM backend
            continue
    return 4


# Matching -------------------------------------------------------------------------------------


def _loop_positions(sch: Any, block: Any) -> list[int] | None:
    """Loop position of each block iter var when each is bound to exactly one of its loops, else None."""
    from tvm import tirx

    loops = sch.get_loops(block)
    loop_vars = [sch.get(lp).loop_var for lp in loops]
    realize = _block_realize(sch, block)
    if realize is None or len(realize.iter_values) != len(loops):
        return None
    positions = []
    for value in realize.iter_values:
        pos = _position(value, loop_vars)
        if not isinstance(value, tirx.Var) or pos is None:
            return None
        positions.append(pos)
    return positions


def _block_realize(sch: Any, block: Any) -> Any | None:
    """The SBlockRealize around `block` (its iter bindings): the body of its innermost loop."""
    loops = sch.get_loops(block)
    if not loops:
        return None
    body = sch.get(loops[-1]).body
    return body if hasattr(body, "iter_values") and body.block.same_as(sch.get(block)) else None


def _position(expr: Any, variables: list[Any]) -> int | None:
    """Index of `expr` in `variables` by identity (`==` on TIR vars builds an expression, so no `in`)."""
    return next((n for n, v in enumerate(variables) if expr.same_as(v)), None)


def _index_vars(expr: Any, variables: list[Any]) -> tuple[int, ...] | None:
    """Positions in `variables` of an index `v`, `v + w` or `v * s + w` (a conv window; s a constant stride)."""
    from tvm import tirx

    if isinstance(expr, tirx.Add):
        a, b = _index_vars(expr.a, variables), _index_vars(expr.b, variables)
        return None if a is None or b is None or len(a) + len(b) > 2 else a + b
    if isinstance(expr, tirx.Mul) and isinstance(expr.b, tirx.IntImm):
        return _index_vars(expr.a, variables)
    a = _position(expr, variables)
    return None if a is None else (a,)


def _stride(expr: Any, var: Any) -> int:
    """Coefficient of `var` in an index matched by `_index_vars` (0 when absent)."""
    from tvm import tirx

    if isinstance(expr, tirx.Add):
        return _stride(expr.a, var) + _stride(expr.b, var)
    if isinstance(expr, tirx.Mul):
        return int(expr.b.value) * _stride(expr.a, var)
    return 1 if expr.same_as(var) else 0


def _match_matmul(sch: Any, block: Any) -> _Matmul | None:
    """Loop roles when `block` is `C[s..] = C[s..] + X[..] * Y[..]`, indices plain variables (C) or `v` / `v + w`
    (X, Y: `v`, `v + w`, `v * s + w`, so convolutions match too), j = C's last index in the last index of one
    operand only (strided there for a strided conv: gathered loads); else None."""
    from tvm import ir, tirx

    stmt = sch.get(block)
    if stmt.init is None or len(stmt.writes) != 1 or not isinstance(stmt.body, tirx.BufferStore):
        return None
    pos = _loop_positions(sch, block)
    if pos is None:
        return None
    store, value = stmt.body, stmt.body.value
    if not isinstance(value, tirx.Add):
        return None
    acc, prod = (value.a, value.b) if isinstance(value.a, ir.TensorLoad) else (value.b, value.a)
    if not (isinstance(acc, ir.TensorLoad) and acc.source.same_as(store.buffer) and isinstance(prod, tirx.Mul)):
        return None
    operands = [prod.a, prod.b]
    if not all(isinstance(o, ir.TensorLoad) for o in operands) or store.buffer.dtype != "float32":
        return None
    iter_vars = [iv.var for iv in stmt.iter_vars]
    spatial = {n for n, iv in enumerate(stmt.iter_vars) if iv.iter_type == 0}
    reduce = {n for n, iv in enumerate(stmt.iter_vars) if iv.iter_type == 2}
    out = [_position(e, iter_vars) for e in store.indices]
    if not out or None in out or not reduce or len(spatial) + len(reduce) != len(iter_vars) or set(out) != spatial:
        return None
    col, col_operand = out[-1], -1
    for n, load in enumerate(operands):
        idx = [_index_vars(e, iter_vars) for e in load.indices]
        if any(v is None for v in idx) or not reduce <= {p for v in idx for p in v}:
            return None
        if any(col in v for v in idx):
            if (col not in idx[-1] or any(col in v for v in idx[:-1]) or col_operand >= 0
                    or _stride(load.indices[-1], iter_vars[col]) > _MAX_COL_STRIDE):
                return None  # j must be in the last index of exactly one operand, at most stride 2
            col_operand = n
    if col_operand < 0:
        return None
    col_buffer = operands[col_operand].source  # TVM 0.27: loads and regions name their buffer `source`
    read_index = next((n for n, r in enumerate(stmt.reads) if r.source.same_as(col_buffer)), -1)
    extents = tuple(int(sch.get(lp).extent) for lp in sch.get_loops(block))
    return _Matmul(batch=tuple(pos[v] for v in out[:-2]), row=pos[out[-2]] if len(out) >= 2 else None,
                   col=pos[col], reduce=tuple(pos[r] for r in sorted(reduce)), extents=extents,
                   col_operand=read_index)


# Scheduling -----------------------------------------------------------------------------------


def _divisor(extent: int, candidates: tuple[int, ...]) -> int | None:
    return next((c for c in candidates if c <= extent and extent % c == 0), None)


def _lane_candidates(lanes: int) -> tuple[int, ...]:
    """lanes, lanes / 2, ..., 4: vector widths to try, widest first."""
    out = []
    while lanes >= 4:
        out.append(lanes)
        lanes //= 2
    return tuple(out)


def _schedule_matmul(sch: Any, block: Any, m: _Matmul, *, lanes: int, threads: int) -> bool:
    """Register-tile `block` (see the module docstring); False (schedule untouched) when j has no vector width."""
    vec = _divisor(m.extents[m.col], _lane_candidates(lanes))
    if vec is None:
        return False
    col_vecs = 2 if m.extents[m.col] % (2 * vec) == 0 else 1
    rows = _divisor(m.extents[m.row], _ROW_TILES) if m.row is not None else 1
    consumers = sch.get_consumers(block)
    acc = sch.cache_write(block, 0, "local")
    loops = sch.get_loops(block)
    j_out, j_vec, j_lane = sch.split(loops[m.col], factors=[None, col_vecs, vec])
    if m.row is not None:
        i_out, i_in = sch.split(loops[m.row], factors=[None, rows])
    else:
        i_out = i_in = None
    batch = [loops[p] for p in m.batch]
    red = [loops[p] for p in m.reduce]
    outer = batch + [j_out] + ([i_out] if i_out is not None else [])
    inner = ([i_in] if i_in is not None else []) + [j_vec, j_lane]
    sch.reorder(*outer, *red, *inner)
    k_size = 1
    for p in m.reduce:
        k_size *= m.extents[p]
    if k_size * m.extents[m.col] * 4 > _PACK_MIN_BYTES and m.col_operand >= 0:
        _pack_panel(sch, block, m.col_operand, at=j_out, lanes=lanes)
    sch.reverse_compute_at(acc, outer[-1])
    for consumer in consumers:
        try:
            sch.reverse_compute_inline(consumer)
        except Exception:  # noqa: BLE001, S110 - not a plain elementwise epilogue: it keeps its own loops
            pass
    if i_in is not None:
        sch.unroll(i_in)
    sch.unroll(j_vec)
    # Loop kinds before decompose_reduction: after it the update block alone is no longer a "reduction block"
    # and vectorize / parallel refuse its loops (no compact dataflow).
    sch.vectorize(j_lane)
    sch.vectorize(sch.get_loops(acc)[-1])
    if threads > 1:
        sch.parallel(sch.fuse(*batch, j_out) if batch else j_out)
    sch.decompose_reduction(block, red[0])
    return True


def _pack_panel(sch: Any, block: Any, read_index: int, *, at: Any, lanes: int) -> None:
    """Copy the K x tile panel of read buffer `read_index` that one `at` iteration uses into a contiguous buffer."""
    try:
        panel = sch.cache_read(block, read_index, "global")
        sch.compute_at(panel, at)
    except Exception:  # noqa: BLE001 - an operand the primitive cannot cut into panels: read it in place
        return
    _vectorize_innermost(sch, panel, lanes=lanes)


def _vectorize_innermost(sch: Any, block: Any, *, lanes: int) -> bool:
    """Vectorize the innermost loop of `block` by the widest width dividing its extent; False if none does."""
    loops = sch.get_loops(block)
    if not loops:
        return False
    extent = int(sch.get(loops[-1]).extent)
    vec = _divisor(extent, _lane_candidates(lanes))
    if vec is None:
        return False
    inner = loops[-1] if extent == vec else sch.split(loops[-1], factors=[None, vec])[-1]
    sch.vectorize(inner)
    return True


def _is_spatial(sch: Any, block: Any) -> bool:
    """A block without reduction over numeric buffers (vectorized bool stores fail in TVM 0.27's codegen)."""
    stmt = sch.get(block)
    regions = list(stmt.reads) + list(stmt.writes)
    return (stmt.init is None and all(iv.iter_type == 0 for iv in stmt.iter_vars)
            and all(str(r.source.dtype) != "bool" for r in regions))


def _schedule_func(func: Any, *, lanes: int, threads: int) -> tuple[Any, str]:
    """(scheduled PrimFunc, "matmul" | "vectorized" | "none")."""
    import tvm

    sch = tvm.s_tir.Schedule(func)
    root = sch.get_sblock("root") if _has_root(sch) else None
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)] if root is not None else []
    done = "none"
    for name in names:
        block = _block_named(sch, name)  # an epilogue inlined into an earlier matmul is gone
        if block is None:
            continue
        m = _match_matmul(sch, block)
        if m is not None and _schedule_matmul(sch, block, m, lanes=lanes, threads=threads):
            done = "matmul"
    for block in sch.get_child_blocks(root) if root is not None else []:
        if not _is_spatial(sch, block) or _inside_vectorized(sch, block):
            continue
        if _vectorize_innermost(sch, block, lanes=lanes) and done == "none":
            done = "vectorized"
    return sch.mod["main"], done


def _block_named(sch: Any, name: str) -> Any | None:
    try:
        return sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - no (longer a) block of that name
        return None


def _has_root(sch: Any) -> bool:
    try:
        sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - a PrimFunc without the usual root block
        return False
    return True


def _inside_vectorized(sch: Any, block: Any) -> bool:
    """True when a loop around `block` is already vectorized or unrolled (part of a matmul tile)."""
    from tvm import tirx

    return any(sch.get(lp).kind != tirx.ForKind.SERIAL for lp in sch.get_loops(block))


def schedule_module(mod: Any, *, target: dict[str, Any], lanes: int | None = None,
                    threads: int = 1) -> tuple[Any, ScheduleReport]:
    """(mod with every PrimFunc scheduled, report). `lanes` defaults to `vector_lanes(target)`; `threads` > 1
    parallelizes the outermost tile loop when the target has several cores."""
    import tvm

    lanes = lanes or vector_lanes(target)
    cores = int(target.get("num-cores", 1))
    threads = min(threads, cores) if cores > 0 else threads
    out = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    kinds: dict[str, list[str]] = {"matmul": [], "vectorized": [], "failed": []}
    for gv, func in mod.functions_items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        try:
            new, kind = _schedule_func(func, lanes=lanes, threads=threads)
        except Exception:  # noqa: BLE001 - any schedule error: keep the unscheduled function
            kinds["failed"].append(gv.name_hint)
            continue
        if kind != "none":
            out[gv] = new
            kinds[kind].append(gv.name_hint)
    report = ScheduleReport(*(tuple(sorted(kinds[k])) for k in ("matmul", "vectorized", "failed")))
    return out, report


def schedule_cpu(mod: Any, *, target: dict[str, Any]) -> Any:
    """`mod` (a legalized, fused Relax IRModule) with CPU schedules on its PrimFuncs (one thread)."""
    return schedule_module(mod, target=target)[0]


# Compiling ------------------------------------------------------------------------------------


def scheduled_pipeline(target: dict[str, Any], *, threads: int = 1) -> Any:
    """The Relax CPU pipeline (`relax.backend.cpu_generic`, FoldConstant aside) with `schedule_module` between
    fusion (FuseTIR) and dataflow lowering."""
    # tvm.relax.pipeline.dataflow_lower_passes is broken for llvm in 0.27 (calls a name cpu_generic does not export)
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline

    tgt = tvm.target.Target(target)

    # FoldConstant left out: it compiles and runs one function per foldable op (the `full` fills of
    # the attention calls), 33 of the 41 s of a sub-DiT compile here, for no measurable run-time gain
    # (small preset, shapes-32: 2.94 ms without, 3.04 ms with). Linear weights arrive pre-transposed
    # (`hwnas.latency.bench.export_relax`), so there is no weight transpose left to fold.
    legalize = [p for p in pipeline.legalize_passes(tgt) if p.info.name != "FoldConstant"]

    @tvm.transform.module_pass(opt_level=0, name="HwnasScheduledPipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        with tgt:
            mod = tvm.transform.Sequential(pipeline.library_dispatch_passes(tgt) + legalize)(mod)
            mod = schedule_module(mod, target=target, threads=threads)[0]
            return tvm.transform.Sequential(pipeline.dataflow_lower_passes(tgt) + pipeline.finalize_passes(tgt))(mod)

    return _pipeline


def compile_relax_scheduled(mod: Any, *, target: dict[str, Any], threads: int = 1) -> Any:
    """`tvm.compile` of `mod` for `target` with the scheduled pipeline.

    A code-generation error propagates: falling back to the unscheduled build would mix two
    compilers in one latency table without saying so.
    """
    import tvm

    return tvm.compile(mod, target=tvm.target.Target(target), relax_pipeline=scheduled_pipeline(target, threads=threads))
