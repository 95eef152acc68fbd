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
from hwnas.latency import table as table_mod
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
    assert back.meta.estimator["kinds"] == table.meta.estimator["kinds"] and back.meta.rows == len(table.entries)
    assert back.meta.error == table.meta.error and back.meta.error.kind == "prior"


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
    rebuild = "hwnas lut build --device pixel8-cpu --experiment experiments/snapgenpp-1024.toml --estimate"
    assert rebuild in str(err.value)


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


ZEN4 = "AMD EPYC (family 25, model 17)"
XEON = "Intel(R) Xeon(R) (family 6, model 167)"


def _run_on(monkeypatch: pytest.MonkeyPatch, llvm_cpu: str, model: str) -> None:
    """Make this process look like it runs on another CPU (LLVM name and /proc/cpuinfo model)."""
    from hwnas.latency import profile as profile_mod

    monkeypatch.setattr(profile_mod, "host_llvm_cpu", lambda: llvm_cpu)
    monkeypatch.setattr(table_mod, "host_cpu", lambda: (model, 2))


def _measured_host_table(space, profiles: Path, tables: Path) -> None:  # type: ignore[no-untyped-def]
    """A host table timed on a Zen 4 (target mcpu znver4), written to `tables`."""
    table = _table(space, profiles, "host")
    measured = {k: Timing(t.median_ms, t.median_ms * 0.9, t.median_ms * 1.1, 0.05, 20, "measured")
                for k, t in table.entries.items()}
    _rewrite_meta(dataclasses.replace(table, entries=measured), tables, source="measured", host_cpu=ZEN4,
                  target={"kind": "llvm", "mcpu": "znver4", "num-cores": 2}, tvm_version=tvm_version())


@pytest.mark.parametrize(("llvm_cpu", "model", "note"), [
    ("znver4", ZEN4, ""),
    ("rocketlake", XEON, "measured on znver4 (AMD EPYC, family 25, model 17), running on rocketlake "
                         "(Intel(R) Xeon(R), family 6, model 167)"),
    ("znver4", "AMD EPYC 9654 (family 25, model 17)", "measured on znver4 (AMD EPYC, family 25, model 17), "
                                                      "running on znver4 (AMD EPYC 9654, family 25, model 17)"),
    ("znver5", ZEN4, "measured on znver4 (AMD EPYC, family 25, model 17), running on znver5 (AMD EPYC, family "
                     "25, model 17)"),
])
def test_host_table_from_another_cpu_is_labelled_not_refused(dirs, space, monkeypatch, llvm_cpu: str, model: str,
                                                              note: str) -> None:  # type: ignore[no-untyped-def]
    """A measured host table is usable on any CPU; off the CPU that timed it, it says where it was timed."""
    from hwnas.latency import predict_latency_ms

    profiles, tables = dirs
    _measured_host_table(space, profiles, tables)
    _run_on(monkeypatch, llvm_cpu, model)
    if note:
        with pytest.warns(HostMismatchWarning, match="hwnas lut build --device host"):
            table = load_table("host", space.name, table_dir=tables, profile_dir=profiles)
    else:
        table = load_table("host", space.name, table_dir=tables, profile_dir=profiles)
    assert table.cpu_note == note
    assert table.source_label == (note or "measured") and table.source == "measured"
    pred = predict_latency_ms(space.preset("small"), table, steps=4, precision="fp32", space=space)
    assert pred.source == "measured" and pred.source_label == (note or "measured")
    assert pred.provenance.startswith(f"denoiser {note or 'measured'}: TVM")
    kinds = table_mod.table_kinds("host", table_dir=tables, profile=load_profile("host", profile_dir=profiles))
    assert kinds == {space.name: note or "measured"}


def test_mixed_table_from_another_cpu_names_both(dirs, space, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    _measured_host_table(space, profiles, tables)
    _run_on(monkeypatch, "rocketlake", XEON)
    with pytest.warns(HostMismatchWarning):
        table = load_table("host", space.name, table_dir=tables, profile_dir=profiles)
    first = next(iter(table.entries))
    entries = {**table.entries, first: Timing.estimated(1.0)}
    mixed = dataclasses.replace(table, entries=entries)
    assert mixed.source == "mixed"
    assert mixed.source_label.startswith("mixed: estimated and measured on znver4")


def test_estimated_host_table_is_not_relabelled(dirs, space, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Estimates come from the profile's peaks, not from timing this CPU: no note, no warning."""
    import warnings

    profiles, tables = dirs
    _rewrite_meta(_table(space, profiles, "host"), tables, host_cpu=ZEN4)
    _run_on(monkeypatch, "rocketlake", XEON)
    with warnings.catch_warnings():
        warnings.simplefilter("error", HostMismatchWarning)
        table = load_table("host", space.name, table_dir=tables, profile_dir=profiles)
    assert table.cpu_note == "" and table.source_label == "estimated"


@pytest.mark.parametrize(("target", "stale"), [
    ({"kind": "llvm", "mcpu": "rocketlake", "num-cores": 2}, False),  # another CPU: labelled, not stale
    ({"kind": "llvm", "num-cores": 2}, False),
    ({"kind": "llvm", "mcpu": "znver4", "num-cores": 4}, True),
    ({"kind": "c", "mcpu": "znver4", "num-cores": 2}, True),
])
def test_native_profile_compares_target_without_mcpu(dirs, space, monkeypatch, target: dict,
                                                     stale: bool) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = dirs
    _rewrite_meta(_table(space, profiles, "host"), tables, target=target)
    _run_on(monkeypatch, "znver4", ZEN4)
    if stale:
        with pytest.raises(StaleTableError, match="target changed"):
            load_table("host", space.name, table_dir=tables, profile_dir=profiles)
    else:
        load_table("host", space.name, table_dir=tables, profile_dir=profiles)


def test_shipped_host_table_loads_on_another_cpu(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The shipped measured host table (timed on a Zen 4) predicts on a Rocket Lake, labelled as such."""
    from click.testing import CliRunner

    from hwnas.cli import main

    _run_on(monkeypatch, "rocketlake", XEON)
    with pytest.warns(HostMismatchWarning):
        res = CliRunner().invoke(main, ["predict", "--device", "host", "--experiment",
                                        str(ROOT / "experiments/shapes-32.toml"), "--preset", "small", "--json",
                                        "--profiles", str(ROOT / "device_profiles"),
                                        "--tables", str(ROOT / "latency_tables")])
    assert res.exit_code == 0, res.output
    import json

    out = json.loads(res.stdout)
    assert out["source"].startswith("measured on znver4 (AMD EPYC, family 25, model 17), running on rocketlake")
    assert out["provenance"].startswith("denoiser measured on znver4")


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
    bigger = dataclasses.replace(table,
                                 entries={k: Timing.estimated(2 * t.median_ms) for k, t in table.entries.items()})
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


@pytest.mark.parametrize(("device", "experiment"), [("host", "../../x"), ("../host", "shapes-32"), ("a/b", "x"),
                                                     ("host", ""), ("host", "a/../b")])
def test_table_paths_refuse_path_like_names(device: str, experiment: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must use letters, digits"):
        table_paths(device, experiment, table_dir=tmp_path)


def test_lut_build_with_path_like_experiment_name_writes_nothing(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hwnas.cli import main

    exp = tmp_path / "exp.toml"
    exp.write_text((ROOT / EXPERIMENT).read_text().replace('name = "snapgenpp-1024"', 'name = "../../escaped"'))
    tables = tmp_path / "a" / "b" / "tables"
    res = CliRunner().invoke(main, ["lut", "build", "--device", "pixel8-cpu", "--experiment", str(exp), "--estimate",
                                    "--tables", str(tables), "--profiles", str(ROOT / "device_profiles")])
    assert res.exit_code == 2 and "[experiment] name must use letters" in res.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["exp.toml"]
