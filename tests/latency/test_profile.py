from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from hwnas.latency import list_profiles, load_profile, scaffold_profile
from hwnas.latency import profile as profile_mod
from hwnas.latency.profile import NATIVE_CPU, SOURCE_KINDS
from hwnas.latency.table import profile_hash

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "device_profiles"
SHIPPED = ("host", "pixel8", "pixel8-cpu", "iphone16promax", "galaxy-s24", "raspberry-pi-5", "jetson-orin-nano")


def test_shipped_profiles_load_with_sources() -> None:
    assert set(SHIPPED) <= set(list_profiles(PROFILES))
    for name in SHIPPED:
        p = load_profile(name, profile_dir=PROFILES)
        assert p.name == name and p.default_precision in p.peak_gflops
        figures = [*p.peak_gflops.values(), p.bandwidth_gbps, p.text_encoder.latency_ms, p.vae_decoder.latency_ms]
        for fig in figures:
            assert fig.known and fig.source.split(":")[0] in SOURCE_KINDS
        assert p.vae_decoder.resolution == 1024
    host = load_profile("host", profile_dir=PROFILES)
    assert host.local and host.peak_gflops["fp32"].source.startswith("measured")
    assert host.bandwidth_gbps.source.startswith("measured")


def test_host_profile_follows_the_running_cpu() -> None:
    """The host target is the CPU this runs on, as TVM's LLVM names it; the file never pins one."""
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install -e '.[tvm]')")
    from tvm.target import codegen

    host = load_profile("host", profile_dir=PROFILES)
    assert host.native_cpu and host.target["mcpu"] == codegen.llvm_get_system_cpu() != NATIVE_CPU
    assert host.declared_target == {**host.target, "mcpu": NATIVE_CPU}
    assert 'mcpu = "native"' in (PROFILES / "host.toml").read_text()
    for fig in (host.peak_gflops["fp32"], host.bandwidth_gbps):  # the peaks say which CPU they came from
        assert "AMD EPYC VM (family 25, model 17; Zen 4" in fig.source


@pytest.mark.parametrize("detected", ["znver4", "rocketlake", None])  # None: TVM not installed
def test_native_cpu_is_resolved_at_load_time(monkeypatch: pytest.MonkeyPatch, detected: str | None) -> None:
    monkeypatch.setattr(profile_mod, "host_llvm_cpu", lambda: detected)
    host = load_profile("host", profile_dir=PROFILES)
    assert host.target["mcpu"] == (detected or NATIVE_CPU) and host.declared_target["mcpu"] == NATIVE_CPU
    assert profile_hash(host) == profile_hash(dataclasses.replace(host, target=host.declared_target))
    assert load_profile("pixel8-cpu", profile_dir=PROFILES).target["mcpu"] == "cortex-x3"  # pinned: kept


def test_load_by_path_and_profile_is_hashable() -> None:
    p = load_profile(PROFILES / "pixel8.toml")
    assert p == load_profile("pixel8", profile_dir=PROFILES)
    assert hash(p) == hash(load_profile("pixel8", profile_dir=PROFILES))


def test_unknown_device_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown device 'nope'.*host.*iphone16promax"):
        load_profile("nope", profile_dir=PROFILES)


BAD = [
    ('name = "host"', 'name = "other"', "device.name"),
    ('name = "host"\n', "\n", "device.name"),
    ('kind = "cpu"', 'kind = "fpga"', "device.kind"),
    ("threads = 1 ", "threads = 0 ", "device.threads"),
    ("threads = 1 ", 'threads = "1" ', "device.threads"),
    ("local = true", "local = 1", "device.local"),
    ('default_precision = "fp32"', 'default_precision = "int3"', "device.default_precision"),
    ('default_precision = "fp32"', 'default_precision = "fp16"', "device.default_precision"),
    ('target = { kind = "llvm",', 'target = { mkind = "llvm",', "tvm.target.kind"),
    ('rpc_key = ""', 'rpc_key = 3', "tvm.rpc_key"),
    ("[peak.fp32]", "[peak.fp8]", "peak.fp8"),
    ("gflops = 188.0", "gflops = -1.0", "peak.fp32.gflops"),
    ("gflops = 188.0", 'gflops = "fast"', "peak.fp32.gflops"),
    ("gflops = 188.0", "gflops = 0.0", "peak.fp32.gflops"),
    ('source = "measured: on a 2-core AMD EPYC VM', 'source = "vibes: on a 2-core AMD EPYC VM', "peak.fp32.source"),
    ("local = true", "local = false", "tvm.target.mcpu"),  # "native" is the machine hwnas runs on
    ('target = { kind = "llvm", mcpu = "native"', 'target = { kind = "c", mcpu = "native"', "tvm.target.mcpu"),
    ("bandwidth_gbps = 27.0", "bandwidth_gbps = nan", "memory.bandwidth_gbps"),
    ("[memory]", "[memoryx]", "[memory]"),
    ("[pipeline.text_encoder]", "[pipeline.text_encoderx]", "pipeline.text_encoder"),
    ("latency_ms = 0.0", "latency_ms = -5.0", "pipeline.text_encoder.latency_ms"),
    ("resolution = 1024", "resolution = 0", "pipeline.vae_decoder.resolution"),
    ("resolution = 1024", "", "pipeline.vae_decoder.resolution"),
    ("[device]", "[device", "not valid TOML"),
    ("[memory]", "[memroy]", "unknown table [memroy]; did you mean [memory]?"),
    ("threads = 1 ", "thread = 1 ", "unknown key 'thread' in [device]; did you mean 'threads'?"),
    ("rpc_key =", "rpc_kye =", "unknown key 'rpc_kye' in [tvm]; did you mean 'rpc_key'?"),
    ("gflops = 188.0", "gflops = 188.0\ngflop = 1.0", "unknown key 'gflop' in [peak.fp32]; did you mean 'gflops'?"),
    ("bandwidth_gbps = 27.0", "bandwidth_gbps = 27.0\nlatency_ns = 90", "unknown key 'latency_ns' in [memory]"),
    ("[pipeline.text_encoder]", "[pipeline.text_encoders]", "unknown table [pipeline.text_encoders]; did you mean "
                                                             "[pipeline.text_encoder]?"),
    ("resolution = 1024", "resolution = 1024\nresolutoin = 512", "unknown key 'resolutoin' in "
                                                                  "[pipeline.vae_decoder]; did you mean 'resolution'?"),
    ("[pipeline.text_encoder]", '[runtime.dispatch]\noverhead_us = -3.0\nsource = "measured: x"\n\n'
                                "[pipeline.text_encoder]", "runtime.dispatch.overhead_us"),
    ("[pipeline.text_encoder]", '[runtime.dispatch]\noverhead_us = 3.0\nsource = "a guess"\n\n'
                                "[pipeline.text_encoder]", "runtime.dispatch.source"),
    ("[pipeline.text_encoder]", '[runtime.dispatch]\noverhead_ms = 3.0\nsource = "measured: x"\n\n'
                                "[pipeline.text_encoder]", "unknown key 'overhead_ms' in [runtime.dispatch]"),
    ("[pipeline.text_encoder]", '[runtime.dispatch]\noverhead_us = 3.0\nelementwise_passes = 0.5\n'
                                'source = "measured: x"\n\n[pipeline.text_encoder]',
     "runtime.dispatch.elementwise_passes"),
    ("[pipeline.text_encoder]", '[runtime.threading]\nhalf_speedup_mflop = 0.0\nsource = "measured: x"\n\n'
                                "[pipeline.text_encoder]", "runtime.threading.half_speedup_mflop"),
    ("[pipeline.text_encoder]", '[runtime.threading]\nhalf_mflop = 40.0\nsource = "measured: x"\n\n'
                                "[pipeline.text_encoder]", "unknown key 'half_mflop' in [runtime.threading]"),
]


@pytest.mark.parametrize("old, new, field", BAD)
def test_malformed_profile_names_file_and_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    text = (PROFILES / "host.toml").read_text()
    assert old in text
    path = tmp_path / "host.toml"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ValueError) as err:
        load_profile("host", profile_dir=tmp_path)
    msg = str(err.value)
    assert str(path) in msg and field in msg


def test_scaffold_loads_with_todo_figures(tmp_path: Path) -> None:
    text = scaffold_profile("board-x", target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "num-cores": 4},
                            description="a test board")
    (tmp_path / "board-x.toml").write_text(text)
    p = load_profile("board-x", profile_dir=tmp_path)
    assert p.target == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "num-cores": 4}
    assert not p.peak_gflops["fp16"].known
    with pytest.raises(ValueError, match="not known yet"):
        p.peak_gflops["fp16"].require("board-x: peak.fp16")


@pytest.mark.parametrize("name", ["", "a b", "../x"])
def test_scaffold_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="device name"):
        scaffold_profile(name, target={"kind": "llvm"})


def test_copy_of_profiles_dir_is_independent(tmp_path: Path) -> None:
    shutil.copytree(PROFILES, tmp_path / "p")
    assert list_profiles(tmp_path / "p") == list_profiles(PROFILES)


def test_runtime_dispatch_overhead_sets_every_kinds_prior(tmp_path: Path) -> None:
    from hwnas.latency import prior_params
    from hwnas.latency.table import profile_hash

    text = (PROFILES / "host.toml").read_text()
    before = load_profile("host", profile_dir=PROFILES)
    assert before.dispatch_us is None
    (tmp_path / "host.toml").write_text(text.replace("[pipeline.text_encoder]", (
        '[runtime.dispatch]\noverhead_us = 25.0\nsource = "measured: the smallest shapes-32 sub-DiT, eager"\n\n'
        "[pipeline.text_encoder]"), 1))
    after = load_profile("host", profile_dir=tmp_path)
    assert after.dispatch_us is not None and after.dispatch_us.value == 25.0
    params = prior_params(after)
    assert {k.overhead_ms for k in params.kinds.values()} == {0.025}
    assert "measured: the smallest shapes-32 sub-DiT" in params.sources["overhead_ms"]
    assert {k.overhead_ms for k in prior_params(before).kinds.values()} == {0.003}
    with_passes = load_profile("host", profile_dir=_write_host(tmp_path, text.replace("[pipeline.text_encoder]", (
        '[runtime.dispatch]\noverhead_us = 25.0\nelementwise_passes = 3.25\nsource = "measured: eager"\n\n'
        "[pipeline.text_encoder]"), 1)))
    slow = prior_params(with_passes).kinds["elementwise"]
    assert slow.eff_memory == pytest.approx(params.kinds["elementwise"].eff_memory / 3.25)
    assert "3.25 passes" in prior_params(with_passes).sources["eff_memory"]
    assert profile_hash(with_passes) != profile_hash(after)
    from hwnas.latency.devices import profile_lines

    shown = "\n".join(profile_lines(with_passes, table_dir=tmp_path))
    assert "runtime     TVM, attention materialized: derived:" in shown
    assert "dispatch        25.00 us per primitive  measured: eager" in shown and "3.25 passes" in shown
    assert "(not stated" in "\n".join(profile_lines(before, table_dir=tmp_path))
    # a profile without the table keeps its hash (and its tables stay fresh); one with it does not
    assert profile_hash(before) == profile_hash(load_profile("host", profile_dir=PROFILES))
    assert profile_hash(after) != profile_hash(before)


def _write_host(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "passes"
    folder.mkdir()
    (folder / "host.toml").write_text(text)
    return folder


def test_runtime_threading_slows_small_primitives_on_several_threads(tmp_path: Path) -> None:
    import dataclasses

    from hwnas.latency.devices import profile_lines
    from hwnas.latency.estimate import kernel_terms, thread_speedup
    from hwnas.latency.kernels import kernel_counts
    from hwnas.latency.table import profile_hash
    from hwnas.space import load_space

    assert thread_speedup(0.0, 4, 1e6) == 1.0 and thread_speedup(1e6, 4, 1e6) == 2.5
    assert thread_speedup(1e12, 4, 1e6) == pytest.approx(4.0, rel=1e-5)
    text = (PROFILES / "host.toml").read_text()
    before = dataclasses.replace(load_profile("host", profile_dir=PROFILES), threads=2)
    (tmp_path / "host.toml").write_text(text.replace("[pipeline.text_encoder]", (
        '[runtime.threading]\nhalf_speedup_mflop = 40.0\nsource = "measured: a GEMM ladder"\n\n'
        "[pipeline.text_encoder]"), 1).replace("threads = 1 ", "threads = 2 ", 1))
    after = load_profile("host", profile_dir=tmp_path)
    assert after.half_speedup_mflop is not None and after.half_speedup_mflop.value == 40.0 and after.threads == 2
    space = load_space(ROOT / "experiments/shapes-32.toml")
    key = next(k for k, _ in kernel_counts(space.largest(), space, precision="fp32") if k.op.kind == "middle_block")
    plain, scaled = kernel_terms(key, before, "fused"), kernel_terms(key, after, "fused")
    for (kind, c0, m0), (_, c1, m1) in zip(plain, scaled):
        assert m1 == m0  # memory time is untouched
        if kind == "elementwise" or c0 == 0:
            assert c1 == c0
        else:  # tiny proxy primitives run at close to one thread's speed: up to 2x the all-threads time
            assert c0 < c1 <= 2 * c0
    one_thread = dataclasses.replace(after, threads=1)
    unscaled = dataclasses.replace(one_thread, half_speedup_mflop=None)
    assert kernel_terms(key, one_thread, "fused") == kernel_terms(key, unscaled, "fused")
    assert profile_hash(after) != profile_hash(dataclasses.replace(after, half_speedup_mflop=None))
    shown = "\n".join(profile_lines(after, table_dir=tmp_path))
    assert "threading          40 MFLOP per primitive for half the speed-up of 2 threads  measured: a GEMM" in shown
