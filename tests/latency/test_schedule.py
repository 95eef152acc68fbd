"""Hand-written CPU schedules: same outputs as the default build and torch, and matmuls really scheduled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hwnas.latency import KernelKey, enumerate_kernels, load_profile
from hwnas.latency.blocks import kernel_module
from hwnas.space import SearchSpace

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/shapes-32.toml"
PROFILES = ROOT / "device_profiles"

pytestmark = pytest.mark.tvm


@pytest.fixture(scope="module")
def keys(space: SearchSpace) -> dict[str, KernelKey]:
    """The first kernel of each kind of shapes-32."""
    out: dict[str, KernelKey] = {}
    for k in enumerate_kernels(space, precisions=("fp32",)):
        out.setdefault(k.kind, k)
    return out


def _tvm() -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install -e '.[tvm]')")


def _fused(mod: Any, target: dict[str, Any]) -> Any:
    """`mod` after the default CPU pipeline's dispatch, legalization and fusion (what `schedule_module` sees)."""
    import tvm
    from tvm.relax.backend.cpu_generic import pipeline

    tgt = tvm.target.Target(target)
    with tgt:
        return tvm.transform.Sequential(pipeline.library_dispatch_passes(tgt) + pipeline.legalize_passes(tgt))(mod)


def _run(ex: Any, args: tuple[torch.Tensor, ...]) -> np.ndarray:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a.numpy()) for a in args])
    return (out if hasattr(out, "numpy") else out[0]).numpy()  # the torch frontend returns a tuple


@pytest.mark.parametrize(("target", "lanes"), [
    ({"kind": "llvm", "mcpu": "znver4", "num-cores": 2}, 16),
    ({"kind": "llvm", "mcpu": "haswell"}, 8),
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}, 4),
])
def test_vector_lanes_follow_the_target_isa(target: dict[str, Any], lanes: int) -> None:
    _tvm()
    from hwnas.latency.schedule import vector_lanes

    assert vector_lanes(target) == lanes


@pytest.mark.parametrize("kind", ["final", "upsample"])
def test_scheduled_block_matches_default_build_and_torch(space: SearchSpace, keys: dict[str, KernelKey],
                                                         kind: str) -> None:
    """A Linear + epilogue (final) and a transposed conv (upsample) are scheduled and compute the same."""
    _tvm()
    from hwnas.latency.bench import compile_relax, export_relax
    from hwnas.latency.schedule import compile_relax_scheduled, schedule_module

    target = load_profile("host", profile_dir=PROFILES).target
    module, args = kernel_module(keys[kind], space)
    mod = export_relax(module, args)
    _, report = schedule_module(_fused(mod, target), target=target)
    assert report.matmul and not report.failed, report
    with torch.no_grad():
        ref = module(*args).numpy()
    default = _run(compile_relax(mod, target=target, schedule=False), args)
    scheduled = _run(compile_relax_scheduled(mod, target=target), args)
    scale = float(np.abs(default).max())
    assert np.abs(scheduled - default).max() <= 1e-4 * scale
    np.testing.assert_allclose(scheduled, ref, atol=1e-4 * scale, rtol=1e-4)


def test_unmatched_functions_are_left_unscheduled() -> None:
    """Layer norm has reductions but no matmul: neither scheduled as one nor reported as failed."""
    _tvm()
    from hwnas.latency.bench import export_relax
    from hwnas.latency.schedule import schedule_module

    target = {"kind": "llvm", "mcpu": "znver4"}
    mod = _fused(export_relax(torch.nn.LayerNorm(24), (torch.randn(1, 8, 24),)), target)
    scheduled, report = schedule_module(mod, target=target)
    assert report.matmul == () and report.failed == ()
    names = {gv.name_hint for gv, _ in mod.functions_items()}
    assert names == {gv.name_hint for gv, _ in scheduled.functions_items()}



HASWELL_FLAGS = {"avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "abm", "popcnt", "sse4_2"}
"""/proc/cpuinfo flags of the instructions LLVM's `haswell` may emit (`abm` is LZCNT)."""


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        return set()


@pytest.mark.parametrize("target", [
    pytest.param({"kind": "llvm"}, id="generic"),
    pytest.param({"kind": "llvm", "mcpu": "haswell"}, id="haswell-avx2"),
    pytest.param(None, id="host-profile"),
])
def test_portable_targets_build_and_match_torch(space: SearchSpace, keys: dict[str, KernelKey],
                                                target: dict[str, Any] | None) -> None:
    """Code built for a generic target, for AVX2 only, or for the detected CPU runs here and computes
    what torch does. Run only where this CPU can execute it: nothing runs code for another CPU."""
    _tvm()
    from hwnas.latency.bench import export_relax
    from hwnas.latency.schedule import compile_relax_scheduled

    if target is None:
        target = load_profile("host", profile_dir=PROFILES).target
    elif target.get("mcpu") == "haswell" and not HASWELL_FLAGS <= _cpu_flags():
        pytest.skip(f"this CPU lacks {sorted(HASWELL_FLAGS - _cpu_flags())}: cannot run haswell code")
    module, args = kernel_module(keys["final"], space)
    with torch.no_grad():
        ref = module(*args).numpy()
    out = _run(compile_relax_scheduled(export_relax(module, args), target=target), args)
    scale = float(np.abs(ref).max())
    np.testing.assert_allclose(out, ref, atol=1e-4 * scale, rtol=1e-4)
