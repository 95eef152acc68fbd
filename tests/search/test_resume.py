"""SIGKILL a running `hwnas search` and rerun the same command: no trial lost, none duplicated."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[2]


def _states(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
    except sqlite3.Error:
        return {}


def test_sigkill_then_rerun_resumes(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "run"
    n_trials = 40
    cmd = [sys.executable, "-m", "hwnas.cli", "search", *tiny_env.cli_args(), "--trials", str(n_trials),
           "--out", str(run_dir), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = run_dir / "study.db"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and _states(db).get("COMPLETE", 0) < 8:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    before = _states(db)
    assert 8 <= before.get("COMPLETE", 0) < n_trials, before  # killed mid-search

    storage = f"sqlite:///{db}"
    name = optuna.get_all_study_names(storage)[0]
    done_before = {t.number: t.params for t in optuna.load_study(study_name=name, storage=storage).trials
                   if t.state == TrialState.COMPLETE}
    running_before = {t.number: t.params for t in optuna.load_study(study_name=name, storage=storage).trials
                      if t.state == TrialState.RUNNING}

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    trials = optuna.load_study(study_name=name, storage=storage).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(complete) == n_trials  # nothing lost, nothing extra
    assert len({t.number for t in trials}) == len(trials)
    assert {n: p for n, p in ((t.number, t.params) for t in complete) if n in done_before} == done_before
    assert {t.number for t in failed} == set(running_before)  # the killed trial(s), and only they
    for number, params in running_before.items():  # each re-run exactly once, with the same parameters
        retries = [t for t in complete if t.user_attrs.get("retry_of") == number]
        # A trial killed before its first suggestion has no parameters yet: the retry samples them.
        assert len(retries) == 1 and params.items() <= retries[0].params.items()
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    rows = (run_dir / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == n_trials + 1


def test_untagged_trial_of_a_worker_killed_right_after_ask_is_recovered() -> None:
    """The kill can land between `ask` and tagging: the trial is recovered after the grace period."""
    from hwnas.search import recover_stale_trials
    from hwnas.search.study import worker_tag

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"])
    orphan = study.ask()
    orphan.suggest_int("x", 0, 9)
    live = study.ask()
    live.set_user_attr("worker", worker_tag())  # this process: alive, never recovered
    start = time.perf_counter()
    assert recover_stale_trials(study, tag_grace_s=0.5) == [orphan.number]
    assert time.perf_counter() - start >= 0.4  # waited for a live worker to tag it
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[orphan.number] == TrialState.FAIL and states[live.number] == TrialState.RUNNING
    retry = study.ask()
    assert retry.user_attrs["retry_of"] == orphan.number
    assert retry.suggest_int("x", 0, 9) == orphan.params["x"]  # the enqueued parameters


def test_ctrl_c_exits_130_with_partial_results_and_the_resume_command(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "run"
    n_trials = 40
    cmd = [sys.executable, "-m", "hwnas.cli", "search", *tiny_env.cli_args(), "--trials", str(n_trials),
           "--out", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = run_dir / "study.db"
    deadline = time.time() + 120
    while time.time() < deadline and _states(db).get("COMPLETE", 0) < 5:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "resume with: hwnas search" in line and f"--out {run_dir}" in line
    rows = len((run_dir / "trials.csv").read_text().strip().splitlines()) - 1
    assert 5 <= rows < n_trials and (run_dir / "report.html").is_file()
    rebuilt = subprocess.run([sys.executable, "-m", "hwnas.cli", "report", str(run_dir)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=120)
    assert rebuilt.returncode == 0, rebuilt.stderr

    resume = subprocess.run([sys.executable, "-m", "hwnas.cli", *line.split("resume with: hwnas ")[1].split()],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-2000:]
    storage = f"sqlite:///{db}"
    trials = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == n_trials
    retried = [t.user_attrs["retry_of"] for t in complete if "retry_of" in t.user_attrs]
    assert len(retried) == len(set(retried)) <= 1  # the trial Ctrl-C stopped, run again once


def test_the_same_search_started_twice_at_once_joins_as_a_worker(tiny_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "hwnas.cli", "search", *tiny_env.cli_args(), "--trials", "16", "--out", str(run_dir),
           "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    storage = f"sqlite:///{run_dir / 'study.db'}"
    assert optuna.get_all_study_names(storage) and len(optuna.get_all_study_names(storage)) == 1
    trials = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 16 <= len(complete) <= 17 and len({t.number for t in trials}) == len(trials)


def test_a_swallowed_ctrl_c_still_stops_the_loop() -> None:
    """A KeyboardInterrupt raised where Python ignores it (a GC callback) is raised again at the
    next trial boundary, with the trial in progress re-queued, and is not printed as ignored."""
    import gc
    import weakref

    from hwnas.search.study import run_loop

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"])

    class Target:
        pass

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_int("x", 0, 9)
        if trial.number == 2:  # SIGINT lands while a weakref callback runs: Python prints and ignores it
            target = Target()
            ref = weakref.ref(target, lambda _: os.kill(os.getpid(), signal.SIGINT))
            del target
            gc.collect()
            assert ref() is None
        return float(x), float(x)

    reported: list[type[BaseException]] = []
    hook, sys.unraisablehook = sys.unraisablehook, lambda report: reported.append(report.exc_type)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_loop(study, objective, n_trials=10)
    finally:
        sys.unraisablehook = hook
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert len(complete) == 3  # trials 0-2 finished; the next boundary raised
    assert reported == []  # and Python did not print it as "Exception ignored in ..." with a traceback


def test_a_trial_another_worker_finished_first_is_dropped_not_fatal(tmp_path: Path) -> None:
    """Two workers asking at the same instant can be handed the same enqueued trial by Optuna's SQLite
    storage; the first to finish records it, and the second goes on with the next trial."""
    from hwnas.search.study import run_loop

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(directions=["minimize", "minimize"], storage=storage, study_name="s")
    twin = optuna.load_study(study_name="s", storage=storage)  # the other worker's handle

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_int("x", 0, 9)
        if trial.number == 1:
            twin.tell(trial.number, [-1.0, -1.0])  # the twin finished this very trial first
        return float(x), float(x)

    stats = run_loop(study, objective, n_trials=4)
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert trials[1].values == [-1.0, -1.0]  # the first result stands
    assert stats.trials_run == 3  # this worker's result for trial 1 was dropped, not counted


def test_a_trial_finished_elsewhere_while_its_objective_runs_is_dropped(tmp_path: Path) -> None:
    """The twin may finish the shared trial while this worker's objective is still writing to it."""
    from hwnas.search.study import run_loop

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(directions=["minimize", "minimize"], storage=storage, study_name="s")
    twin = optuna.load_study(study_name="s", storage=storage)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_int("x", 0, 9)
        if trial.number == 1:
            twin.tell(trial.number, [-1.0, -1.0])
            trial.set_user_attr("hwnas", {"x": x})  # what run_trial does next: refused, the trial is finished
        return float(x), float(x)

    stats = run_loop(study, objective, n_trials=4)
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.COMPLETE] * 4
    assert stats.trials_run == 3

