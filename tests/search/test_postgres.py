"""A search against a real PostgreSQL server (a throwaway cluster started here), with two workers.

Skipped, with the reason, where PostgreSQL's server binaries or psycopg2 are missing or the
cluster does not start (`.ci/run` installs Debian's `postgresql`).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hwnas.search import run_search


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install psycopg2-binary)")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    # not under pytest's tmp dir: its parents are private to root, and the cluster may run as `postgres`
    root = Path(tempfile.mkdtemp(prefix="hwnas-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as the postgres user
        runuser = shutil.which("runuser")
        if runuser is None or subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            pytest.skip("running as root without a 'postgres' user to own the test cluster")
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(root, 0o755)
        prefix = [runuser, "-u", "postgres", "--"]
    port = _free_port()
    init = subprocess.run([*prefix, initdb, "-D", str(data), "-U", "hwnas", "--auth=trust", "-E", "UTF8"],
                          capture_output=True, text=True)
    if init.returncode:
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    log = root / "server.log"
    if prefix:
        shutil.chown(root, "postgres")
    start = subprocess.run([*prefix, pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
                            f"-p {port} -k {sock} -c listen_addresses='127.0.0.1' -c fsync=off", "start"],
                           capture_output=True, text=True)
    if start.returncode:
        detail = log.read_text()[-300:] if log.exists() else start.stderr
        pytest.skip(f"PostgreSQL did not start: {detail.strip()}")
    try:
        yield f"postgresql+psycopg2://hwnas@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_search_on_postgresql_with_two_workers(tiny_env, postgres_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the test cluster trusts every login, so a password is accepted and ignored: it must not be written
    with_password = postgres_url.replace("hwnas@", "hwnas:S3cretPW@")
    res = run_search(tiny_env.settings(storage=with_password, study="pg-test", workers=2, n_trials=16),
                     out=tmp_path / "pg", report=True)
    assert res["settings"]["storage"] == postgres_url.replace("hwnas@", "hwnas:***@")
    assert not (tmp_path / "pg" / "study.db").exists()
    for path in (tmp_path / "pg").rglob("*"):
        assert not path.is_file() or b"S3cretPW" not in path.read_bytes(), path
    study = optuna.load_study(study_name="pg-test", storage=postgres_url)
    assert "S3cretPW" not in str(study.user_attrs)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert 16 <= len(complete) <= 17
    assert len({t.number for t in complete}) == len(complete)
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers ran trials
    assert res["best"] is not None and res["best"]["latency_ms"] <= tiny_env.budget_ms
    # a rerun resumes the same study: no new trials
    again = run_search(tiny_env.settings(storage=with_password, study="pg-test", n_trials=16), out=tmp_path / "pg",
                       report=False)
    assert again["cost"]["trials"] == len(complete)
