"""The RPC path for real on one machine: a tracker and a server on 127.0.0.1, a small LUT built through them
(compiled in a worker process while the server times; the second build uploads from the kernel cache).

Both run in their own process groups and are killed at teardown, also when a test fails (the
server's worker child survives a killed launcher otherwise).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from hwnas.latency import enumerate_kernels, load_profile, load_table
from hwnas.space import load_space

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/shapes-32.toml"
PROFILES = ROOT / "device_profiles"
KEY = "hwnas-test"


def _free_port_range(width: int = 10) -> int:
    """A port p such that p..p+width look free on 127.0.0.1."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + width >= 65535:
            continue
        try:
            for p in range(base, base + width):
                with socket.socket() as t:
                    t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free port range")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`127.0.0.1:P` of a running tracker with one server registered under `KEY`."""
    pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install -e '.[tvm]')")
    from tvm import rpc

    tport, sport = _free_port_range(), None
    env = {**os.environ, "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                               str(tport), "--port-end", str(tport + 10)], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while True:  # the tracker answers first, then the server registers (several seconds)
            try:
                client = rpc.connect_tracker("127.0.0.1", tport)
                break
            except Exception:  # noqa: BLE001
                if time.monotonic() > deadline:
                    pytest.fail("the RPC tracker did not come up in 60 s")
                time.sleep(0.5)
        sport = _free_port_range()
        log = (tmp_path_factory.mktemp("rpc") / "server.log").open("w")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{tport}", "--key", KEY,
             "--host", "127.0.0.1", "--port", str(sport), "--port-end", str(sport + 10)],
            env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT))
        while client.summary().get("queue_info", {}).get(KEY, {}).get("free", 0) < 1:
            if time.monotonic() > deadline or procs[-1].poll() is not None:
                pytest.fail("the RPC server did not register at the tracker in 60 s")
            time.sleep(0.5)
        yield f"127.0.0.1:{tport}"
    finally:
        for proc in reversed(procs):
            _kill(proc)


@pytest.mark.tvm
def test_small_lut_built_through_rpc(tracker: str, tmp_path: Path) -> None:
    from hwnas.latency.adaptive import StopRule
    from hwnas.latency.build import build_measured_table

    space = load_space(ROOT / EXPERIMENT)
    prof = load_profile("host", profile_dir=PROFILES)
    wanted = {"stage_mod", "final"}
    keys = [k for k in enumerate_kernels(space, precisions=("fp32",)) if k.kind in wanted]
    keys = [next(k for k in keys if k.kind == kind) for kind in sorted(wanted)]
    stop = StopRule(min_rounds=2, max_rounds=4, per_round=2)
    rep = build_measured_table(prof, space, experiment_path=EXPERIMENT, table_dir=tmp_path, keys=keys,
                               tracker=tracker, rpc_key=KEY, stop=stop, progress=False, cache=tmp_path / "kernels")
    assert (rep.measured, rep.compiled) == (2, 2)
    table = load_table(prof, space.name, table_dir=tmp_path, profile_dir=PROFILES)
    assert set(table.entries) == set(keys)
    for t in table.entries.values():
        assert t.source == "measured" and 4 <= t.n <= 8 and 0 < t.p10_ms <= t.median_ms <= t.p90_ms < 100
    assert "rpc" in table.meta.calibration and table.meta.host_cpu is None
    again = build_measured_table(prof, space, experiment_path=EXPERIMENT, table_dir=tmp_path / "again", keys=keys,
                                 tracker=tracker, rpc_key=KEY, stop=stop, progress=False, cache=tmp_path / "kernels")
    assert (again.measured, again.compiled, again.cached) == (2, 0, 2)  # uploaded from the cache, timed again


@pytest.mark.tvm
def test_unknown_key_at_tracker_is_a_clear_error(tracker: str) -> None:
    from hwnas.latency.bench import TrackerError, connect_tracker

    with pytest.raises(TrackerError, match="no RPC server is registered under key 'nope'.*hwnas-test"):
        connect_tracker(tracker, "nope")


def test_unreachable_tracker_is_one_line_exit_2(tmp_path: Path) -> None:
    from hwnas.cli import main

    port = _free_port_range(1)  # nothing listens there
    start = time.monotonic()
    res = CliRunner().invoke(main, ["lut", "build", "--device", "host", "--experiment", str(ROOT / EXPERIMENT),
                                    "--tracker", f"127.0.0.1:{port}", "--key", KEY, "--tables", str(tmp_path),
                                    "--profiles", str(PROFILES), "--cache", str(tmp_path / "kernels")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and f"RPC tracker 127.0.0.1:{port} is unreachable" in lines[0]
    assert time.monotonic() - start < 30
