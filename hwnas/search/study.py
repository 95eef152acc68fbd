"""The Optuna study: settings, storage, sampler, crash recovery and the trial loop (one or many workers).

Storage is any Optuna storage URL (`sqlite:///...`, `postgresql+psycopg2://...`); the default is
a SQLite file in the run directory. Workers on one machine are local processes sharing that
storage; workers on many machines run the same command against one PostgreSQL URL.

Crash recovery: every trial records the worker (`host:pid`) that runs it. A RUNNING trial whose
worker is a dead process on this host (a SIGKILLed search) is marked FAIL and its parameters are
enqueued again, so rerunning the command finishes exactly `n_trials` COMPLETE trials: none lost,
none duplicated. So is a trial still untagged a few seconds after it started (killed between `ask`
and tagging). Ctrl-C fails the trial in progress and enqueues its parameters again at once.

A trial whose latency or quality is not a finite number fails with a `fail_reason` (`TrialFailed`);
it counts towards `n_trials`, so a search whose every evaluation fails still ends.
"""

from __future__ import annotations

import datetime as _dt
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import TrialState

from hwnas.latency import Guidance, Precision
from hwnas.paths import redact_passwords, redact_url
from hwnas.search.budget import format_ms
from hwnas.search.constraints import CONSTRAINT_NAMES, Bounds

SamplerName = Literal["nsga2", "nsga3", "tpe", "gp", "random"]
SAMPLERS: tuple[SamplerName, ...] = ("nsga2", "nsga3", "tpe", "gp", "random")
StartName = Literal["feasible", "plain"]
STARTS: tuple[StartName, ...] = ("feasible", "plain")
"""How a fresh study starts (`hwnas.search.start`): feasible, from sub-DiTs predicted within the budget;
plain, from the fastest sub-DiT only, then whatever the sampler proposes."""
QualityName = Literal["val_loss", "compositional", "fd_ref"]
QUALITIES: tuple[QualityName, ...] = ("val_loss", "compositional", "fd_ref")
"""The metric that confirms the Pareto candidates besides the full val loss (`hwnas.search.confirm`)."""
DIRECTIONS: tuple[Literal["minimize", "maximize"], ...] = ("minimize", "minimize")
"""Objectives, in order: proxy quality (val loss, lower is better) and predicted latency in ms."""


@dataclass(frozen=True)
class SearchSettings:
    """Everything that defines a search. `hwnas.search.prepare` resolves its defaults (device precision, resolution)."""

    device: str
    budget_ms: float
    experiment: str = "experiments/snapgenpp-1024.toml"
    checkpoint: str | None = None
    steps: int = 4
    precision: Precision | None = None
    resolution: int | None = None
    confidence: float = 0.9
    """A sub-DiT is feasible when its latency's one-sided `confidence` upper bound is within the budget."""
    guidance: Guidance = "distilled"
    """cfg: two denoiser passes per step; distilled (guidance-distilled students, K-DMD's) or none: one."""
    sampler: SamplerName = "gp"
    """Optuna's GP sampler: the fewest quality evaluations to a good front (benchmarks/search_efficiency.py);
    its proposals cost ~0.5-1 s each by 100 trials, so NSGA-II suits long searches where evaluations are cheap."""
    start: StartName = "feasible"
    n_trials: int = 96
    population_size: int = 16
    seed: int = 0
    storage: str | None = None
    study: str | None = None
    workers: int = 1
    threads: int = 1
    """torch threads per worker: the proxy sub-DiTs are too small to gain from more, and oversubscribed
    cores (other jobs, several workers) cost several times the CPU time."""
    val_images: int = 64
    screen_images: int = 0
    """0: each trial's quality is the full val loss (`val_images` images, 8 t values). Otherwise the cheap
    val loss on `screen_images` images and `screen_t` t values screens the trials, and the Pareto candidates
    are confirmed with the full val loss (`hwnas.search.confirm`)."""
    screen_t: int = 4
    quality: QualityName = "val_loss"
    """compositional or fd_ref: the Pareto candidates are also scored with it (`confirm_n` images)."""
    confirm_n: int = 64
    sample_steps: int = 8
    sample_prompts: int = 4
    max_grids: int = 8
    timeout_s: float | None = None
    """Stop asking for new trials once this session has run this long (checked after each trial)."""
    profile_dir: str = "device_profiles"
    table_dir: str = "latency_tables"
    max_params: int | None = None
    max_size_bytes: int | None = None
    """Bytes of the weights on disk at `precision`."""
    max_memory_bytes: int | None = None
    """Peak bytes of weights plus activations of one denoising step at `precision` (`hwnas.search.constraints`)."""
    sweep_budgets_ms: tuple[float, ...] = ()
    """Set on the members of a budget sweep (`hwnas.search.sweep`): every budget of the sweep."""

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {list(STARTS)}, got {self.start!r}")
        if self.quality not in QUALITIES:
            raise ValueError(f"quality must be one of {list(QUALITIES)}, got {self.quality!r}")
        if not 0 <= self.screen_images < self.val_images:
            raise ValueError(f"screen images must be between 0 (no screening) and the {self.val_images} validation "
                             f"images (exclusive), got {self.screen_images!r}")
        if self.screen_t < 1 or self.confirm_n < 2:
            raise ValueError(f"screen t values must be >= 1 and confirm_n >= 2, got {self.screen_t!r} and "
                             f"{self.confirm_n!r}")
        for name in ("steps", "n_trials", "workers", "threads", "val_images", "sample_steps", "sample_prompts"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.population_size < 2:
            raise ValueError(f"population_size must be >= 2, got {self.population_size}")
        if not self.budget_ms > 0:
            raise ValueError(f"budget must be positive, got {self.budget_ms!r} ms")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {self.confidence!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout_s!r} s")
        if self.guidance not in ("distilled", "cfg", "none"):
            raise ValueError(f"guidance must be one of distilled, cfg, none, got {self.guidance!r}")
        _ = self.bounds  # a ValueError quotes a bad bound
        object.__setattr__(self, "sweep_budgets_ms", tuple(float(b) for b in self.sweep_budgets_ms))

    @property
    def bounds(self) -> Bounds:
        """The constraints beyond latency."""
        return Bounds(max_params=self.max_params, max_size_bytes=self.max_size_bytes,
                      max_memory_bytes=self.max_memory_bytes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def confirms(self) -> bool:
        """Are the Pareto candidates scored again after the search (screened trials, or another metric)?"""
        return self.screen_images > 0 or self.quality != "val_loss"

    def identity(self) -> dict[str, Any]:
        """The settings that make two runs the same search (not: how many trials or how long, workers,
        storage location, the metric that confirms the picks). `hwnas.search.run.run_identity` adds the
        content hashes of the inputs."""
        skip = {"n_trials", "timeout_s", "workers", "threads", "storage", "study", "profile_dir", "table_dir",
                "max_grids", "quality", "confirm_n"}  # the last two score the picks again, not the trials
        # unset constraints and no sweep are left out, so runs from before they existed keep their identity
        unset = {k for k in (*CONSTRAINT_NAMES, "sweep_budgets_ms") if getattr(self, k) in (None, ())}
        if self.start == "feasible":  # what every search did before --start existed
            unset.add("start")
        if not self.screen_images:  # no screening: one fidelity, as before --screen existed
            unset |= {"screen_images", "screen_t"}
        ident = {k: v for k, v in self.to_dict().items() if k not in skip | unset}
        if "sweep_budgets_ms" in ident:
            ident["sweep_budgets_ms"] = list(ident["sweep_budgets_ms"])  # as settings.json stores it
        return ident

    def default_study_name(self, experiment_name: str) -> str:
        bounds = "".join(f"-{tag}{value}" for tag, value in (("p", self.max_params), ("s", self.max_size_bytes),
                                                             ("m", self.max_memory_bytes)) if value is not None)
        sweep = "-sweep" + "-".join(format_ms(b) for b in self.sweep_budgets_ms) if self.sweep_budgets_ms else ""
        return (f"{self.device}-{experiment_name}-{format_ms(self.budget_ms)}-{self.steps}steps-{self.precision}-"
                f"{self.sampler}-seed{self.seed}{bounds}{sweep}")

    def run_dir_stem(self, *, date: _dt.date) -> str:
        return f"{self.device}-{format_ms(self.budget_ms)}-{date.isoformat()}"


class TrialFailed(Exception):
    """A trial that cannot be scored (a non-finite latency or quality); the message is its reason."""


class StorageError(ValueError):
    """The study storage cannot be opened or written (one line, the URL redacted)."""


def make_sampler(name: SamplerName, *, seed: int, population_size: int = 16) -> optuna.samplers.BaseSampler:
    """Optuna's sampler `name`, seeded. Constraints come from `trial.set_constraint` (Optuna >= 5)."""
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size)
    if name == "nsga3":
        return optuna.samplers.NSGAIIISampler(seed=seed, population_size=population_size)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose from {list(SAMPLERS)}")


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """An RDB storage for `url`.

    SQLite gets a long lock timeout (local workers share the file) and write-ahead logging with
    `synchronous=NORMAL`: a commit no longer waits for fsync (Optuna commits once per parameter,
    ~15 ms each on this machine's disk), yet a killed process loses nothing that was committed;
    only an OS crash or power loss may drop the last commits.
    """
    if url.startswith("sqlite"):
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
        _sqlite_wal(storage)
        return storage
    return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})


def _sqlite_wal(storage: optuna.storages.RDBStorage) -> None:
    from sqlalchemy import event

    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    event.listen(storage.engine, "connect", _pragmas)
    storage.engine.dispose()  # pooled connections opened before the listener get replaced


def worker_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_stale_trials(study: optuna.Study, *, tag_grace_s: float = 5.0) -> list[int]:
    """Fail and re-enqueue RUNNING trials left by dead workers of this host; returns their numbers.

    A live worker tags its trial right after `ask`, so a RUNNING trial still untagged `tag_grace_s`
    after it started was asked by a worker killed in between: it is stale, whichever host asked it
    (waits out the grace period when a younger untagged trial exists). Tagged trials of other hosts
    are left alone: that host recovers them.
    """
    host = socket.gethostname()

    def running_and_ages() -> list[tuple[optuna.trial.FrozenTrial, float]]:
        now = _dt.datetime.now()
        return [(t, (now - t.datetime_start).total_seconds() if t.datetime_start else float("inf"))
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]

    running = running_and_ages()
    young_untagged = [age for t, age in running if "worker" not in t.user_attrs and age < tag_grace_s]
    if young_untagged:
        time.sleep(tag_grace_s - min(young_untagged))
        running = running_and_ages()
    recovered = []
    for t, age in running:
        tag = t.user_attrs.get("worker")
        if tag is None:
            stale = age >= tag_grace_s
        else:
            tag_host, _, pid = str(tag).rpartition(":")
            stale = tag_host == host and pid.isdigit() and not _pid_alive(int(pid))
        if not stale:
            continue
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        recovered.append(t.number)
    return recovered


def count_trials(study: optuna.Study) -> tuple[int, int, list[optuna.trial.FrozenTrial]]:
    """(COMPLETE trials and those failed with a reason, RUNNING trials, the COMPLETE trials)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    failed = [t for t in trials if t.state == TrialState.FAIL and "fail_reason" in t.user_attrs]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return len(complete) + len(failed), len(running), complete


def failed_reasons(study: optuna.Study) -> list[str]:
    """The reasons of the trials that failed with one (`TrialFailed`), in trial order."""
    return [str(t.user_attrs["fail_reason"]) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if "fail_reason" in t.user_attrs]


@dataclass
class LoopStats:
    trials_run: int = 0
    wall_s: float = 0.0
    timed_out: bool = False


def run_loop(study: optuna.Study, objective: Callable[[optuna.Trial], tuple[float, float]], *, n_trials: int,
             on_trial: Callable[[int], None] | None = None,
             on_complete: Callable[[list[optuna.trial.FrozenTrial]], None] | None = None,
             timeout_s: float | None = None, clock: Callable[[], float] = time.perf_counter) -> LoopStats:
    """Ask/tell until the study holds `n_trials` finished trials (counting others' RUNNING ones), or
    until `timeout_s` seconds of `clock` have passed (checked after each trial).

    Finished: COMPLETE, or failed with a reason (`TrialFailed`: recorded as `fail_reason`). With
    several workers the total can overshoot by at most (workers - 1). Ctrl-C fails the trial in
    progress, enqueues its parameters again and re-raises. Any other exception inside `objective`
    fails that trial and is re-raised (a bug, not a bad sub-DiT).
    """
    stats = LoopStats()
    start = clock()
    tag = worker_tag()
    with _remembered_interrupts() as interrupts:
        while True:
            if interrupts:  # a Ctrl-C that Python swallowed (e.g. inside a GC callback)
                raise KeyboardInterrupt
            done, running, complete = count_trials(study)
            if on_complete is not None:
                on_complete(complete)
            if on_trial is not None:
                on_trial(done)
            if done + running >= n_trials:
                break
            if timeout_s is not None and stats.trials_run and clock() - start >= timeout_s:
                stats.timed_out = True
                break
            trial = study.ask()
            try:
                trial.set_user_attr("worker", tag)
                if isinstance(study.sampler, optuna.samplers.BaseGASampler):
                    # Optuna gives a generation only to trials it samples; an enqueued one would sit outside
                    # every population (NSGA-II would never breed from the feasible start)
                    study.sampler.get_trial_generation(study, study._storage.get_trial(trial._trial_id))
                values = objective(trial)
            except TrialFailed as exc:
                trial.set_user_attr("fail_reason", str(exc))
                stats.trials_run += _tell(study, trial, state=TrialState.FAIL)
                continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another worker finished this very trial first (see `_tell`); its result stands
            except KeyboardInterrupt:
                if _tell(study, trial, state=TrialState.FAIL):
                    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
                raise
            except BaseException:
                _tell(study, trial, state=TrialState.FAIL)
                raise
            stats.trials_run += _tell(study, trial, list(values))
    stats.wall_s = clock() - start
    return stats


def _tell(study: optuna.Study, trial: optuna.Trial, values: list[float] | None = None, *,
          state: TrialState | None = None) -> bool:
    """`study.tell`; False where another worker already finished this trial. Optuna's RDB storage can
    hand one enqueued trial to two workers that ask at the same instant (SQLite reads it as WAITING in
    both before either writes); the first to finish records it and the other's result is dropped."""
    try:
        study.tell(trial, values, state=state)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # which one depends on when the other wrote
        if study._storage.get_trial(trial._trial_id).state.is_finished():
            return False
        raise
    return True


@contextmanager
def _remembered_interrupts() -> Iterator[list[int]]:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered in the yielded list, so one
    that Python swallowed (raised inside a garbage-collection callback, say) is raised again at the
    next trial boundary. Python would also print the swallowed one with its traceback ("Exception
    ignored in ..."); that report is dropped, since the interrupt is not lost. Only the main thread
    can install the handler; elsewhere nothing changes."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return

    def handler(signum: int, frame: Any) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    def unraisable(report: Any) -> None:
        if not issubclass(report.exc_type, KeyboardInterrupt):
            previous_hook(report)

    previous = signal.signal(signal.SIGINT, handler)
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook


def open_study(*, storage: str, name: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Create or load study `name`. A storage that cannot be reached, read or written (a bad URL, a
    truncated SQLite file, a read-only directory) raises `StorageError`; two processes creating the
    same study at once both get it (the loser of the race retries the load)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(3):
        try:
            return optuna.create_study(storage=make_storage(storage), study_name=name, sampler=sampler,
                                       directions=list(DIRECTIONS), load_if_exists=True)
        except Exception as exc:  # sqlalchemy's and the drivers' errors have no common base but Exception
            if attempt < 2 and _is_race(exc):
                time.sleep(0.5)
                continue
            raise StorageError(f"storage {redact_url(storage)}: {storage_reason(exc)}") from None
    raise AssertionError("unreachable")


def _is_race(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("unique constraint", "already exists", "database is locked",
                                   "duplicatedstudy"))


def storage_reason(exc: BaseException) -> str:
    """The first line of a storage error, without the SQL and the URL (which may hold a password)."""
    orig = getattr(exc, "orig", None) or exc
    line = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    line = line.split("[SQL:")[0].strip()
    return redact_passwords(line) or type(orig).__name__


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"

