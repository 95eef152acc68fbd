"""Files written through a temporary file get the mode `open()` would give them (umask honoured)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwnas.io import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_the_mode_open_gives(umask: int, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    atomic_write_text(tmp_path / "atomic", "x")
    assert _mode(tmp_path / "atomic") == _mode(tmp_path / "plain") == 0o666 & ~umask
    assert os.umask(umask) == umask  # left as it was


def test_table_files_are_not_private(umask: int, tmp_path: Path) -> None:
    from hwnas.latency import build_estimated_table, default_params, kernels, load_profile, write_table
    from hwnas.space import load_space

    space = load_space(ROOT / "experiments/snapgenpp-1024.toml")
    prof = load_profile("pixel8-cpu", profile_dir=ROOT / "device_profiles")
    keys = list(dict.fromkeys(kernels(space.preset("tiny"), space, precision=prof.default_precision)))
    table = build_estimated_table(prof, space, default_params(prof), experiment_path="x.toml", keys=keys)
    for path in write_table(table, table_dir=tmp_path):
        assert _mode(path) == 0o666 & ~umask, path


def test_checkpoint_files_are_not_private(umask: int, tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "meta.json", {"a": 1})
    assert _mode(tmp_path / "meta.json") == 0o666 & ~umask


def test_shipped_files_hold_no_absolute_paths_of_the_machine_that_made_them() -> None:
    import re

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(rb"(/work/|/home/|/root/|" + re.escape(str(root).encode()) + rb")")
    leaks = [str(p.relative_to(root)) for folder in ("reports", "latency_tables", "checkpoints")
             for p in (root / folder).rglob("*")
             if p.is_file() and p.suffix in (".json", ".html", ".csv", ".md", ".txt")
             and pattern.search(p.read_bytes())]
    assert leaks == []
