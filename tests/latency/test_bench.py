"""Kernel modules and TVM measurement (tiny key sets); builds are tested in test_build.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from hwnas.latency import KernelKey, Timing, kernels, load_profile
from hwnas.latency.blocks import kernel_module
from hwnas.model import StaticDiT, example_inputs
from hwnas.space import SearchSpace, StageConfig, SubnetConfig

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/shapes-32.toml"
PROFILES = ROOT / "device_profiles"


def _tvm() -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install -e '.[tvm]')")


def test_kernel_modules_run_with_expected_shapes(space: SearchSpace, keys: dict[str, KernelKey]) -> None:
    """Every kind builds, runs in torch, and returns the op's output shape."""
    for name, key in keys.items():
        module, args = kernel_module(key, space)
        with torch.no_grad():
            out = module(*args)
        op = key.op
        if op.kind == "final":
            side = space.latent_size
            assert out.shape == (1, op.channels, side, side), name
        elif op.kind == "stage_mod":
            assert out.shape == (1, op.chunks, op.dim), name
        elif op.kind == "time_embed":
            assert out.shape == (1, op.dim), name
        else:
            assert out.shape == (1, op.tokens, op.dim), name
        assert torch.isfinite(out).all(), name


def test_kernel_modules_in_op_order_are_the_static_model(space: SearchSpace) -> None:
    """Given a `StaticDiT`'s weights, its kernels run one after another compute its step."""
    cfg = SubnetConfig(down=StageConfig(0.5, 2, 2, "assa", 1), middle=StageConfig(0.75, 4, 3, "full"),
                       up=StageConfig(0.625, 6, 4, "global"))
    torch.manual_seed(0)
    static = StaticDiT(space, cfg).eval()
    with torch.no_grad():
        for p in static.parameters():
            p.normal_(0, 0.1)
    layers = [static.patch_embed, static.time_mlp, *static.stage_mod.values(), static.final_mod,
              *static.down_blocks, static.downsample, *static.middle_blocks, static.upsample, *static.up_blocks]
    modules = [kernel_module(k, space)[0] for k in kernels(cfg, space, precision="fp32")]
    for module, layer in zip(modules, layers):
        next(module.children()).load_state_dict(layer.state_dict())
    modules[-1].linear.load_state_dict(static.final_linear.state_dict())
    with torch.no_grad():
        modules[-1].table.copy_(static.final_table)
    patch, time, *mods, final_mod = modules[:6]
    down = modules[6 : 6 + cfg.down.depth]
    downsample, middle = modules[6 + cfg.down.depth], modules[7 + cfg.down.depth : -cfg.up.depth - 2]
    upsample, up, final = modules[-cfg.up.depth - 2], modules[-cfg.up.depth - 1 : -1], modules[-1]

    x, t, text, mask = example_inputs(space)
    with torch.no_grad():
        cond = time(t)
        h, skips = patch(x), []
        for block in down:
            skips.append(h := block(h, mods[0](cond), text, mask))
        h = downsample(h)
        for block in middle:
            h = block(h, mods[1](cond), text, mask)
        h = upsample(h)
        for j, block in enumerate(up):
            h = block(h, mods[2](cond), text, mask, *([skips[-1 - j]] if j < len(skips) else []))
        torch.testing.assert_close(final(h, final_mod(cond)), static(x, t, text, mask), rtol=0, atol=1e-5)


def test_kernel_module_rejects_other_precisions(space: SearchSpace, keys: dict[str, KernelKey]) -> None:
    with pytest.raises(ValueError, match="fp32 only"):
        kernel_module(KernelKey(keys["final"].op, "fp16"), space)


@pytest.mark.tvm
def test_tvm_import_and_json_round_trip() -> None:
    """Import + IR JSON round trip (tvm-ffi 0.1.15.post2 segfaults in IR serialisation)."""
    _tvm()
    import tvm

    from hwnas.latency.bench import export_relax

    mod = export_relax(torch.nn.Linear(8, 4), (torch.randn(2, 8),))
    text = tvm.ir.save_json(mod)
    assert tvm.ir.save_json(tvm.ir.load_json(text)) == text and "main" in text


@pytest.mark.tvm
def test_compiled_block_matches_torch_and_timing_is_sane(space: SearchSpace, keys: dict[str, KernelKey]) -> None:
    _tvm()
    import numpy as np
    import tvm
    from tvm import relax

    from hwnas.latency.bench import _time_executable, compile_module

    prof = load_profile("host", profile_dir=PROFILES)
    module, args = kernel_module(keys["up_block_skip"], space)
    ex = compile_module(module, args, target=prof.target)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a.numpy()) for a in args])
    out = out if hasattr(out, "numpy") else out[0]  # the torch frontend returns a tuple
    with torch.no_grad():
        ref = module(*args).numpy()
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-4, rtol=1e-4)
    timing = _time_executable(ex, args, remote=None, repeat=12, min_repeat_ms=1, warmup=2, threads=prof.threads)
    assert isinstance(timing, Timing) and timing.source == "measured" and timing.n == 12
    assert 0 < timing.p10_ms <= timing.median_ms <= timing.p90_ms < 1000
    assert 0 <= timing.cv < 5


def test_interleaved_timing_ignores_a_burst_in_one_round() -> None:
    """A call slowed 3x in one of five rounds keeps its median; the burst shows in its CV only."""
    from hwnas.latency.bench import time_interleaved

    state = {"calls": 0}

    def busy(ms: float) -> None:
        end = time.thread_time() + ms / 1e3
        while time.thread_time() < end:
            pass

    def bursty() -> None:
        state["calls"] += 1
        busy(6.0 if 9 <= state["calls"] <= 12 else 2.0)  # 1 calibration call, then 2 repeats per round

    steady, burst = time_interleaved([(lambda: busy(1.0), []), (bursty, [])], repeat=10, min_repeat_ms=1, rounds=5)
    assert steady.n == burst.n == 10
    assert steady.median_ms == pytest.approx(1.0, rel=0.3) and burst.median_ms == pytest.approx(2.0, rel=0.3)
    assert burst.p90_ms > 1.5 * burst.median_ms and burst.cv > steady.cv
