"""`run_search`: resolve the settings, answer infeasible budgets at once, run the study, write the run.

Order of work (cheap first): device profile and LUT -> budget feasibility (no model loaded) ->
supernet and validation set -> run directory and study -> trials -> reference presets -> tables
-> sample grids of the Pareto picks -> report.

Run identity: the settings that define the search (not the number of trials, the time limit or
the workers) plus the SHA-256 of the experiment file, the latency table (CSV and sidecar) and the
checkpoint (its `.safetensors` and `.json` files). Without `out`, a search resumes the run
directory under `reports_dir` whose `settings.json` has the same identity, whatever its date; a
new run is named `<device>-<budget>-<date>[-k]` after the day it started. A run of the same
settings whose table, checkpoint or experiment changed is not resumed: a new run starts and a
note says why. `out` holding another search's run is refused unless `force` (which replaces it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import multiprocessing
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from hwnas.io import atomic_write_json, atomic_write_text, checkpoint_sha256, sha256_files
from hwnas.latency import LatencyTable, load_profile, load_table
from hwnas.latency.table import table_paths
from hwnas.paths import display_path, redact_url, repo_path
from hwnas.search.budget import Feasibility, check_budget, fastest_candidates
from hwnas.search.confirm import confirm_search, fidelity
from hwnas.search.constraints import (
    FOOTPRINT_MODEL,
    check_bounds,
    fastest_within,
    footprint,
    format_bytes,
    smallest_footprint,
)
from hwnas.search.objective import LatencyModel, QualityModel, params_from_config, run_trial, same_choices
from hwnas.search.results import trials_frame, write_results
from hwnas.search.start import first_trials, fits_budget, search_sampler, startup_trials
from hwnas.search.study import (
    LoopStats,
    SearchSettings,
    failed_reasons,
    open_study,
    recover_stale_trials,
    run_loop,
    sqlite_url,
)
from hwnas.space import SearchSpace, SubnetConfig, load_space


class InfeasibleBudgetError(ValueError):
    """No sub-DiT of the space fits the budget on the device; carries the fastest achievable latency."""

    def __init__(self, feasibility: Feasibility, *, device: str, steps: int, precision: str) -> None:
        self.feasibility = feasibility
        super().__init__(feasibility.message(device=device, steps=steps, precision=precision))


class RunConflictError(ValueError):
    """The run directory or study holds another search (a different identity)."""


class AllTrialsFailedError(ValueError):
    """Every trial of the study failed (non-finite latency or quality); the message gives the first reason."""


class SearchInterrupted(Exception):
    """Ctrl-C: the trial in progress was re-enqueued and partial results were written to `run_dir`."""

    def __init__(self, run_dir: Path, *, done: int, n_trials: int) -> None:
        self.run_dir, self.done, self.n_trials = run_dir, done, n_trials
        super().__init__(f"interrupted after {done}/{n_trials} trials; partial results in {display_path(run_dir)}")


_repo_path = repo_path
HASH_KEYS = {"experiment_sha256": "experiment", "latency_table_sha256": "latency table",
             "checkpoint_sha256": "checkpoint"}
RUN_FILES = ("study.db", "study.db-wal", "study.db-shm", "settings.json", "trials.csv", "pareto.csv", "best.json",
             "presets.csv", "search_cost.json", "report.html", "pareto.png", "breakdown.png")
RUN_DIRS = ("samples", "compress")


@dataclass
class _Context:
    settings: SearchSettings
    space: SearchSpace
    table: LatencyTable
    feasibility: Feasibility
    start: SubnetConfig
    """The fastest sub-DiT within the budget and the bounds (the first trial of a fresh study)."""
    smallest: dict[str, tuple[int, SubnetConfig]]
    """Per bound, the smallest value any sub-DiT has (`hwnas.search.constraints.smallest_footprint`)."""


def prepare(settings: SearchSettings) -> _Context:
    """Load the device, experiment and LUT, resolve precision, check the bounds and the budget. No model,
    no study.

    Raises ValueError (unknown device, bad precision/resolution, no table), BoundError (a bound below the
    smallest sub-DiT, a memory bound above the device's RAM, bounds and budget that exclude each other)
    or InfeasibleBudgetError.
    """
    profile = load_profile(settings.device, profile_dir=_repo_path(settings.profile_dir))
    space = load_space(_repo_path(settings.experiment))
    if settings.resolution is not None and settings.resolution != space.resolution:
        raise ValueError(f"experiment {space.name!r} offers resolution {space.resolution} only, got "
                         f"--resolution {settings.resolution}; choose another --experiment for another resolution")
    precision = settings.precision or profile.default_precision
    table = load_table(profile, space.name, table_dir=_repo_path(settings.table_dir))
    if precision not in table.meta.precisions:
        raise ValueError(f"the {profile.name}/{space.name} latency table has no precision {precision!r} "
                         f"(it has {list(table.meta.precisions)})")
    settings = replace(settings, precision=precision, resolution=space.resolution)
    minimal = fastest_candidates(space)
    smallest = smallest_footprint(minimal, space, precision=precision)
    ram = profile.ram_gib
    check_bounds(settings.bounds, smallest, precision=precision, experiment=space.name, device=profile.name,
                 ram_bytes=ram.value * 2**30 if ram else None, ram_source=ram.source if ram else "")
    if ram and smallest["max_memory_bytes"][0] > ram.value * 2**30:
        warnings.warn(f"the smallest sub-DiT of {space.name} needs {format_bytes(smallest['max_memory_bytes'][0])} "
                      f"of peak memory at {precision}, more than the {ram.value:g} GiB RAM of {profile.name}",
                      stacklevel=2)
    feas = check_budget(settings.budget_ms, table=table, space=space, steps=settings.steps,
                        precision=precision, confidence=settings.confidence,
                        guidance=settings.guidance)
    if not feas.feasible:
        raise InfeasibleBudgetError(feas, device=profile.name, steps=settings.steps, precision=precision)
    start = feas.fastest
    if settings.bounds.active:
        latency = LatencyModel(table=table, space=space, steps=settings.steps, precision=precision,
                               guidance=settings.guidance)
        start = fastest_within(minimal, space, precision=precision, bounds=settings.bounds,
                               budget_ms=settings.budget_ms,
                               latency_ms=lambda cfg: latency(cfg).upper_ms(settings.confidence))
    return _Context(settings=settings, space=space, table=table, feasibility=feas, start=start, smallest=smallest)


def _checkpoint_path(settings: SearchSettings) -> Path:
    from hwnas.train import DEFAULT_CHECKPOINT

    return Path(settings.checkpoint) if settings.checkpoint else DEFAULT_CHECKPOINT


def run_identity(ctx: _Context) -> dict[str, Any]:
    """The settings that define the search plus content hashes of its inputs, and `identity_hash` over all."""
    s = ctx.settings
    table_files = [Path(p) for p in table_paths(s.device, ctx.space.name, table_dir=_repo_path(s.table_dir))]
    ident = {k: v for k, v in s.identity().items() if k not in ("experiment", "checkpoint")}
    ident.update(experiment_sha256=sha256_files([_repo_path(s.experiment)]),
                 latency_table_sha256=sha256_files([p for p in table_files if p.is_file()]),
                 checkpoint_sha256=checkpoint_sha256(_checkpoint_path(s)))
    ident["identity_hash"] = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return ident


def identity_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two run identities, in words (`latency table changed (sha256 1a2b.. -> 3c4d..)`)."""
    parts = []
    for key in sorted(set(old) | set(new)):
        if key == "identity_hash" or old.get(key) == new.get(key):
            continue
        if key in HASH_KEYS:
            before = str(old[key])[:8] if old.get(key) else "unrecorded"
            parts.append(f"{HASH_KEYS[key]} changed (sha256 {before} -> {str(new.get(key))[:8]})")
        elif key in new:
            parts.append(f"{key} {old.get(key)!r} -> {new[key]!r}")
        else:  # e.g. a constraint the other search had
            parts.append(f"{key} {old[key]!r} -> unset")
    return ", ".join(parts) or "its identity differs"


def _stored_identity(run_dir: Path) -> dict[str, Any] | None:
    """The identity recorded in `run_dir/settings.json`; None without one, {} if unreadable."""
    path = run_dir / "settings.json"
    if not path.is_file():
        return None
    try:
        ident = json.loads(path.read_text()).get("identity")
    except (OSError, ValueError, AttributeError):
        return {}
    return ident if isinstance(ident, dict) else {}


def _clear_run(run_dir: Path) -> None:
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)


def _load_quality(settings: SearchSettings, space: SearchSpace) -> tuple[QualityModel, str, str]:
    import torch

    from hwnas.metrics.val_loss import make_val_set
    from hwnas.train import load_supernet

    path = _checkpoint_path(settings)
    net = load_supernet(path)
    if not same_choices(net.space, space):
        raise ValueError(f"the supernet in {path} (experiment {net.space.name!r}) does not offer the same choices "
                         f"as experiment {space.name!r}; its quality cannot stand in for that space")
    _check_quality(settings, net, path)
    torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    if settings.screen_images:  # the cheap val loss screens the trials (hwnas.search.confirm)
        val = make_val_set(net, n=settings.screen_images, grid=settings.screen_t, seed=0)
    else:
        val = make_val_set(net, n=settings.val_images, seed=0)
    step = net.meta.get("step", "?")
    source = f"proxy supernet {net.space.name} ({display_path(path)}, training step {step}): {val.description}"
    caveat = proxy_caveat(net.space)
    return QualityModel(net=net, val=val), source + (f"; {caveat}" if caveat else ""), net.space.name


def _check_quality(settings: SearchSettings, net: Any, path: Path) -> None:
    """Refuse at once a confirming metric the checkpoint cannot give."""
    if settings.quality == "compositional" and net.space.dataset != "shapes":
        raise ValueError(f"--quality compositional needs a supernet of the shapes dataset; {display_path(path)} "
                         f"was trained on {net.space.dataset!r}")
    if settings.quality == "fd_ref" and not (Path(path) / "fd_ref").is_dir():
        raise ValueError(f"--quality fd_ref needs a reference classifier in {display_path(Path(path) / 'fd_ref')} "
                         f"(hwnas reference train --out {display_path(Path(path))}; the shipped checkpoints have one)")


def proxy_caveat(proxy: SearchSpace) -> str:
    """Why the proxy's quality misjudges some sub-DiTs, or "". An outer (Down/Up) width with fewer
    channels than a patch token has values cannot pass per-pixel detail (the noise the velocity must
    reproduce) through the linear patch embedding and final layer; deployment DiTs (latent patches
    of tens of values, hundreds of channels) have no such bottleneck (benchmarks/width_quality.py)."""
    narrow = sorted({w for stage in ("down", "up") for w in proxy.stages[stage].width
                     if proxy.dim(w) < proxy.patch_values})
    if not narrow:
        return ""
    channels = "/".join(str(proxy.dim(w)) for w in narrow)
    return (f"caveat: a {proxy.name} patch token carries {proxy.patch_values} values but outer widths "
            f"{'/'.join(f'{w:g}' for w in narrow)} have only {channels} channels, so this proxy rates sub-DiTs "
            f"with narrow Down/Up stages far worse than a deployment-scale model would (benchmarks/width_quality.py)")


def resolve_run_dir(settings: SearchSettings, identity: dict[str, Any], *, reports_dir: Path, out: Path | None,
                    force: bool = False, today: _dt.date | None = None) -> tuple[Path, str]:
    """(run directory, a one-line note or ""): `out`, or the run under `reports_dir` of the same
    identity whatever its date (resume), or a fresh `<device>-<budget>-<today>[-k]`.

    Raises RunConflictError where `out` holds another search's run and not `force`; with `force`
    that run's files are removed.
    """
    key = identity["identity_hash"]
    if out is not None:
        old = _stored_identity(out)
        if old is None or old.get("identity_hash") == key:
            return out, ""
        diff = identity_diff(old, identity)
        if not force:
            raise RunConflictError(f"{display_path(out)} holds another search ({diff}); choose another --out, "
                                   f"or add --force to replace it")
        _clear_run(out)
        return out, f"replaced the search in {display_path(out)} ({diff})"
    same_settings = None
    for stored in sorted(reports_dir.glob("*/settings.json")) if reports_dir.is_dir() else []:
        old = _stored_identity(stored.parent) or {}
        if old.get("identity_hash") == key:
            return stored.parent, f"resuming {display_path(stored.parent)}"
        plain = [k for k in identity if k not in HASH_KEYS and k != "identity_hash"]
        if old and all(old.get(k) == identity[k] for k in plain):
            same_settings = (stored.parent, identity_diff(old, identity))
    stem = settings.run_dir_stem(date=today or _dt.date.today())
    for k in range(1, 1000):
        cand = reports_dir / (stem if k == 1 else f"{stem}-{k}")
        if not cand.exists():
            note = (f"not resuming {display_path(same_settings[0])}: {same_settings[1]}; new run {display_path(cand)}"
                    if same_settings else "")
            return cand, note
    raise ValueError(f"too many runs named {stem} in {display_path(reports_dir)}")


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive while a process opens the study and writes the run's files (two searches started at once
    into one run directory: the second waits, then joins the first as a worker)."""
    with open(run_dir / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _worker(settings: SearchSettings, storage: str, study_name: str, index: int, ready: Any,
            cache: dict[str, float] | None = None) -> None:
    """A worker process: the same loop against the shared storage, sampler seeded seed + index; `cache`
    seeds its quality cache (a sweep's earlier evaluations)."""
    ctx = prepare(settings)
    quality, _, _ = _load_quality(ctx.settings, ctx.space)
    quality.cache.update(cache or {})
    ready.set()
    try:
        _loop(ctx, quality, _latency_model(ctx), storage=storage, study_name=study_name, seed=settings.seed + index,
              progress=None)
    except KeyboardInterrupt:
        return


def _latency_model(ctx: _Context) -> LatencyModel:
    s = ctx.settings
    assert s.precision is not None  # resolved by `prepare`
    return LatencyModel(table=ctx.table, space=ctx.space, steps=s.steps, precision=s.precision,
                        guidance=s.guidance)


def _first_generation(ctx: _Context, carry: Sequence[SubnetConfig] = ()) -> list[SubnetConfig]:
    """The sub-DiTs a fresh study enqueues: `carry` (a sweep's evaluations that fit this budget), then
    `first_trials` where `carry` has fewer than the sampler's startup trials (the fastest sub-DiT within
    the bounds, or the startup trials all predicted within the budget and the bounds)."""
    s = ctx.settings
    if len(carry) >= startup_trials(s.sampler, population_size=s.population_size):
        return list(carry)
    start = first_trials(ctx.space, _latency_model(ctx), start=s.start, sampler=s.sampler, fastest=ctx.start,
                         budget_ms=s.budget_ms, confidence=s.confidence, population_size=s.population_size,
                         seed=s.seed, within_bounds=_within_bounds(ctx))
    carried = {cfg.id for cfg in carry}
    return [*carry, *(cfg for cfg in start if cfg.id not in carried)]


def _within_bounds(ctx: _Context) -> Callable[[SubnetConfig], bool] | None:
    """Does a sub-DiT meet the search's bounds beyond latency (None: no bounds set)?"""
    s = ctx.settings
    precision = s.precision
    assert precision is not None  # `prepare` resolved it
    if not s.bounds.active:
        return None
    bounds = s.bounds

    def within(cfg: SubnetConfig) -> bool:
        return footprint(cfg, ctx.space, precision=precision).within(bounds)

    return within


def _loop(ctx: _Context, quality: QualityModel, latency: LatencyModel, *, storage: str, study_name: str, seed: int,
          progress: Any) -> LoopStats:
    s = ctx.settings
    sampler = search_sampler(s.sampler, start=s.start, space=ctx.space, seed=seed, population_size=s.population_size,
                             fits=fits_budget(latency, budget_ms=s.budget_ms, confidence=s.confidence))
    study = open_study(storage=storage, name=study_name, sampler=sampler)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        return run_trial(trial, space=ctx.space, latency=latency, quality=quality, budget_ms=s.budget_ms,
                         confidence=s.confidence, bounds=s.bounds)

    return run_loop(study, objective, n_trials=s.n_trials, on_trial=progress, on_complete=quality.seed_cache,
                    timeout_s=s.timeout_s)


def _settings_record(ctx: _Context, *, identity: dict[str, Any], run_dir: Path, storage: str, study_name: str,
                     quality_source: str, proxy_experiment: str) -> dict[str, Any]:
    """settings.json: paths relative to the checkout where inside it, the storage URL without its password."""
    s = ctx.settings
    pred = _latency_model(ctx)(ctx.space.smallest())
    storage = redact_url(storage)
    return {
        **s.to_dict(), "experiment": display_path(s.experiment), "checkpoint": display_path(_checkpoint_path(s)),
        "profile_dir": display_path(s.profile_dir), "table_dir": display_path(s.table_dir),
        "identity": identity, "run_dir": display_path(run_dir), "storage": storage, "study": study_name,
        "experiment_name": ctx.space.name, "proxy_experiment": proxy_experiment,
        "latency_table": display_path(table_paths(s.device, ctx.space.name, table_dir=_repo_path(s.table_dir))[0]),
        "latency_table_source": ctx.table.source_label,
        "latency_provenance": pred.provenance, "quality_source": quality_source,
        "quality_fidelity": fidelity(s),
        "latency_interval": pred.error.describe(s.confidence) if pred.error else "",
        "latency_constraint": f"one-sided {s.confidence:.0%} upper bound <= budget",
        "quality_metric": "val_loss", "fastest_ms": ctx.feasibility.fastest_ms,
        "constraints": s.bounds.describe(),
        "smallest": {"params": ctx.smallest["max_params"][0], "size_bytes": ctx.smallest["max_size_bytes"][0],
                     "memory_bytes": ctx.smallest["max_memory_bytes"][0]},
        "footprint_model": FOOTPRINT_MODEL,
        "fastest_config_id": ctx.feasibility.fastest.id, "optuna_version": optuna.__version__,
        "dashboard": f"optuna-dashboard {storage}",
    }


def run_search(settings: SearchSettings, *, reports_dir: str | Path = "reports", out: str | Path | None = None,
               console: Any = None, report: bool = True, force: bool = False,
               today: _dt.date | None = None, shared_quality: tuple[QualityModel, str, str] | None = None,
               carry: Sequence[SubnetConfig] = ()) -> dict[str, Any]:
    """Run (or resume) a search; write the run directory; return {"run_dir", "best", "settings", "cost",
    "notes", "timed_out", "failed"}.

    `console` (a rich Console) shows progress bars and notes; None runs silently. `today` names a new
    run directory (default: the local date). A budget sweep (`hwnas.search.sweep`) passes
    `shared_quality` (`_load_quality`'s result: one supernet and one cache for all its searches) and
    `carry`: sub-DiTs already evaluated that fit this budget, the first trials of a fresh study, beyond
    which it asks `settings.n_trials`. Raises RunConflictError, StorageError (both ValueError),
    AllTrialsFailedError, or SearchInterrupted on Ctrl-C after writing the partial results.
    """
    from hwnas.search.extras import evaluate_presets, progress_bar, sample_grids, update_cost

    wall0, cpu0 = time.perf_counter(), time.process_time()
    ctx = prepare(settings)
    s = ctx.settings
    identity = run_identity(ctx)
    quality, quality_source, proxy_name = shared_quality or _load_quality(s, ctx.space)
    run_dir, note = resolve_run_dir(s, identity, reports_dir=Path(reports_dir), out=Path(out) if out else None,
                                    force=force, today=today)
    notes = [note] if note else []
    if note and console is not None:
        console.print(note)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = s.storage or sqlite_url(run_dir / "study.db")
    study_name = s.study or s.default_study_name(ctx.space.name)
    record = _settings_record(ctx, identity=identity, run_dir=run_dir, storage=storage, study_name=study_name,
                              quality_source=quality_source, proxy_experiment=proxy_name)
    with _run_lock(run_dir):
        study = open_study(storage=storage, name=study_name, sampler=optuna.samplers.RandomSampler())
        stored = study.user_attrs.get("hwnas_settings", {}).get("identity", {})
        if stored.get("identity_hash") not in (None, identity["identity_hash"]):
            raise RunConflictError(f"study {study_name!r} in {redact_url(storage)} holds another search "
                                   f"({identity_diff(stored, identity)}); give another --study")
        recovered = recover_stale_trials(study)
        if not study.get_trials(deepcopy=False):  # a fresh study: the first generation fits the budget
            for cfg in _first_generation(ctx, carry):
                study.enqueue_trial(params_from_config(cfg, ctx.space))
            if carry:
                study.set_user_attr("hwnas_carried", len(carry))
        carried = int(study.user_attrs.get("hwnas_carried", 0))
        n_trials = carried + s.n_trials  # a sweep member asks n_trials beyond the trials it carries over
        record["carried_trials"] = carried
        atomic_write_json(run_dir / "settings.json", record)
        study.set_user_attr("hwnas_settings", record)

    procs = []
    if s.workers > 1:
        mp = multiprocessing.get_context("spawn")
        ready = [mp.Event() for _ in range(1, s.workers)]
        procs = [mp.Process(target=_worker, args=(replace(s, n_trials=n_trials), storage, study_name, i,
                                                      ready[i - 1], dict(quality.cache)), daemon=False)
                 for i in range(1, s.workers)]
        for p in procs:
            p.start()
        for p, event in zip(procs, ready):  # start together: a worker loads its supernet first
            while not event.wait(0.2) and p.is_alive():
                pass
    latency = _latency_model(ctx)
    stats, interrupted = LoopStats(), False
    try:
        with progress_bar(console, total=n_trials, label=f"search {s.device} <= {s.budget_ms:g} ms") as advance:
            stats = _loop(replace(ctx, settings=replace(s, n_trials=n_trials)), quality, latency, storage=storage,
                          study_name=study_name, seed=s.seed, progress=advance)
    except KeyboardInterrupt:
        interrupted = True
    for p in procs:
        if interrupted:
            p.terminate()  # its trial in progress stays RUNNING under a dead pid: the rerun recovers it
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode and not interrupted]
    if bad:
        raise RuntimeError(f"{len(bad)} search worker(s) failed (exit codes {bad}); rerun the command to resume")

    partial = interrupted or stats.timed_out
    with _run_lock(run_dir):
        trials = trials_frame(study.get_trials(deepcopy=False))
        reasons = failed_reasons(study)
        q0 = quality.cpu_s
        picks_from, picks_quality = None, quality
        if not partial and len(trials) and s.confirms:  # the Pareto candidates, scored again
            picks_from, picks_quality = confirm_search(trials, settings=s, quality=quality,
                                                       checkpoint=_checkpoint_path(s), run_dir=run_dir)
        if not partial and len(trials):
            presets = evaluate_presets(ctx.space, latency=latency, quality=picks_quality, budget_ms=s.budget_ms,
                                       fastest=ctx.feasibility.fastest, confidence=s.confidence, bounds=s.bounds)
            atomic_write_text(run_dir / "presets.csv", presets.to_csv(index=False))
        best = write_results(trials, run_dir=run_dir, settings=record, pareto_from=picks_from)
        grid_cpu = sample_grids(quality.net, run_dir=run_dir, settings=s, console=console) if not partial else 0.0
        cost = update_cost(run_dir, trials=trials, study=study, session={
            "wall_s": time.perf_counter() - wall0, "search_loop_wall_s": stats.wall_s,
            "cpu_s": time.process_time() - cpu0, "workers": s.workers, "recovered_trials": recovered,
            "preset_quality_cpu_s": quality.cpu_s - q0, "sample_grid_cpu_s": grid_cpu,
            "stopped": "interrupted" if interrupted else "timeout" if stats.timed_out else "done",
        })
        if report and len(trials):  # no report of a search whose every trial failed (nothing to plot)
            from hwnas.report import build_report

            build_report(run_dir)
    if interrupted:
        raise SearchInterrupted(run_dir, done=len(trials) + len(reasons), n_trials=n_trials)
    if reasons and not (len(trials) and trials["quality_evaluated"].any()):
        raise AllTrialsFailedError(f"every evaluation failed ({len(reasons)} trials), no sub-DiT was scored; "
                                   f"the first: {reasons[0]}")
    return {"run_dir": str(run_dir), "best": best, "settings": record, "cost": cost, "notes": notes,
            "timed_out": stats.timed_out, "failed": reasons}
