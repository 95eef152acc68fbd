"""Validation statistics on synthetic numbers, sampling, and `validate_table` with a fake measurement."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from hwnas.latency import (
    KernelKey,
    LatencyTable,
    Timing,
    enumerate_kernels,
    load_profile,
    write_table,
)
from hwnas.latency.adaptive import DEFAULT_STOP
from hwnas.latency.build import measured_meta
from hwnas.latency.validate import (
    accuracy,
    fit_linear,
    kendall,
    sample_subnets,
    spearman,
    validate_table,
)
from hwnas.space import SearchSpace, load_space

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "experiments/shapes-32.toml"


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return load_space(ROOT / EXPERIMENT)


def test_rank_correlations_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats", reason="scipy is not installed")
    rng = random.Random(0)
    x = [rng.random() for _ in range(40)]
    y = [v + rng.gauss(0, 0.2) for v in x]
    y[3] = y[7]  # a tie
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert kendall(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


@pytest.mark.parametrize(("x", "y", "rho", "tau"), [
    ([1, 2, 3, 4], [10, 20, 30, 40], 1.0, 1.0),
    ([1, 2, 3, 4], [4, 3, 2, 1], -1.0, -1.0),
    ([1, 2, 3, 4], [1, 3, 2, 4], 0.8, 2 / 3),
])
def test_rank_correlations_known(x: list[float], y: list[float], rho: float, tau: float) -> None:
    assert spearman(x, y) == pytest.approx(rho)
    assert kendall(x, y) == pytest.approx(tau)


def test_accuracy_counts_and_false_feasible() -> None:
    measured = [10.0, 10.0, 10.0, 10.0]
    predicted = [10.4, 9.2, 11.5, 10.0]  # +4 %, -8 %, +15 %, 0 %
    acc = accuracy(predicted, measured, budget_ms=10.2)
    assert acc["n"] == 4
    assert acc["within_5pct"] == 0.5 and acc["within_10pct"] == 0.75
    assert acc["max_abs_pct"] == pytest.approx(15.0)
    assert acc["mape"] == pytest.approx((4 + 8 + 15 + 0) / 4)
    assert acc["bias_pct"] == pytest.approx((4 - 8 + 15 + 0) / 4)
    # predicted feasible (<= 10.2): 9.2 and 10.0; measured 10.0 <= 10.2 for both -> none false
    assert acc["predicted_feasible"] == 2 and acc["false_feasible_rate"] == 0.0
    acc = accuracy(predicted, [10.0, 11.0, 10.0, 10.0], budget_ms=10.2)
    assert acc["false_feasible_rate"] == 0.5  # 9.2 predicted, 11.0 measured


def test_fit_linear_exact_and_degenerate() -> None:
    a, b = fit_linear([1.0, 2.0, 4.0], [3.0, 5.0, 9.0])
    assert (a, b) == pytest.approx((2.0, 1.0))
    with pytest.raises(ValueError, match="distinct"):
        fit_linear([1.0, 1.0], [2.0, 3.0])
    with pytest.raises(ValueError, match="equal length"):
        accuracy([1.0], [1.0, 2.0], budget_ms=1.0)


def test_samples_are_seeded_distinct_and_disjoint(space: SearchSpace) -> None:
    held = sample_subnets(space, 30, seed=3, purpose="validate")
    assert [c.id for c in held] == [c.id for c in sample_subnets(space, 30, seed=3, purpose="validate")]
    cal = sample_subnets(space, 20, seed=3, purpose="calibrate", exclude=held)
    assert len({c.id for c in held}) == 30
    assert not {c.id for c in held} & {c.id for c in cal}


def _synthetic_table(space: SearchSpace) -> LatencyTable:
    prof = load_profile("host", profile_dir=ROOT / "device_profiles")
    meta = measured_meta(prof, space, experiment_path=EXPERIMENT, remote=False, stop=DEFAULT_STOP, warmup=1)
    entries: dict[KernelKey, Timing] = {}
    for k in enumerate_kernels(space, precisions=("fp32",)):
        ms = 0.002 + k.op.tokens * k.op.dim * (k.op.ffn_ratio + 1) * 1e-6
        entries[k] = Timing(ms, ms * 0.9, ms * 1.1, 0.05, 5, "measured")
    return LatencyTable(meta, entries, prof.text_encoder, prof.vae_decoder)


def test_validate_table_with_fake_measurement(space: SearchSpace, tmp_path: Path) -> None:
    """Measured = 1.2 * predicted + 0.1 ms (+-1 % noise): the corrected LUT is within 5 % everywhere."""
    table = _synthetic_table(space)
    prof = load_profile("host", profile_dir=ROOT / "device_profiles")
    from hwnas.latency.predict import predict_latency_ms

    rng = random.Random(1)

    def measure(cfg):  # type: ignore[no-untyped-def]
        ms = 1.2 * predict_latency_ms(cfg, table, steps=1, precision="fp32", space=space).step_ms + 0.1
        ms *= 1 + rng.uniform(-0.01, 0.01)
        return Timing(ms, ms * 0.95, ms * 1.05, 0.02, 10, "measured")

    cache = tmp_path / "cache.jsonl"
    rep = validate_table(table, space, prof, n=12, seed=0, n_calibration=6, noise_repeats=0, measure=measure,
                         cache=cache, progress=False)
    assert rep["n"] == 12 and rep["n_calibration"] == 6
    assert rep["bias_pct"] < -10  # uncorrected LUT underestimates by ~17 %
    assert rep["corrected"]["within_5pct"] == 1.0 and rep["corrected"]["a"] == pytest.approx(1.2, rel=0.05)
    assert rep["spearman"] > 0.9 and set(rep["baseline"]) >= {"within_5pct", "within_10pct", "mape", "spearman",
                                                              "kendall", "bias_pct", "max_abs_pct", "n"}
    json.dumps(rep)  # serialisable
    assert len(cache.read_text().splitlines()) == 18
    # A rerun reuses the cached measurements (resume): no call to measure.
    rep2 = validate_table(table, space, prof, n=12, seed=0, n_calibration=6, noise_repeats=0,
                          measure=lambda cfg: pytest.fail("measured again"), cache=cache, progress=False)
    assert rep2["rows"] == rep["rows"]


def test_validate_table_prepares_only_unmeasured_configs(space: SearchSpace, tmp_path: Path) -> None:
    """A measure with `prepare` is asked once, before any timing, for every config not in the cache."""
    table = _synthetic_table(space)
    prof = load_profile("host", profile_dir=ROOT / "device_profiles")
    calls: list[tuple[str, object]] = []

    class Fake:
        def prepare(self, cfgs, *, progress):  # type: ignore[no-untyped-def]
            calls.append(("prepare", sorted(c.id for c in cfgs)))

        def __call__(self, cfg):  # type: ignore[no-untyped-def]
            calls.append(("time", cfg.id))
            return Timing(1.0 + len(calls) * 1e-3, 0.9, 1.1, 0.01, 5, "measured")

    cache = tmp_path / "cache.jsonl"
    validate_table(table, space, prof, n=4, seed=0, n_calibration=2, noise_repeats=0, measure=Fake(), cache=cache,
                   progress=False)
    assert calls[0][0] == "prepare" and len(calls[0][1]) == 6
    assert [c[0] for c in calls[1:]] == ["time"] * 6
    calls.clear()
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:4]) + "\n")  # two measurements lost: only they are compiled again
    validate_table(table, space, prof, n=4, seed=0, n_calibration=2, noise_repeats=0, measure=Fake(), cache=cache,
                   progress=False)
    assert calls[0] == ("prepare", sorted(json.loads(line)["config_id"] for line in lines[4:]))
    assert len(calls) == 3


@pytest.mark.slow
def test_tvm_measure_compiles_ahead_in_parallel(space: SearchSpace) -> None:
    """`prepare` with 2 jobs writes one library per config; timing loads it, then deletes it."""
    pytest.importorskip("tvm")
    from hwnas.latency.validate import tvm_measure

    prof = load_profile("host", profile_dir=ROOT / "device_profiles")
    cfgs = [space.smallest(), space.preset("tiny")]
    measure = tvm_measure(space, prof, jobs=2, repeat=3, min_repeat_ms=0, warmup=1)
    measure.prepare(cfgs)
    libs = sorted(Path(measure._dir.name).glob("*.so"))  # type: ignore[union-attr]
    assert [p.stem for p in libs] == sorted(c.id for c in cfgs)
    for cfg in cfgs:
        t = measure(cfg)
        assert t.source == "measured" and t.n == 3 and 0 < t.p10_ms <= t.median_ms <= t.p90_ms
    assert not list(Path(measure._dir.name).glob("*.so"))  # type: ignore[union-attr]


def test_validate_cli_without_table_is_one_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hwnas.cli import main

    res = CliRunner().invoke(main, ["lut", "validate", "--device", "host", "--experiment", str(ROOT / EXPERIMENT),
                                    "--n", "3", "--tables", str(tmp_path),
                                    "--profiles", str(ROOT / "device_profiles")])
    assert res.exit_code == 2
    assert "no latency table for device 'host'" in res.output


def test_record_validation_writes_correction_and_interval_together(space: SearchSpace, tmp_path: Path) -> None:
    from hwnas.latency import load_table
    from hwnas.latency.validate import record_validation

    table = _synthetic_table(space)
    write_table(table, table_dir=tmp_path)
    rows = [{"predicted_ms": p, "measured_ms": p * f} for p, f in zip((1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
                                                                       (1.1, 0.9, 1.2, 1.05, 0.95, 1.15))]
    report = {"seed": 0, "rows": rows, "n_calibration": 20, "corrected": {"a": 1.1, "b_ms": 0.2}}
    assert record_validation(table, report, interval=False, correction=False, table_dir=tmp_path) is None
    record_validation(table, report, interval=True, correction=True, table_dir=tmp_path)
    loaded = load_table("host", space.name, table_dir=tmp_path, profile_dir=ROOT / "device_profiles")
    assert loaded.meta.correction is not None and loaded.meta.correction.a == 1.1
    assert loaded.meta.error is not None and loaded.meta.error.n == 6  # both in one rewrite: neither lost
