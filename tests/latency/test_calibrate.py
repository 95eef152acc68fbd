from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from hwnas.cli import main
from hwnas.latency import (
    KindParams,
    calibrate,
    calibrated_error,
    kernel_counts,
    load_profile,
    prior_error,
    prior_params,
    read_measurements,
)
from hwnas.latency.calibrate import Measurement, MeasurementError
from hwnas.latency.estimate import estimate_kernel_ms
from hwnas.space import load_space

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "device_profiles"
EXPERIMENT = "experiments/snapgenpp-1024.toml"
HEADER = "config,ms,per,steps,precision,runtime,note\n"


@pytest.fixture(scope="module")
def space():  # type: ignore[no-untyped-def]
    return load_space(ROOT / EXPERIMENT)


@pytest.fixture(scope="module")
def iphone():  # type: ignore[no-untyped-def]
    return load_profile("iphone16promax", profile_dir=PROFILES)


def _step(cfg, space, prof, params) -> float:  # type: ignore[no-untyped-def]
    return sum(c * estimate_kernel_ms(k, prof, params) for k, c in kernel_counts(cfg, space, precision="fp16"))


def _truth(prof):  # type: ignore[no-untyped-def]
    """A device whose parameters differ from the priors (what calibration should find)."""
    prior = prior_params(prof)
    factors = {"linear": (1.8, 1.3, 0.5), "attention": (0.7, 2.2, 2.0), "conv": (1.2, 0.8, 1.0),
               "elementwise": (1.0, 1.6, 0.7)}
    kinds = {k: KindParams(p.eff_compute * factors[k][0], p.eff_memory * factors[k][1], p.overhead_ms * factors[k][2])
             for k, p in prior.kinds.items()}
    return dataclasses.replace(prior, kinds=kinds)


def _measure(cfgs, space, prof, truth):  # type: ignore[no-untyped-def]
    return [Measurement(c, _step(c, space, prof, truth), "step", None, "fp16", line=i + 2) for i, c in enumerate(cfgs)]


def _mape(cfgs, space, prof, params, truth) -> float:  # type: ignore[no-untyped-def]
    return sum(abs(_step(c, space, prof, params) / _step(c, space, prof, truth) - 1) for c in cfgs) / len(cfgs)


def test_one_row_sets_the_level_ten_rows_dominate(space, iphone) -> None:  # type: ignore[no-untyped-def]
    truth, prior = _truth(iphone), prior_params(iphone)
    rng = random.Random(1)
    pool = [space.sample(rng) for _ in range(40)]
    held = pool[20:]
    one = calibrate(iphone, space, _measure([space.preset("small")], space, iphone, truth), prior=prior, source="t")
    ten = calibrate(iphone, space, _measure(pool[:10], space, iphone, truth), prior=prior, source="t")
    assert abs(one.rows[0]["residual_pct"]) < 5  # the one point is (nearly) met
    err_prior, err_one, err_ten = (_mape(held, space, iphone, p, truth) for p in (prior, one.params, ten.params))
    assert err_ten < err_one < err_prior and err_ten < 0.05
    assert ten.loo_mape_pct < 10 and len(ten.rows) == 10 and "regularised" in one.note
    # intervals: the prior is widest, one row narrower, ten rows narrower still
    widths = [e.ratio(0.95) / e.ratio(0.05) for e in (prior_error(), one.params.error, ten.params.error)]
    assert widths[0] > widths[1] > widths[2]


def test_cpu_calibrations_use_the_measured_shape_prior(space, iphone) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from hwnas.latency.interval import ASSUMED_SHAPE_PRIOR, MEASURED_SHAPE_PRIORS, PRIOR_SHAPE_SD, shape_prior

    one, many = MEASURED_SHAPE_PRIORS[("cpu", False)], MEASURED_SHAPE_PRIORS[("cpu", True)]
    assert shape_prior("npu", 1) == shape_prior("gpu", 8) == ASSUMED_SHAPE_PRIOR
    assert shape_prior("cpu", 1) == one and shape_prior("cpu", 4) == many
    assert one.sd < many.sd < PRIOR_SHAPE_SD
    rows = _measure([space.preset("small")], space, iphone, _truth(iphone))
    errors = {}
    for kind, threads in (("npu", 6), ("cpu", 1), ("cpu", 4)):
        phone = dataclasses.replace(iphone, kind=kind, threads=threads)
        error = calibrate(phone, space, rows, prior=prior_params(phone), source="t").params.error
        assert error is not None and "shape prior" in error.source
        errors[(kind, threads)] = error
    # one row: the interval is the shape prior alone (x sqrt(2)), t with the prior's worth as its dof
    for (kind, threads), prior in ((("npu", 6), ASSUMED_SHAPE_PRIOR), (("cpu", 1), one), (("cpu", 4), many)):
        assert errors[(kind, threads)].log_sd == pytest.approx(prior.sd * math.sqrt(2))
        assert errors[(kind, threads)].dof == prior.dof
    assert errors[("cpu", 1)].ratio(0.95) < errors[("cpu", 4)].ratio(0.95) < errors[("npu", 6)].ratio(0.95)


def test_calibrated_error_shrinks_with_points() -> None:
    small = [calibrated_error([0.05] * k, source="t").ratio(0.95) for k in (1, 3, 10, 100)]
    assert small == sorted(small, reverse=True)
    assert calibrated_error([0.05] * 100, source="t").ratio(0.95) == pytest.approx(math.exp(1.66 * 0.053), rel=0.05)


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(HEADER + body)
    return path


@pytest.mark.parametrize(("body", "needle"), [
    ("nosuch,360,step,,,,\n", "unknown config 'nosuch'"),
    ("small,0,step,,,,\n", "ms must be a positive number"),
    ("small,-3,step,,,,\n", "ms must be a positive number"),
    ("small,nan,step,,,,\n", "ms must be a positive number"),
    ("small,abc,step,,,,\n", "ms must be a number"),
    ("small,360,frame,,,,\n", "per must be one of step, image"),
    ("small,1500,image,,,,\n", "needs the steps column"),
    ("small,360,step,,fp32,,\n", "precision must be one the iphone16promax profile has"),
    ("small,360,step,,,,\nsmall,350,step,,,,\n", "m.csv:3: duplicate of line 2"),
    ("small,0.36,step,,,,\n", "more than 10x off"),
    ("small,360000,step,,,,\n", "more than 10x off"),
    ("small,100,image,4,,,\n", "less than the profile's text encoder and VAE decoder"),
    ("", "no measurements"),
])
def test_bad_measurements(tmp_path: Path, space, iphone, body: str, needle: str) -> None:  # type: ignore[no-untyped-def]
    path = _write(tmp_path, body)
    with pytest.raises(MeasurementError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        rows = read_measurements(path, space=space, profile=iphone)
        calibrate(iphone, space, rows, prior=prior_params(iphone), source="t")


def test_config_by_json_and_id(tmp_path: Path, space, iphone) -> None:  # type: ignore[no-untyped-def]
    cfg = space.preset("tiny")
    body = (f"{space.preset('small').id},360,step,,,,\n"
            f"\"{cfg.to_json().replace(chr(34), chr(34) * 2)}\",1200,image,4,,,\n")
    rows = read_measurements(_write(tmp_path, body), space=space, profile=iphone)
    assert [r.config for r in rows] == [space.preset("small"), cfg] and rows[1].steps == 4


def _cli_dirs(tmp_path: Path) -> tuple[Path, Path]:
    tables = tmp_path / "tables"
    shutil.copytree(ROOT / "latency_tables" / "iphone16promax", tables / "iphone16promax")
    return tables, tables / "iphone16promax" / "snapgenpp-1024.meta.json"


def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    tables, meta = _cli_dirs(tmp_path)
    before = {p.name: p.read_bytes() for p in meta.parent.iterdir()}
    bad = _write(tmp_path, "small,0.36,step,,,,\n")
    res = CliRunner().invoke(main, ["lut", "calibrate", "--device", "iphone16promax", "--measurements", str(bad),
                                    "--tables", str(tables), "--profiles", str(PROFILES), "--experiment",
                                    str(ROOT / EXPERIMENT)])
    assert res.exit_code == 2 and "s/ms" not in res.output and "more than 10x off" in res.output
    assert {p.name: p.read_bytes() for p in meta.parent.iterdir()} == before


def test_cli_calibrate_to_another_folder(tmp_path: Path) -> None:
    tables, meta = _cli_dirs(tmp_path)
    good = _write(tmp_path, "small,360,step,,fp16,Core ML,paper\ntiny,250,step,,fp16,Core ML,made up\n")
    shipped = (ROOT / "latency_tables/iphone16promax/snapgenpp-1024.meta.json").read_bytes()
    res = CliRunner().invoke(main, ["lut", "calibrate", "--device", "iphone16promax", "--measurements", str(good),
                                    "--tables", str(tables), "--profiles", str(PROFILES), "--experiment",
                                    str(ROOT / EXPERIMENT)])
    assert res.exit_code == 0, res.output
    assert "leave-one-out error: MAPE" in res.output
    assert (ROOT / "latency_tables/iphone16promax/snapgenpp-1024.meta.json").read_bytes() == shipped
    data = json.loads(meta.read_text())
    assert data["calibration"].startswith("calibrated on 2 measurements (") and data["error"]["n"] == 2
    assert [r["line"] for r in data["calibration_fit"]["rows"]] == [2, 3]
    res = CliRunner().invoke(main, ["predict", "--device", "iphone16promax", "--preset", "small", "--json",
                                    "--tables", str(tables), "--profiles", str(PROFILES), "--experiment",
                                    str(ROOT / EXPERIMENT)])
    out = json.loads(res.output)
    assert out["step_ms_lo"] < out["step_ms"] < out["step_ms_hi"]
    assert out["latency_ms_lo"] < out["latency_ms"] < out["latency_ms_hi"] and out["confidence"] == 0.9
    assert out["interval"]["kind"] == "calibrated"


def test_shipped_iphone_table_is_the_checked_in_calibration() -> None:
    data = json.loads((ROOT / "latency_tables/iphone16promax/snapgenpp-1024.meta.json").read_text())
    fit = data["calibration_fit"]
    assert fit["file"] == "device_profiles/measurements/iphone16promax.csv" and fit["k"] == 1
    from hwnas.latency import file_sha256

    assert fit["sha256"] == file_sha256(ROOT / fit["file"])


def test_dispatch_probe_recovers_a_known_overhead_and_the_cli_prints_the_profile_table(tmp_path: Path) -> None:
    from hwnas.latency import Figure, build_estimated_table, load_profile, predict_latency_ms
    from hwnas.latency.calibrate import PROBE_EXPERIMENT, dispatch_overhead_us
    from hwnas.space import load_space

    profile = load_profile("pixel8", profile_dir=ROOT / "device_profiles")
    probe = load_space(ROOT / PROBE_EXPERIMENT)
    cfg = probe.smallest()
    # a step that is the prior's roofline plus 20 us a primitive, as a runtime with that overhead would take
    known = dataclasses.replace(profile, dispatch_us=Figure(20.0, "measured: test"))
    table = build_estimated_table(known, probe, prior_params(known), experiment_path="x", precisions=("fp16",))
    step_ms = predict_latency_ms(cfg, table, steps=1, precision="fp16", space=probe).step_ms
    us, primitives = dispatch_overhead_us(profile, probe, cfg, step_ms)
    assert us == pytest.approx(20.0, rel=1e-6) and primitives > 100
    with pytest.raises(ValueError, match="not above its roofline"):
        dispatch_overhead_us(profile, probe, cfg, 1e-6)

    out = CliRunner().invoke(main, ["lut", "dispatch", "--device", "pixel8", "--probe-ms", f"{step_ms:.6f}",
                                    "--passes", "2"])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("[runtime.dispatch]\n") and "elementwise_passes = 2" in out.output
    assert '"measured: the smallest shapes-32 sub-DiT' in out.output
    # the printed table is a valid profile table: pasted into the profile, it loads
    text = (ROOT / "device_profiles/pixel8.toml").read_text().replace(
        "[pipeline.text_encoder]", out.output + "\n[pipeline.text_encoder]", 1)
    (tmp_path / "pixel8.toml").write_text(text)
    pasted = load_profile("pixel8", profile_dir=tmp_path)
    assert pasted.dispatch_us is not None and pasted.elementwise_passes is not None
    assert pasted.elementwise_passes.value == 2.0
    bad = CliRunner().invoke(main, ["lut", "dispatch", "--device", "pixel8", "--probe-ms", "0.00001"])
    assert bad.exit_code == 2 and "not above its roofline" in bad.output and "Traceback" not in bad.output


def test_thread_scaling_fit_recovers_a_known_half_speedup_and_the_cli_prints_the_profile_table(tmp_path: Path) -> None:
    from hwnas.latency import load_profile
    from hwnas.latency.calibrate import half_speedup_figure
    from hwnas.latency.estimate import thread_speedup

    flops = [2 * 256 * a * b for a, b in ((64, 64), (128, 512), (256, 1024), (512, 2048))]
    one = [f / 50e6 for f in flops]  # 50 GFLOP/s on one thread, in ms
    many = [t / thread_speedup(f, 4, 40e6) + 0.05 for f, t in zip(flops, one)]  # h = 40 MFLOP, 50 us a call
    figure = half_speedup_figure(flops, one, many, 4, how="synthetic")
    assert figure.value == pytest.approx(40.0, rel=0.05) and figure.source.startswith("measured: synthetic")
    assert "50 us per call" in figure.source
    for bad, match in (((flops[:2], one[:2], many[:2], 4), ">= 3 sizes"), ((flops, one, many, 1), "more than one"),
                       ((flops, [0.0, *one[1:]], many, 4), "positive")):
        with pytest.raises(ValueError, match=match):
            half_speedup_figure(*bad, how="x")

    csv_path = tmp_path / "ladder.csv"
    rows = "".join(f"{f / 1e6},{a},{b}\n" for f, a, b in zip(flops, one, many))
    csv_path.write_text("mflop,ms_one,ms_threads\n" + rows)
    out = CliRunner().invoke(main, ["lut", "threading", "--device", "pixel8-cpu", "--timings", str(csv_path)])
    assert out.exit_code == 0, out.output
    assert out.output.startswith("[runtime.threading]\n") and "hwnas lut threading on" in out.output
    text = (ROOT / "device_profiles/pixel8-cpu.toml").read_text().replace(
        "[pipeline.text_encoder]", out.output + "\n[pipeline.text_encoder]", 1)
    (tmp_path / "pixel8-cpu.toml").write_text(text)
    pasted = load_profile("pixel8-cpu", profile_dir=tmp_path).half_speedup_mflop
    assert pasted is not None and pasted.value == pytest.approx(40.0, rel=0.05)
    csv_path.write_text("mflop,ms_one\n1,2\n")
    bad = CliRunner().invoke(main, ["lut", "threading", "--device", "pixel8-cpu", "--timings", str(csv_path)])
    assert bad.exit_code == 2 and "missing ms_threads" in bad.output and "Traceback" not in bad.output
    csv_path.write_text("mflop,ms_one,ms_threads\n1,2,nan\n")
    bad = CliRunner().invoke(main, ["lut", "threading", "--device", "pixel8-cpu", "--timings", str(csv_path)])
    assert bad.exit_code == 2 and "line 2: ms_threads must be a positive number" in bad.output


def test_a_measured_shape_prior_is_the_largest_runtime_and_worth_more_when_runtimes_agree() -> None:
    from hwnas.latency.interval import MAX_PRIOR_DOF, PRIOR_DOF, measured_shape_prior

    one = measured_shape_prior({"a": 0.04}, "x")
    close, apart = measured_shape_prior({"a": 0.04, "b": 0.05}, "x"), measured_shape_prior({"a": 0.02, "b": 0.05}, "x")
    assert one.sd == 0.04 and close.sd == apart.sd == 0.05 and one.dof == PRIOR_DOF
    assert close.dof == pytest.approx(1 / math.log(1.25) ** 2, abs=0.05)  # 20 measurements
    assert measured_shape_prior({"a": 0.031, "b": 0.05}, "x").dof == pytest.approx(1 / math.log(0.05 / 0.031) ** 2,
                                                                                  abs=0.05)  # 4.4
    assert apart.dof == PRIOR_DOF  # 1 / ln(2.5)^2 = 1.2: no more than an assumed prior
    assert measured_shape_prior({"a": 0.03, "b": 0.03}, "x").dof == MAX_PRIOR_DOF
    # three runtimes: worth what one is, 1 / (2 var) of their log sds
    three = measured_shape_prior({"a": 0.03, "b": 0.04, "c": 0.05}, "x")
    logs = [math.log(0.03), math.log(0.04), math.log(0.05)]
    var = sum((x - sum(logs) / 3) ** 2 for x in logs) / 2
    assert three.sd == 0.05 and three.dof == pytest.approx(1 / (2 * var), abs=0.05)
    assert "a 2.0%, b 5.0%" in apart.source
