from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from hwnas.latency import (
    Correction,
    LatencyTable,
    MissingKernelError,
    Timing,
    build_estimated_table,
    calibrate,
    kernels,
    load_profile,
    predict_latency_ms,
    prior_params,
    read_measurements,
)
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
    """The iPhone's estimator calibrated on the paper's point, over the kernels of the presets and some random
    sub-DiTs."""
    prof = load_profile("iphone16promax", profile_dir=PROFILES)
    rows = read_measurements(PROFILES / "measurements" / "iphone16promax.csv", space=space, profile=prof)
    params = calibrate(prof, space, rows, prior=prior_params(prof), source="calibrated on the paper's point").params
    cfgs = [dataclasses.replace(cfg, **{stage: dataclasses.replace(cfg.stage(stage), depth=d)})
            for cfg in _configs(space) for stage in ("down", "middle", "up") for d in space.stages[stage].depth]
    keys = list(dict.fromkeys(k for cfg in cfgs for p in prof.precisions for k in kernels(cfg, space, precision=p)))
    return build_estimated_table(prof, space, params, experiment_path=EXPERIMENT, keys=keys)


def test_iphone_calibration_matches_paper(iphone, space) -> None:  # type: ignore[no-untyped-def]
    pred = predict_latency_ms(space.preset("small"), iphone, steps=4, precision="fp16", space=space)
    assert pred.step_ms == pytest.approx(360.0, rel=0.03)  # a regularised fit: close to the one point, not on it
    assert pred.vae_decoder_ms == 120 and pred.text_encoder_ms > 0
    assert pred.total_ms == pytest.approx(4 * pred.step_ms + pred.vae_decoder_ms + pred.text_encoder_ms)
    assert pred.source == "estimated" and pred.device == "iphone16promax"
    assert "calibrated" in pred.provenance and "estimated" in pred.provenance
    cfg_pred = predict_latency_ms(space.preset("small"), iphone, steps=4, precision="fp16", space=space, guidance="cfg")
    assert cfg_pred.denoiser_ms == pytest.approx(2 * pred.denoiser_ms) and cfg_pred.passes == 2


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
