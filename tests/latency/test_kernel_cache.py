"""The compiled-kernel cache: digests say when kernels may be shared; grouped libraries compute what each
kernel's own executable computes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from hwnas.latency import KernelKey, enumerate_kernels, load_profile
from hwnas.latency.kernel_cache import kernel_digest, lookup
from hwnas.space import SearchSpace, load_space

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "device_profiles"


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return load_space(ROOT / "experiments" / "shapes-32.toml")


@pytest.fixture(scope="module")
def up(space: SearchSpace) -> KernelKey:
    return next(k for k in enumerate_kernels(space, precisions=("fp32",)) if k.kind == "up_block" and k.op.skip_dim)


TARGET = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}


def _stage(space: SearchSpace, stage: str, **change: object) -> SearchSpace:
    return dataclasses.replace(space, stages={**space.stages, stage: dataclasses.replace(space.stages[stage],
                                                                                          **change)})


def test_digest_is_stable_and_shared_where_the_kernel_is_the_same(space: SearchSpace, up: KernelKey) -> None:
    d = kernel_digest(up, space, target=TARGET, threads=1)
    assert d == kernel_digest(up, load_space(ROOT / "experiments" / "shapes-32.toml"), target=TARGET, threads=1)
    assert len(d) == 64 and int(d, 16) >= 0
    other_stage = _stage(space, "down", depth=(2, 4))  # another experiment, same Up stage and model
    assert kernel_digest(up, dataclasses.replace(other_stage, name="other"), target=TARGET, threads=1) == d


@pytest.mark.parametrize("change", ["target", "threads", "model", "own stage", "key"])
def test_digest_changes_with_what_the_compiled_code_depends_on(space: SearchSpace, up: KernelKey,
                                                              change: str) -> None:
    d = kernel_digest(up, space, target=TARGET, threads=1)
    target, threads, key = TARGET, 1, up
    if change == "target":
        target = {**TARGET, "mcpu": "skylake-avx512"}
    elif change == "threads":
        threads = 2
    elif change == "model":
        space = dataclasses.replace(space, text_len=16)
    elif change == "own stage":
        space = _stage(space, "up", depth=(6, 8))
    else:
        key = KernelKey(dataclasses.replace(up.op, ffn_ratio=up.op.ffn_ratio + 1), "fp32")
    assert kernel_digest(key, space, target=target, threads=threads) != d


def test_lookup_skips_torn_indexes_and_missing_libraries(tmp_path: Path) -> None:
    (tmp_path / "a.so").write_bytes(b"\x7fELF")
    (tmp_path / "a.json").write_text(json.dumps({"format": 1, "lib": "a.so", "kernels": {"d1": "k0", "d2": "k1"}}))
    (tmp_path / "b.json").write_text(json.dumps({"format": 1, "lib": "b.so", "kernels": {"d3": "k0"}}))  # no b.so
    (tmp_path / "c.json").write_text('{"format": 1, "lib": "a.so", "kern')  # torn
    (tmp_path / "d.json").write_text(json.dumps({"format": 99, "lib": "a.so", "kernels": {"d4": "k0"}}))
    found = lookup(tmp_path, ["d1", "d3", "d4", "d5"])
    assert set(found) == {"d1"} and found["d1"].lib == tmp_path / "a.so" and found["d1"].func == "k0"
    assert lookup(tmp_path / "missing", ["d1"]) == {}


@pytest.mark.tvm
def test_one_export_of_a_group_gives_each_kernel_its_own_export(space: SearchSpace) -> None:
    """The combined export, cut per kernel, is structurally equal (constants included) to exporting each alone."""
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install -e '.[tvm]')")
    import tvm

    from hwnas.latency.bench import export_relax
    from hwnas.latency.blocks import kernel_module
    from hwnas.latency.kernel_cache import export_group

    every = enumerate_kernels(space, precisions=("fp32",))
    kinds = ("time_embed", "final", "patch_embed", "down_block", "middle_block")
    chosen = [next(k for k in every if k.kind == kind) for kind in kinds]
    chosen += [next(k for k in every if k.kind == "up_block" and k.op.skip_dim)] * 2  # the same kernel twice
    for key, func in zip(chosen, export_group(chosen, space), strict=True):
        tvm.ir.assert_structural_equal(func, export_relax(*kernel_module(key, space))["main"])


@pytest.mark.tvm
def test_grouped_library_computes_what_each_kernel_compiled_alone_computes(space: SearchSpace,
                                                                           tmp_path: Path) -> None:
    """Bit for bit: kernels of one group (sharing TensorIR functions) against each kernel's own executable."""
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install -e '.[tvm]')")
    import numpy as np
    import tvm
    from tvm import relax

    from hwnas.latency.bench import compile_module
    from hwnas.latency.blocks import kernel_module
    from hwnas.latency.kernel_cache import compile_group, load_library

    prof = load_profile("host", profile_dir=PROFILES)
    every = enumerate_kernels(space, precisions=("fp32",))
    ups = [k for k in every if k.kind == "up_block"]
    chosen = [ups[0], ups[1], next(k for k in every if k.kind == "downsample")]  # two alike blocks share code
    digests = [kernel_digest(k, space, target=prof.target, threads=1) for k in chosen]
    where = compile_group(chosen, space, prof.target, 1, digests, tmp_path)
    assert lookup(tmp_path, digests) == where and len({w.lib for w in where.values()}) == 1
    for key, d in zip(chosen, digests):
        module, args = kernel_module(key, space)
        _, [(func, inputs)] = load_library(where[d].lib, [(where[d].func, args)], threads=1, warmup=0)
        alone = relax.VirtualMachine(compile_module(module, args, target=prof.target), tvm.cpu())
        outs = [f(*inputs) for f in (func, alone["main"])]
        grouped, single = (o.numpy() if hasattr(o, "numpy") else o[0].numpy() for o in outs)
        np.testing.assert_array_equal(grouped, single)
