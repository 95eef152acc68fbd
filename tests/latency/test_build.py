"""Measured LUT builds: grouped and cached compiles, adaptive timing, resume, remote retries (tiny key sets)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hwnas.latency import KernelKey, Timing, enumerate_kernels, load_profile, load_table
from hwnas.latency.adaptive import StopRule
from hwnas.space import SearchSpace

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/shapes-32.toml"
PROFILES = ROOT / "device_profiles"
QUICK = StopRule(min_rounds=2, max_rounds=3, per_round=2)


def _tvm() -> None:
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install -e '.[tvm]')")


@pytest.mark.tvm
def test_second_build_takes_every_kernel_from_the_cache(space: SearchSpace, keys: dict[str, KernelKey],
                                                        tmp_path: Path) -> None:
    """A fresh table over the same cache compiles nothing; both tables hold sane, adaptive timings."""
    _tvm()
    from hwnas.latency.build import build_measured_table

    prof = load_profile("host", profile_dir=PROFILES)
    chosen = [keys["stage_mod"], keys["final"], keys["downsample"]]
    kw = dict(experiment_path=EXPERIMENT, keys=chosen, cache=tmp_path / "kernels", stop=QUICK, progress=False)
    first = build_measured_table(prof, space, table_dir=tmp_path / "a", **kw)  # type: ignore[arg-type]
    assert (first.measured, first.compiled, first.cached) == (3, 3, 0)
    second = build_measured_table(prof, space, table_dir=tmp_path / "b", **kw)  # type: ignore[arg-type]
    assert (second.measured, second.compiled, second.cached) == (3, 0, 3)
    for rep in (first, second):
        table = load_table(prof, space.name, table_dir=rep.paths[0].parents[1], profile_dir=PROFILES)
        assert set(table.entries) == set(chosen) and "until the 90% t-interval" in table.meta.calibration
        for t in table.entries.values():
            assert t.source == "measured" and 0 < t.p10_ms <= t.median_ms <= t.p90_ms < 100
            assert 2 * QUICK.per_round <= t.n <= QUICK.max_rounds * QUICK.per_round


@pytest.mark.tvm
def test_build_is_resumable_after_an_interrupt(space: SearchSpace, keys: dict[str, KernelKey], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupt a build after its first wave; the rerun keeps that entry and measures only the rest; a
    changed timing method or code hash starts afresh."""
    _tvm()
    from hwnas.latency import build

    prof = load_profile("host", profile_dir=PROFILES)
    chosen = [keys["stage_mod"], keys["final"]]
    monkeypatch.setattr(build, "CHUNK", 1)  # one kernel per wave
    monkeypatch.setattr(build, "GROUP", 0.1)  # one kernel per library
    real = build._time_local
    timed: list[KernelKey] = []

    def interrupted(batch, **kw):  # type: ignore[no-untyped-def]
        if timed:
            raise KeyboardInterrupt
        timed.extend(k for k, _ in batch)
        return real(batch, **kw)

    monkeypatch.setattr(build, "_time_local", interrupted)
    kw = dict(experiment_path=EXPERIMENT, table_dir=tmp_path, keys=chosen, stop=QUICK, progress=False)
    with pytest.raises(KeyboardInterrupt):
        build.build_measured_table(prof, space, **kw)  # type: ignore[arg-type]
    first = load_table(prof, space.name, table_dir=tmp_path, profile_dir=PROFILES)
    assert set(first.entries) == set(timed) and len(timed) == 1 and first.meta.source == "measured"
    assert first.meta.host_cpu and first.meta.threads == prof.threads and first.meta.tvm_version

    monkeypatch.setattr(build, "_time_local", real)
    rep = build.build_measured_table(prof, space, **kw)  # type: ignore[arg-type]
    assert (rep.measured, rep.kept, rep.discarded) == (1, 1, 0)
    again = load_table(prof, space.name, table_dir=tmp_path, profile_dir=PROFILES)
    assert again.entries[timed[0]] == first.entries[timed[0]] and len(again.entries) == 2

    rep = build.build_measured_table(prof, space, **{**kw, "stop": StopRule(min_rounds=2, max_rounds=2)})  # type: ignore[arg-type]
    assert rep.discarded == 2 and rep.measured == 2 and "timing method changed" in rep.note
    monkeypatch.setattr(build, "code_hash", lambda files: "0" * 16)  # kernel code changed: start afresh
    rep = build.build_measured_table(prof, space, **kw)  # type: ignore[arg-type]
    assert rep.discarded == 2 and rep.measured == 2 and "code hash changed" in rep.note


@pytest.mark.tvm
def test_remote_device_that_drops_is_retried_then_resumable(space: SearchSpace, keys: dict[str, KernelKey],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing remote kernel is retried with a fresh session; a device that stays down stops the build with
    the entries so far saved (the kernels compile for real; the session is a stand-in)."""
    _tvm()
    from hwnas.latency import build

    prof = load_profile("host", profile_dir=PROFILES)
    sessions: list[int] = []
    monkeypatch.setattr(build, "connect_tracker", lambda tracker, key: sessions.append(1) or len(sessions))
    monkeypatch.setattr(build.time, "sleep", lambda s: None)
    state = {"fail": 1, "dead": None}

    def flaky(self, where, args, **kw):  # type: ignore[no-untyped-def]
        if where.func == state["dead"] or (where.func == "k1" and state["fail"] > 0):
            state["fail"] -= 1
            raise ConnectionResetError("device went away")
        assert where.lib.is_file()
        return Timing(0.5, 0.4, 0.6, 0.1, 5, "measured")

    monkeypatch.setattr(build._Remote, "time", flaky)
    chosen = [keys["stage_mod"], keys["final"], keys["patch_embed"]]  # one library: k0, k1, k2 in sorted order
    rep = build.build_measured_table(prof, space, experiment_path=EXPERIMENT, table_dir=tmp_path, keys=chosen,
                                     tracker="127.0.0.1:9", rpc_key="dev", retries=2, progress=False)
    assert rep.measured == 3 and len(sessions) == 2  # one reconnect
    assert rep.table.meta.host_cpu is None  # remote: the local CPU is not recorded

    more = [keys["down_block"], keys["middle_block"]]  # sorted: k0 down_block, k1 middle_block
    state["dead"] = "k1"
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


def test_kernel_cache_under_a_file_is_refused(space: SearchSpace, tmp_path: Path) -> None:
    from hwnas.latency.build import build_measured_table

    (tmp_path / "file").write_text("x")
    prof = load_profile("host", profile_dir=PROFILES)
    with pytest.raises(ValueError, match="as the kernel cache folder"):
        build_measured_table(prof, space, experiment_path=EXPERIMENT, table_dir=tmp_path, keys=[],
                             cache=tmp_path / "file" / "kernels")


@pytest.mark.parametrize(("weights", "size", "expected"), [
    ([1, 1, 1], 2.0, [2, 1]),
    ([0.25] * 8, 1.0, [4, 4]),
    ([1, 0.25, 0.25, 1], 1.0, [1, 3]),
    ([], 1.0, []),
])
def test_groups_hold_about_size_block_units(space: SearchSpace, weights: list[float], size: float,
                                            expected: list[int]) -> None:
    from hwnas.latency.build import _groups

    every = enumerate_kernels(space, precisions=("fp32",))
    blocks = iter(k for k in every if k.op.is_block)
    small = iter(k for k in every if not k.op.is_block)
    chosen = [next(blocks) if w == 1 else next(small) for w in weights]
    groups = _groups(chosen, size)
    assert [len(g) for g in groups] == expected and [k for g in groups for k in g] == chosen
