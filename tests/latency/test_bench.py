"""Kernel modules, TVM measurement, and resumable / retrying measured LUT builds (tiny key sets)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from hwnas.latency import KernelKey, Timing, enumerate_kernels, kernels, load_profile, load_table
from hwnas.latency.blocks import kernel_module
from hwnas.model import StaticDiT, example_inputs
from hwnas.space import SearchSpace, StageConfig, SubnetConfig, load_space

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/shapes-32.toml"
PROFILES = ROOT / "device_profiles"


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return load_space(ROOT / EXPERIMENT)


@pytest.fixture(scope="module")
def keys(space: SearchSpace) -> dict[str, KernelKey]:
    """The first kernel of each kind of shapes-32, plus an Up block that fuses a long skip."""
    out: dict[str, KernelKey] = {}
    for k in enumerate_kernels(space, precisions=("fp32",)):
        out.setdefault(k.kind, k)
        if k.kind == "up_block" and k.op.skip_dim:
            out.setdefault("up_block_skip", k)
    return out


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


@pytest.mark.tvm
def test_build_is_resumable_after_an_interrupt(space: SearchSpace, keys: dict[str, KernelKey], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupt a build after its first kernel; the rerun keeps it and measures only the rest."""
    _tvm()
    from hwnas.latency import build

    prof = load_profile("host", profile_dir=PROFILES)
    chosen = [keys["stage_mod"], keys["final"]]
    monkeypatch.setattr(build, "CHUNK", 1)  # local builds measure chunk by chunk
    real = build._measure_chunk
    calls: list[KernelKey] = []

    def interrupted(chunk: list[KernelKey], *args: object, **kw: object) -> dict[KernelKey, Timing]:
        if calls:
            raise KeyboardInterrupt
        calls.extend(chunk)
        return real(chunk, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(build, "_measure_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build.build_measured_table(prof, space, experiment_path=EXPERIMENT, table_dir=tmp_path, keys=chosen,
                                   repeat=5, progress=False)
    first = load_table(prof, space.name, table_dir=tmp_path, profile_dir=PROFILES)
    assert set(first.entries) == {chosen[0]} and first.meta.source == "measured"
    assert first.meta.host_cpu and first.meta.threads == prof.threads and first.meta.tvm_version
    assert first.entries[chosen[0]].n == 5 and "rounds interleaved" in first.meta.calibration

    monkeypatch.setattr(build, "_measure_chunk",
                        lambda chunk, *a, **kw: {k: Timing(0.5, 0.4, 0.6, 0.1, 5, "measured") for k in chunk})
    rep = build.build_measured_table(prof, space, experiment_path=EXPERIMENT, table_dir=tmp_path, keys=chosen,
                                     repeat=5, progress=False)
    assert (rep.measured, rep.kept, rep.discarded) == (1, 1, 0)
    again = load_table(prof, space.name, table_dir=tmp_path, profile_dir=PROFILES)
    assert again.entries[chosen[0]] == first.entries[chosen[0]] and len(again.entries) == 2

    monkeypatch.setattr(build, "code_hash", lambda files: "0" * 16)  # kernel code changed: start afresh
    monkeypatch.setattr(build, "CHUNK", 64)
    rep = build.build_measured_table(prof, space, experiment_path=EXPERIMENT, table_dir=tmp_path, keys=chosen,
                                     repeat=5, progress=False)
    assert rep.discarded == 2 and rep.measured == 2 and "code hash changed" in rep.note


def test_remote_device_that_drops_is_retried_then_resumable(space: SearchSpace, keys: dict[str, KernelKey],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing remote kernel is retried with a fresh session; a device that stays down stops the build with
    the entries so far saved (no TVM needed: the session and measurement are stand-ins)."""
    from hwnas.latency import build

    prof = load_profile("host", profile_dir=PROFILES)
    sessions: list[int] = []
    monkeypatch.setattr(build, "connect_tracker", lambda tracker, key: sessions.append(1) or len(sessions))
    monkeypatch.setattr(build.time, "sleep", lambda s: None)
    state = {"fail": 1}

    def flaky(key: KernelKey, **kw: object) -> Timing:
        if key == keys["final"] and state["fail"] > 0:
            state["fail"] -= 1
            raise ConnectionResetError("device went away")
        return Timing(0.5, 0.4, 0.6, 0.1, 5, "measured")

    monkeypatch.setattr(build, "measure_kernel", flaky)
    chosen = [keys["stage_mod"], keys["final"], keys["patch_embed"]]
    rep = build.build_measured_table(prof, space, experiment_path=EXPERIMENT, table_dir=tmp_path, keys=chosen,
                                     tracker="127.0.0.1:9", rpc_key="dev", retries=2, progress=False)
    assert rep.measured == 3 and len(sessions) == 2  # one reconnect
    assert rep.table.meta.host_cpu is None  # remote: the local CPU is not recorded

    more = [keys["down_block"], keys["middle_block"]]
    state["fail"] = 99
    monkeypatch.setattr(build, "measure_kernel", lambda key, **kw: (_ for _ in ()).throw(OSError("gone"))
                        if key == more[1] else Timing(0.5, 0.4, 0.6, 0.1, 5, "measured"))
    with pytest.raises(build.DeviceDroppedError, match="rerun the same command to resume"):
        build.build_measured_table(prof, space, experiment_path=EXPERIMENT, table_dir=tmp_path,
                                   keys=chosen + more, tracker="127.0.0.1:9", rpc_key="dev", retries=1,
                                   progress=False)
    csv_rows = (tmp_path / "host" / "shapes-32.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 4  # header + the 3 earlier entries + down_block


def test_local_build_of_a_remote_only_device_is_refused(space: SearchSpace, tmp_path: Path) -> None:
    from hwnas.latency.build import build_measured_table

    pixel = load_profile("pixel8-cpu", profile_dir=PROFILES)
    with pytest.raises(ValueError, match="not this machine.*--tracker"):
        build_measured_table(pixel, space, experiment_path=EXPERIMENT, table_dir=tmp_path, keys=[])


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
