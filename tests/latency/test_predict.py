from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hwnas.cli import main
from hwnas.latency import (
    SNAPGENPP_ANCHOR,
    Correction,
    LatencyTable,
    MissingKernelError,
    Timing,
    build_estimated_table,
    default_params,
    efficiency_from_table,
    estimator_params,
    kernels,
    load_profile,
    predict_latency_ms,
)
from hwnas.latency.estimate import OP_KINDS, roofline_ms
from hwnas.space import StageConfig, load_space

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "device_profiles"
EXPERIMENT = "experiments/snapgenpp-1024.toml"


@pytest.fixture(scope="module")
def space():  # type: ignore[no-untyped-def]
    return load_space(ROOT / EXPERIMENT)


def _configs(space, n: int = 30):  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    return [*space.presets().values(), space.largest(), space.smallest(), *(space.sample(rng) for _ in range(n))]


@pytest.fixture(scope="module")
def iphone(space) -> LatencyTable:  # type: ignore[no-untyped-def]
    """The iPhone's calibrated estimator over the kernels of the presets and some random sub-DiTs."""
    prof = load_profile("iphone16promax", profile_dir=PROFILES)
    params = estimator_params(prof, anchor_profile=prof, anchor_space=space)
    cfgs = [dataclasses.replace(cfg, **{stage: dataclasses.replace(cfg.stage(stage), depth=d)})
            for cfg in _configs(space) for stage in ("down", "middle", "up") for d in space.stages[stage].depth]
    keys = list(dict.fromkeys(k for cfg in cfgs for p in prof.precisions for k in kernels(cfg, space, precision=p)))
    return build_estimated_table(prof, space, params, experiment_path=EXPERIMENT, keys=keys)


def test_iphone_calibration_matches_paper(iphone, space) -> None:  # type: ignore[no-untyped-def]
    pred = predict_latency_ms(space.preset("small"), iphone, steps=4, precision="fp16", space=space)
    assert pred.step_ms == pytest.approx(SNAPGENPP_ANCHOR.step_ms, rel=1e-6)
    assert 1560 - 1e-6 <= pred.total_ms <= 1800
    assert pred.vae_decoder_ms == 120 and pred.text_encoder_ms == 0
    assert pred.source == "estimated" and pred.device == "iphone16promax"
    assert "paper" in pred.provenance and "estimated" in pred.provenance


def test_additive(iphone, space) -> None:  # type: ignore[no-untyped-def]
    for cfg in _configs(space):
        for steps in (1, 4, 28):
            pred = predict_latency_ms(cfg, iphone, steps=steps, precision="w4a16", space=space)
            entry_sum = sum(iphone.entries[k].median_ms for k in kernels(cfg, space, precision="w4a16"))
            assert pred.step_ms == pytest.approx(entry_sum, rel=1e-12)
            assert pred.total_ms == pytest.approx(steps * entry_sum + pred.text_encoder_ms + pred.vae_decoder_ms)
            assert sum(pred.step_ms_by_kind.values()) == pytest.approx(pred.step_ms)


@pytest.mark.parametrize("stage", ["down", "middle", "up"])
def test_monotone_in_depth(iphone, space, stage: str) -> None:  # type: ignore[no-untyped-def]
    for cfg in _configs(space, 10):
        times = []
        for depth in sorted(space.stages[stage].depth):
            deeper = dataclasses.replace(cfg, **{stage: dataclasses.replace(cfg.stage(stage), depth=depth)})
            times.append(predict_latency_ms(deeper, iphone, steps=4, precision="fp16", space=space).total_ms)
        assert times == sorted(times) and len(set(times)) == len(times)


def test_missing_kernel_names_key_and_device(iphone, space) -> None:  # type: ignore[no-untyped-def]
    cfg = space.preset("small")
    cfg = dataclasses.replace(cfg, middle=StageConfig(width=0.625, depth=4, ffn_ratio=2, attn="full"))
    key = next(k for k in kernels(cfg, space, precision="fp16") if k not in iphone.entries)
    with pytest.raises(MissingKernelError) as err:
        predict_latency_ms(cfg, iphone, steps=4, precision="fp16", space=space)
    assert key.describe() in str(err.value) and "'iphone16promax'" in str(err.value)
    with pytest.raises(MissingKernelError, match="@ fp32"):
        predict_latency_ms(space.preset("small"), iphone, steps=4, precision="fp32", space=space)


def test_correction_and_mixed_source(iphone, space) -> None:  # type: ignore[no-untyped-def]
    cfg = space.preset("tiny")
    raw = predict_latency_ms(cfg, iphone, steps=4, precision="fp16", space=space)
    with pytest.raises(ValueError, match="no fitted correction"):
        predict_latency_ms(cfg, iphone, steps=4, precision="fp16", space=space, correct=True)
    fitted = dataclasses.replace(iphone, meta=dataclasses.replace(iphone.meta, correction=Correction(1.1, 2.0, "test")))
    pred = predict_latency_ms(cfg, fitted, steps=4, precision="fp16", space=space, correct=True)
    assert pred.step_ms == pytest.approx(1.1 * raw.step_ms + 2.0) and pred.corrected
    key = kernels(cfg, space, precision="fp16")[-1]
    entries = dict(iphone.entries)
    entries[key] = Timing(1.0, 0.9, 1.2, 0.05, 30, "measured")
    mixed = dataclasses.replace(iphone, entries=entries)
    assert predict_latency_ms(cfg, mixed, steps=4, precision="fp16", space=space).source == "mixed"


def test_efficiency_from_synthetic_measured_table(space) -> None:  # type: ignore[no-untyped-def]
    host = load_profile("host", profile_dir=PROFILES)
    base = default_params(host)
    truth = {kind: 0.2 + 0.05 * i for i, kind in enumerate(OP_KINDS)}
    keys = list(dict.fromkeys(k for cfg in _configs(space, 5) for k in kernels(cfg, space, precision="fp32")))
    unit = dataclasses.replace(base, eff_compute=dict.fromkeys(OP_KINDS, 1.0), eff_memory=1e9)  # compute roofline
    entries = {}
    for k in keys:
        ms = roofline_ms(k, host, unit) / truth[k.kind] + base.launch_overhead_ms
        entries[k] = Timing(ms, ms * 0.95, ms * 1.05, 0.03, 10, "measured")
    measured = build_estimated_table(host, space, base, experiment_path=EXPERIMENT, keys=keys)
    measured = dataclasses.replace(measured, entries=entries)
    eff = efficiency_from_table(measured, host, launch_overhead_ms=base.launch_overhead_ms)
    assert eff == pytest.approx(truth, rel=1e-6)
    pixel = load_profile("pixel8-cpu", profile_dir=PROFILES)
    iphone_prof = load_profile("iphone16promax", profile_dir=PROFILES)
    params = estimator_params(pixel, anchor_profile=iphone_prof, anchor_space=space, host_efficiency=eff,
                              host_efficiency_source="synthetic")
    assert params.eff_compute == pytest.approx(truth) and params.scale == 1.0
    assert "measured" in params.calibration


def test_predictions_per_second(iphone, space) -> None:  # type: ignore[no-untyped-def]
    cfgs = _configs(space)
    for cfg in cfgs:
        predict_latency_ms(cfg, iphone, steps=4, precision="fp16", space=space)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.2:
        for cfg in cfgs:
            predict_latency_ms(cfg, iphone, steps=4, precision="fp16", space=space)
        n += len(cfgs)
    assert n / (time.perf_counter() - t0) > 1000


# CLI ----------------------------------------------------------------------------------------


@pytest.fixture()
def cli_dirs(tmp_path: Path, iphone) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    from hwnas.latency import write_table

    shutil.copytree(PROFILES, tmp_path / "profiles")
    write_table(iphone, table_dir=tmp_path / "tables")
    return str(tmp_path / "profiles"), str(tmp_path / "tables")


def test_cli_predict_json(cli_dirs) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = cli_dirs
    res = CliRunner().invoke(main, ["predict", "--device", "iphone16promax", "--experiment", EXPERIMENT,
                                    "--preset", "small", "--steps", "4", "--json", "--profiles", profiles,
                                    "--tables", tables])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["step_ms"] == pytest.approx(360, rel=1e-3) and 1560 - 1e-3 <= out["latency_ms"] <= 1800
    assert out["source"] == "estimated" and out["device"] == "iphone16promax" and out["precision"] == "fp16"
    assert set(out["breakdown"]) == {"denoiser_ms", "denoiser_step_ms_by_kind", "text_encoder_ms", "vae_decoder_ms"}
    assert len(out["config_id"]) == 10


def test_cli_unknown_device_exit_2(cli_dirs) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = cli_dirs
    res = CliRunner().invoke(main, ["predict", "--device", "nokia3310", "--preset", "small", "--profiles", profiles,
                                    "--tables", tables])
    assert res.exit_code == 2
    assert "unknown device 'nokia3310'" in res.output and "iphone16promax" in res.output


def test_cli_lut_build_measured_not_yet(cli_dirs) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = cli_dirs
    runner = CliRunner()
    res = runner.invoke(main, ["lut", "build", "--device", "pixel8", "--tracker", "127.0.0.1:9190", "--key", "pixel8",
                               "--profiles", profiles, "--tables", tables])
    assert res.exit_code == 2 and "TVM" in res.output
    res = runner.invoke(main, ["lut", "build", "--device", "pixel8", "--tracker", "nohost", "--profiles", profiles])
    assert res.exit_code == 2 and "HOST:PORT" in res.output


def test_cli_devices_add_refuses_overwrite(cli_dirs) -> None:  # type: ignore[no-untyped-def]
    profiles, tables = cli_dirs
    runner = CliRunner()
    args = ["devices", "add", "board-y", "--target", '{"kind": "llvm", "mtriple": "aarch64-linux-gnu"}',
            "--profiles", profiles]
    assert runner.invoke(main, args).exit_code == 0
    assert (Path(profiles) / "board-y.toml").exists()
    res = runner.invoke(main, args)
    assert res.exit_code == 2 and "exists" in res.output
    res = runner.invoke(main, ["devices", "--profiles", profiles, "--tables", tables])
    assert res.exit_code == 0 and "board-y" in res.output and "snapgenpp-1024: estimated" in res.output
    res = runner.invoke(main, ["devices", "show", "board-y", "--profiles", profiles, "--tables", tables])
    assert res.exit_code == 0 and "TODO" in res.output
