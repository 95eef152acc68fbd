from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from hwnas.io import sha256_file
from hwnas.latency import (
    CorruptTableError,
    HostMismatchWarning,
    LatencyTable,
    StaleTableError,
    Timing,
    build_estimated_table,
    default_params,
    kernels,
    list_profiles,
    load_profile,
    load_table,
    write_table,
)
from hwnas.latency.table import table_paths, tvm_version
from hwnas.space import load_space

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/snapgenpp-1024.toml"


@pytest.fixture()
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copytree(ROOT / "device_profiles", tmp_path / "profiles")
    return tmp_path / "profiles", tmp_path / "tables"


@pytest.fixture(scope="module")
def space():  # type: ignore[no-untyped-def]
    return load_space(ROOT / EXPERIMENT)


def _table(space, profile_dir: Path, device: str = "pixel8-cpu") -> LatencyTable:  # type: ignore[no-untyped-def]
    prof = load_profile(device, profile_dir=profile_dir)
    keys = list(dict.fromkeys(kernels(space.preset("small"), space, precision=prof.default_precision)))
    return build_estimated_table(prof, space, default_params(prof), experiment_path=EXPERIMENT, keys=keys)


def test_round_trip(dirs, space) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    table = _table(space, profiles)
    write_table(table, table_dir=tables)
    back = load_table("pixel8-cpu", space.name, table_dir=tables, profile_dir=profiles)
    assert back.entries.keys() == table.entries.keys()
    for key, t in table.entries.items():
        assert back.entries[key].median_ms == pytest.approx(t.median_ms, rel=1e-5)
    assert back.meta.target == table.meta.target and back.meta.source == "estimated"
    assert back.meta.estimator["scale"] == 1.0 and back.meta.rows == len(table.entries)


def _rewrite_meta(table: LatencyTable, tables: Path, **changes: object) -> None:
    write_table(dataclasses.replace(table, meta=dataclasses.replace(table.meta, **changes)), table_dir=tables)


@pytest.mark.parametrize("changes, field", [
    ({"target": {"kind": "llvm", "mcpu": "cortex-a55"}}, "target changed"),
    ({"threads": 8}, "threads changed"),
    ({"code_hash": "0" * 16}, "code hash of cost.py"),
    ({"profile_hash": "0" * 16}, "device profile numbers"),
])
def test_stale_fields(dirs, space, changes: dict, field: str) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    _rewrite_meta(_table(space, profiles), tables, **changes)
    with pytest.raises(StaleTableError, match=field) as err:
        load_table("pixel8-cpu", space.name, table_dir=tables, profile_dir=profiles)
    assert "hwnas lut build --device pixel8-cpu --experiment experiments/snapgenpp-1024.toml --estimate" in str(err.value)


@pytest.mark.skipif(tvm_version() is None, reason="apache-tvm not installed")
def test_stale_tvm_version_of_measured_table(dirs, space) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    table = _table(space, profiles)
    measured = {k: Timing(t.median_ms, t.median_ms * 0.9, t.median_ms * 1.1, 0.05, 20, "measured")
                for k, t in table.entries.items()}
    table = dataclasses.replace(table, entries=measured)
    _rewrite_meta(table, tables, source="measured", tvm_version="0.1.0")
    with pytest.raises(StaleTableError, match="TVM version changed.*--tracker HOST:PORT"):
        load_table("pixel8-cpu", space.name, table_dir=tables, profile_dir=profiles)


def test_profile_edit_marks_estimated_table_stale(dirs, space) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    write_table(_table(space, profiles), table_dir=tables)
    path = profiles / "pixel8-cpu.toml"
    path.write_text(path.read_text().replace("gflops = 414.0", "gflops = 500.0", 1))
    with pytest.raises(StaleTableError, match="profile numbers"):
        load_table("pixel8-cpu", space.name, table_dir=tables, profile_dir=profiles)


def test_host_table_on_other_cpu_warns(dirs, space) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    _rewrite_meta(_table(space, profiles, "host"), tables, host_cpu="Some Other CPU (family 1, model 2)")
    with pytest.warns(HostMismatchWarning, match="Some Other CPU.*hwnas lut build --device host"):
        load_table("host", space.name, table_dir=tables, profile_dir=profiles)


def test_corrupt_csv_names_file(dirs, space) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    csv_path, _ = write_table(_table(space, profiles), table_dir=tables)
    csv_path.write_text(csv_path.read_text()[:-40])
    with pytest.raises(CorruptTableError, match=str(csv_path)):
        load_table("pixel8-cpu", space.name, table_dir=tables, profile_dir=profiles)


def test_bad_row_names_line(dirs, space) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    table = _table(space, profiles)
    csv_path, meta_path = write_table(table, table_dir=tables)
    lines = csv_path.read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace(",estimated", ",guessed")
    text = "".join(lines)
    csv_path.write_text(text)
    import json

    meta = json.loads(meta_path.read_text())
    meta["csv_sha256"] = sha256_file(csv_path)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CorruptTableError, match="line 4.*guessed"):
        load_table("pixel8-cpu", space.name, table_dir=tables, profile_dir=profiles)


def test_missing_table_says_how_to_build(dirs, space) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    with pytest.raises(FileNotFoundError, match="hwnas lut build --device pixel8"):
        load_table("pixel8-cpu", space.name, table_dir=tables, profile_dir=profiles)


def test_atomic_write_leaves_no_partial_file(dirs, space, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    table = _table(space, profiles)
    csv_path, meta_path = table_paths("pixel8-cpu", space.name, table_dir=tables)

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_table(table, table_dir=tables)
    assert not csv_path.exists() and not meta_path.exists()
    assert os.listdir(csv_path.parent) == []
    monkeypatch.undo()
    write_table(table, table_dir=tables)
    before = csv_path.read_bytes()
    monkeypatch.setattr(os, "fsync", boom)
    bigger = dataclasses.replace(table, entries={k: Timing.estimated(2 * t.median_ms) for k, t in table.entries.items()})
    with pytest.raises(OSError):
        write_table(bigger, table_dir=tables)
    assert csv_path.read_bytes() == before and sorted(os.listdir(csv_path.parent)) == sorted(
        [csv_path.name, meta_path.name])


@pytest.mark.parametrize("args, match", [
    ((0.0, 0.0, 0.0, 0.0, 0, "estimated"), "median_ms"),
    ((1.0, 1.2, 1.5, 0.1, 5, "measured"), "p10_ms <= median_ms"),
    ((1.0, 0.9, 1.1, -0.1, 5, "measured"), "cv"),
    ((1.0, 0.9, 1.1, 0.1, 0, "measured"), "n >= 1"),
    ((1.0, 0.9, 1.1, 0.1, 3, "guessed"), "'guessed'"),
    ((float("nan"), 0.9, 1.1, 0.1, 3, "measured"), "median_ms"),
])
def test_timing_validation(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Timing(*args)


def test_shipped_tables_are_fresh(space) -> None:  # type: ignore[no-untyped-def]
    """The committed estimated LUTs load (not stale); rebuild them with the command in any error."""
    for device in list_profiles(ROOT / "device_profiles"):
        if not table_paths(device, space.name, table_dir=ROOT / "latency_tables")[0].exists():
            continue
        table = load_table(device, space.name, table_dir=ROOT / "latency_tables",
                           profile_dir=ROOT / "device_profiles")
        prof = load_profile(device, profile_dir=ROOT / "device_profiles")
        assert set(table.meta.precisions) == set(prof.precisions)
        assert len(table.entries) < 3000 and table.meta.calibration
