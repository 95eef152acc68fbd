"""Run identity: resume by identity (not by date), refuse or restart on changed inputs, --timeout,
non-finite values, the run's files free of absolute checkout paths and passwords."""

from __future__ import annotations

import datetime as dt
import gc
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from hwnas.cli import main
from hwnas.search import run_search
from hwnas.search.run import AllTrialsFailedError, RunConflictError

DAY1, DAY2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)


def _copy_inputs(tiny_env, tmp_path: Path) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    tables, ckpt = tmp_path / "tables", tmp_path / "ckpt"
    shutil.copytree(tiny_env.tables, tables)
    shutil.copytree(tiny_env.checkpoint, ckpt)
    return tables, ckpt


def test_resume_across_midnight_and_a_larger_trials_extends(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    reports = tmp_path / "reports"
    first = run_search(tiny_env.settings(n_trials=8, timeout_s=1e-9), reports_dir=reports, today=DAY1, report=False)
    assert first["timed_out"] and first["cost"]["trials"] == 1  # the timeout stops after the first trial
    run_dir = Path(first["run_dir"])
    assert run_dir.name.endswith(DAY1.isoformat())
    second = run_search(tiny_env.settings(n_trials=8), reports_dir=reports, today=DAY2, report=False)
    assert Path(second["run_dir"]) == run_dir and second["notes"] == [f"resuming {run_dir}"]
    assert second["cost"]["trials"] == 8
    third = run_search(tiny_env.settings(n_trials=11), reports_dir=reports, today=DAY2, report=False)
    assert Path(third["run_dir"]) == run_dir and third["cost"]["trials"] == 11  # extended, not restarted
    trials = pd.read_csv(run_dir / "trials.csv")
    assert list(trials["trial"]) == list(range(11)) and [p.name for p in reports.iterdir()] == [run_dir.name]


@pytest.mark.parametrize("changed", ["latency table", "checkpoint"])
def test_changed_input_starts_a_new_run_or_refuses_out(tiny_env, tmp_path: Path, changed: str) -> None:  # type: ignore[no-untyped-def]
    tables, ckpt = _copy_inputs(tiny_env, tmp_path)
    settings = tiny_env.settings(table_dir=str(tables), checkpoint=str(ckpt), n_trials=4)
    reports = tmp_path / "reports"
    first = run_search(settings, reports_dir=reports, today=DAY1, report=False)
    old_dir = Path(first["run_dir"])
    # a rebuilt table / retrained checkpoint: its content changes (here a sidecar gains a newline)
    touched = next(tables.rglob("*.meta.json")) if changed == "latency table" else ckpt / "supernet.json"
    touched.write_text(touched.read_text() + "\n")
    gc.collect()  # the first run's SQLite connections close (and checkpoint the WAL) now, not mid-comparison
    before = {p.name: p.read_bytes() for p in old_dir.iterdir() if p.is_file()}

    second = run_search(settings, reports_dir=reports, today=DAY1, report=False)
    assert Path(second["run_dir"]) != old_dir
    assert len(second["notes"]) == 1 and f"{changed} changed" in second["notes"][0]
    assert {p.name: p.read_bytes() for p in old_dir.iterdir() if p.is_file()} == before

    with pytest.raises(RunConflictError, match=f"{changed} changed.*--force"):
        run_search(settings, out=old_dir, report=False)
    assert {p.name: p.read_bytes() for p in old_dir.iterdir() if p.is_file()} == before
    forced = run_search(settings, out=old_dir, force=True, report=False)
    assert forced["cost"]["trials"] == 4 and len(forced["cost"]["sessions"]) == 1  # replaced, not mixed
    assert json.loads((old_dir / "settings.json").read_text())["identity"] == second["settings"]["identity"]


def test_out_into_another_search_refuses_without_force(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_search(tiny_env.settings(n_trials=3), out=tmp_path / "a", report=False)
    with pytest.raises(RunConflictError, match="confidence 0.9 -> 0.5.*--force"):
        run_search(tiny_env.settings(n_trials=3, confidence=0.5), out=tmp_path / "a", report=False)


def test_timeout_leaves_a_partial_report(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "t"
    code = CliRunner().invoke(main, ["search", *tiny_env.cli_args(), "--trials", "6", "--timeout", "1e-9",
                                     "--out", str(run_dir)])
    assert code.exit_code == 0, code.output
    assert "stopped after --timeout" in code.output
    assert len(pd.read_csv(run_dir / "trials.csv")) == 1 and (run_dir / "report.html").is_file()
    (run_dir / "report.html").unlink()
    again = CliRunner().invoke(main, ["report", str(run_dir)])
    assert again.exit_code == 0 and (run_dir / "report.html").is_file()


def test_non_finite_quality_fails_the_trial_and_an_all_failed_search_exits_2(
        tiny_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    import hwnas.metrics.val_loss as vl

    real = vl.val_loss
    # NaN for about half of the sub-DiTs, chosen by config id
    monkeypatch.setattr(vl, "val_loss", lambda net, cfg, val: math.nan if int(cfg.id, 16) % 2 else real(net, cfg, val))
    res = run_search(tiny_env.settings(n_trials=10), out=tmp_path / "some", report=False)
    assert res["failed"] and all("val loss of" in r and "nan" in r for r in res["failed"])
    assert res["cost"]["trials"] + len(res["failed"]) == 10 and res["cost"]["failed_trials"] == len(res["failed"])
    assert not pd.read_csv(tmp_path / "some" / "trials.csv")["quality"].isin([math.inf]).any()

    monkeypatch.setattr(vl, "val_loss", lambda net, cfg, val: math.nan)
    with pytest.raises(AllTrialsFailedError, match="every evaluation failed.*val loss"):
        run_search(tiny_env.settings(n_trials=4), out=tmp_path / "all", report=False)
    out = CliRunner().invoke(main, ["search", *tiny_env.cli_args(), "--trials", "3", "--out", str(tmp_path / "cli")])
    assert out.exit_code == 2 and "every evaluation failed" in out.output and "Traceback" not in out.output
    assert (tmp_path / "cli" / "trials.csv").is_file()  # the failed run still leaves its files


def test_non_finite_latency_fails_the_trial(tiny_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from dataclasses import replace

    import hwnas.search.objective as objective

    real = objective.predict_latency_ms
    monkeypatch.setattr(objective, "predict_latency_ms",
                        lambda cfg, *a, **k: replace(real(cfg, *a, **k), total_ms=math.inf))
    with pytest.raises(AllTrialsFailedError, match="every evaluation failed.*latency of .* is inf"):
        run_search(tiny_env.settings(n_trials=2), out=tmp_path / "lat", report=False)


def test_run_files_hold_no_checkout_paths(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from hwnas.paths import REPO_ROOT

    reports = REPO_ROOT / "reports" / f"_test-{tmp_path.name}"  # inside the checkout: written relative
    try:
        res = run_search(tiny_env.settings(n_trials=3), out=reports, report=True)
        assert res["settings"]["storage"] == f"sqlite:///reports/{reports.name}/study.db"
        for path in reports.rglob("*"):
            if path.is_file() and path.suffix in (".json", ".html", ".csv"):
                assert str(REPO_ROOT).encode() not in path.read_bytes(), path
    finally:
        shutil.rmtree(reports, ignore_errors=True)
