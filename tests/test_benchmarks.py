"""The benchmark scripts share one interface: `--json OUT` (nothing written without it), `--seed`, a
table and a final `summary:` line; bad flags or inputs end in one line and exit code 2."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = {  # script -> argv before --help
    "budget_sweep.py": [], "distill.py": [], "export_parity.py": [], "host_peaks.py": [], "int4.py": [],
    "int4_scale.py": [], "lut_accuracy.py": [], "lut_build.py": [], "lut_gap.py": [], "noise_level.py": [],
    "proxy_quality.py": [], "rank_fidelity.py": ["report"], "screen_fidelity.py": [], "search_efficiency.py": [],
    "transfer.py": [], "tvm_schedule.py": [], "tvm_vs_ort.py": [], "width_quality.py": [],
}


def _run_in_process(script: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """Run benchmarks/`script` as __main__ with `argv`; its exit code (0 when it returns)."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", [script, *argv])
    # transfer.py sets OMP_WAIT_POLICY at import when unset; keep this process's environment as it was
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    try:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_every_python_benchmark_is_listed() -> None:
    scripts = {p.name for p in BENCH.glob("*.py") if not p.name.startswith("_")}
    assert scripts == set(SCRIPTS)


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_lists_json_and_seed(script: str, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_in_process(script, [*SCRIPTS[script], "--help"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "--json OUT" in out
    assert "--seed SEED" in out


def test_rank_fidelity_train_says_it_has_no_seed(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_in_process("rank_fidelity.py", ["train", "--help"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "no JSON report" in out and "no --seed" in out and "--json" not in out.replace("no JSON", "")


@pytest.mark.parametrize("argv", [
    ["--json", "."],                          # a directory
    ["--json", "out.txt"],                    # not .json
    ["--seed", "x"],
    ["--experiment", "no-such-experiment.toml"],
    ["--preset", "no-such-preset", "--experiment", "experiments/shapes-32.toml"],
])
def test_user_mistakes_end_in_one_line_and_exit_2(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    assert _run_in_process("int4_scale.py", argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_distill_without_json_writes_no_report(tmp_path: Path, tiny_checkpoint: Path,
                                               tiny_experiment: Path) -> None:
    """distill.py used to write reports/distill.json by default."""
    from hwnas.space import load_space

    config = tmp_path / "config.json"
    config.write_text(load_space(tiny_experiment).smallest().to_json())
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    res = _run("distill.py", "--checkpoint", str(tiny_checkpoint), "--config", str(config), "--steps", "1",
               "--batch-size", "2", "--n", "2", "--modes", "kd", "--baselines", "4:1", "--student-steps", "4",
               "--distill-at", "4", "--work", str(tmp_path / "work"), cwd=cwd)
    assert res.returncode == 0, res.stderr
    assert list(cwd.iterdir()) == []
    lines = res.stdout.strip().splitlines()
    assert lines[-1].startswith("summary: compositional")
    assert any(line.startswith("kd student 4 steps") for line in lines)


def test_distill_summary_gives_the_share_of_the_few_step_gap_each_student_closes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    summary = runpy.run_path(str(BENCH / "distill.py"), run_name="distill_bench")["_summary"]
    rows = [{"stage": stage, "metric": "compositional", "value": value, "mode": mode} for stage, value, mode in (
        ("sub-DiT 28 steps CFG 4.0", 0.30, "none"), ("sub-DiT 2 steps CFG 4.0", 0.20, "none"),
        ("sub-DiT 2 steps CFG 1.0", 0.10, "none"), ("kdmd student 2 steps", 0.25, "kdmd"),
        ("kd student 2 steps", 0.15, "kd"), ("kdmd student 4 steps", 0.40, "kdmd"))]
    (line,) = summary(rows, 2)
    assert "over the undistilled sub-DiT at 2 steps (0.1)" in line
    assert "teacher 28 steps 3.00x" in line and "kdmd 2.50x" in line and "kd 1.50x" in line
    assert "kdmd closes 50% of the gap" in line and "kd closes -50% of the gap" in line
    assert summary(rows, 3) == ["no undistilled 3-step row (add 3:1 to --baselines) to compare with"]


def test_int4_scores_a_saved_sub_dit_with_paired_changes_per_seed(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from hwnas.compress import from_supernet, save_subdit
    from hwnas.train import load_supernet

    net = load_supernet(tiny_checkpoint)
    save_subdit(from_supernet(net, net.space.smallest()), tmp_path / "model")
    out = tmp_path / "int4.json"
    res = _run("int4.py", "--checkpoint", str(tiny_checkpoint), "--model", str(tmp_path / "model"), "--steps", "1",
               "--cfg-scale", "1", "--n", "2", "--eval-seeds", "2", "--specs", "rtn-g16-asym,kmeans-mixed-side8",
               "--json", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["seeds"] == [0, 1] and report["model"] == str(tmp_path / "model")
    assert [(r["method"], r["group"], r["symmetric"], r["mixed"], r["side_bits"]) for r in report["rows"]] == [
        ("rtn", 16, False, False, 16), ("kmeans", None, True, True, 8)]
    for row in report["rows"]:
        diffs = [100 * (a - b) for a, b in zip(row["acc_quant_seeds"], row["acc_fp32_seeds"], strict=True)]
        assert row["acc_change_points"] == pytest.approx(diffs) and len(diffs) == 2
        assert row["acc_change_mean"] == pytest.approx(sum(diffs) / 2) and row["acc_change_se"] is not None
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("summary: smallest rtn (rtn-g16-asym)") and "kmeans-mixed-side8" in last
    bad = _run("int4.py", "--specs", "rtn-g16-fast", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown part 'fast'" in bad.stderr


def test_noise_level_scores_the_real_images_then_each_start_time(tmp_path: Path, tiny_checkpoint: Path) -> None:
    out = tmp_path / "levels.json"
    res = _run("noise_level.py", "--checkpoint", str(tiny_checkpoint), "--config", "smallest", "--n", "4",
               "--levels", "0.05,1", "--steps", "2", "--json", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["t0"] for r in rows] == ["real", "0.05", "1"]
    assert rows[0]["accuracy"] == 1.0 and rows[0]["shapes_read"] == 1.0
    assert all(sum(r["failures"].values()) == round(4 * (1 - r["accuracy"])) for r in rows)
    assert res.stdout.strip().splitlines()[-1].startswith("summary: t0 0.05: accuracy x")
    bad = _run("noise_level.py", "--levels", "0,1", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "(0, 1]" in bad.stderr


def test_proxy_quality_without_a_reference_network_ends_in_one_line(tmp_path: Path, tiny_checkpoint: Path) -> None:
    res = _run("proxy_quality.py", "--checkpoint", str(tiny_checkpoint), "--n", "2", cwd=tmp_path)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "fd_ref" in res.stderr and not res.stdout


def test_int4_scale_writes_json_only_where_asked(tmp_path: Path, tiny_experiment: Path) -> None:
    out = tmp_path / "deep" / "int4-scale.json"
    res = _run("int4_scale.py", "--experiment", str(tiny_experiment), "--preset", "small", "--group", "16",
               "--seed", "3", "--json", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "tiny-16.toml"]
    data = json.loads(out.read_text())
    assert data["seed"] == 3 and data["matmuls"] and {"middle", "up"} == set(data["per_block_s"])
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("summary: ") and "int4 (level 4) / fp32" in last


def test_transfer_counts_eager_elementwise_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    from hwnas.space import load_space

    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    import transfer

    space = load_space(ROOT / transfer.PROBE_EXPERIMENT)
    # eager runs each element-wise chain as several ops, each a pass over memory: more than the model's
    # one pass, fewer than ten (measured 3.25 on the probe, 3.2 on snapgenpp-256 sub-DiTs)
    assert 2.0 < transfer.eager_elementwise_passes(space, space.smallest()) < 6.0


def test_transfer_coverage_interval_brackets_the_coverage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    import transfer

    n = 40
    calib = [[d] for d in range(n)]  # k = 1: each sub-DiT once
    always = [{i: True for i in range(n) if i != d} for d in range(n)]
    assert transfer.coverage_interval(always, calib, n, seed=0) == (1.0, 1.0)
    # sub-DiTs 0-9 are never inside: coverage about 0.75
    some = [{i: i >= 10 for i in range(n) if i != d} for d in range(n)]
    mean = sum(sum(row.values()) / len(row) for row in some) / n
    lo, hi = transfer.coverage_interval(some, calib, n, seed=0)
    assert lo < mean < hi and hi - lo < 0.4
    assert transfer.coverage_interval(some, calib, n, seed=0) == (lo, hi)  # seeded
    # calibrating on sub-DiTs 0-9 misses everything else: resampling the calibration rows widens the interval
    row_driven = [{i: d >= 10 for i in range(n) if i != d} for d in range(n)]
    lo2, hi2 = transfer.coverage_interval(row_driven, calib, n, seed=0)
    held_only = transfer.coverage_interval(row_driven, [[0]] * n, n, seed=0)  # every set weighted alike
    assert hi2 - lo2 > 0.1 and held_only[1] - held_only[0] < hi2 - lo2
