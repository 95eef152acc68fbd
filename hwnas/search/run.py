"""`run_search`: resolve the settings, answer infeasible budgets at once, run the study, write the run.

Order of work (cheap first): device profile and LUT -> budget feasibility (no model loaded) ->
run directory and study -> supernet and validation set -> trials -> reference presets -> tables
-> sample grids of the Pareto picks -> report.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna

from hwnas.io import atomic_write_json, atomic_write_text
from hwnas.latency import LatencyTable, load_profile, load_table
from hwnas.paths import repo_path
from hwnas.search.budget import Feasibility, check_budget
from hwnas.search.objective import LatencyModel, QualityModel, params_from_config, run_trial, same_choices
from hwnas.search.results import trials_frame, write_results
from hwnas.search.study import (
    SearchSettings, make_sampler, open_study, recover_stale_trials, run_loop, sqlite_url,
)
from hwnas.space import SearchSpace, load_space



class InfeasibleBudgetError(ValueError):
    """No sub-DiT of the space fits the budget on the device; carries the fastest achievable latency."""

    def __init__(self, feasibility: Feasibility, *, device: str, steps: int, precision: str) -> None:
        self.feasibility = feasibility
        super().__init__(feasibility.message(device=device, steps=steps, precision=precision))


_repo_path = repo_path


@dataclass
class _Context:
    settings: SearchSettings
    space: SearchSpace
    table: LatencyTable
    feasibility: Feasibility


def prepare(settings: SearchSettings) -> _Context:
    """Load the device, experiment and LUT, resolve precision, check the budget. No model, no study.

    Raises ValueError (unknown device, bad precision/resolution, no table) or InfeasibleBudgetError.
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
    feas = check_budget(settings.budget_ms, table=table, space=space, steps=settings.steps,
                        precision=precision, confidence=settings.confidence,  # type: ignore[arg-type]
                        guidance=settings.guidance)  # type: ignore[arg-type]
    if not feas.feasible:
        raise InfeasibleBudgetError(feas, device=profile.name, steps=settings.steps, precision=precision)
    return _Context(settings=settings, space=space, table=table, feasibility=feas)


def _load_quality(settings: SearchSettings, space: SearchSpace) -> tuple[QualityModel, str, str]:
    import torch

    from hwnas.metrics.val_loss import make_val_set
    from hwnas.train import DEFAULT_CHECKPOINT, load_supernet

    path = Path(settings.checkpoint) if settings.checkpoint else DEFAULT_CHECKPOINT
    net = load_supernet(path)
    if not same_choices(net.space, space):
        raise ValueError(f"the supernet in {path} (experiment {net.space.name!r}) does not offer the same choices "
                         f"as experiment {space.name!r}; its quality cannot stand in for that space")
    torch.set_num_threads(settings.threads)
    torch.manual_seed(0)
    val = make_val_set(net, n=settings.val_images, seed=0)
    step = net.meta.get("step", "?")
    source = f"proxy supernet {net.space.name} ({path}, training step {step}): {val.description}"
    caveat = proxy_caveat(net.space)
    return QualityModel(net=net, val=val), source + (f"; {caveat}" if caveat else ""), net.space.name


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


def resolve_run_dir(settings: SearchSettings, *, reports_dir: Path, out: Path | None) -> Path:
    """`out`, or the run directory of the same search today (resume), or a fresh `<device>-<budget>-<date>[-k]`."""
    if out is not None:
        return out
    stem = settings.run_dir_stem()
    for k in range(1, 1000):
        cand = reports_dir / (stem if k == 1 else f"{stem}-{k}")
        stored = cand / "settings.json"
        if not cand.exists():
            return cand
        try:
            if json.loads(stored.read_text()).get("identity") == settings.identity():
                return cand
        except (OSError, ValueError):
            continue
    raise ValueError(f"too many runs named {stem} in {reports_dir}")


def _worker(settings: SearchSettings, storage: str, study_name: str, index: int) -> None:
    """A worker process: the same loop against the shared storage, sampler seeded seed + index."""
    ctx = prepare(settings)
    quality, _, _ = _load_quality(ctx.settings, ctx.space)
    _loop(ctx, quality, storage=storage, study_name=study_name, seed=settings.seed + index, progress=None)


def _loop(ctx: _Context, quality: QualityModel, *, storage: str, study_name: str, seed: int,
          progress: Any) -> tuple[LatencyModel, float]:
    s = ctx.settings
    sampler = make_sampler(s.sampler, seed=seed, population_size=s.population_size)
    study = open_study(storage=storage, name=study_name, sampler=sampler)
    latency = LatencyModel(table=ctx.table, space=ctx.space, steps=s.steps, precision=s.precision,  # type: ignore[arg-type]
                           guidance=s.guidance)  # type: ignore[arg-type]

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        return run_trial(trial, space=ctx.space, latency=latency, quality=quality, budget_ms=s.budget_ms,
                         confidence=s.confidence)

    stats = run_loop(study, objective, n_trials=s.n_trials, on_trial=progress, on_complete=quality.seed_cache)
    return latency, stats.wall_s


def _settings_record(ctx: _Context, *, run_dir: Path, storage: str, study_name: str, quality_source: str,
                     proxy_experiment: str) -> dict[str, Any]:
    s = ctx.settings
    pred = LatencyModel(table=ctx.table, space=ctx.space, steps=s.steps, precision=s.precision,  # type: ignore[arg-type]
                        guidance=s.guidance)(ctx.space.smallest())  # type: ignore[arg-type]
    return {
        **s.to_dict(), "identity": s.identity(), "run_dir": str(run_dir), "storage": storage, "study": study_name,
        "experiment_name": ctx.space.name, "proxy_experiment": proxy_experiment,
        "latency_table": f"{s.table_dir}/{s.device}/{ctx.space.name}.csv",
        "latency_table_source": ctx.table.source_label,
        "latency_provenance": pred.provenance, "quality_source": quality_source,
        "latency_interval": pred.error.describe(s.confidence) if pred.error else "",
        "latency_constraint": f"one-sided {s.confidence:.0%} upper bound <= budget",
        "quality_metric": "val_loss", "fastest_ms": ctx.feasibility.fastest_ms,
        "fastest_config_id": ctx.feasibility.fastest.id, "optuna_version": optuna.__version__,
        "dashboard": f"optuna-dashboard {storage}",
    }


def run_search(settings: SearchSettings, *, reports_dir: str | Path = "reports", out: str | Path | None = None,
               console: Any = None, report: bool = True) -> dict[str, Any]:
    """Run (or resume) a search; write the run directory; return {"run_dir", "best", "settings", "cost"}.

    `console` (a rich Console) shows progress bars; None runs silently.
    """
    from hwnas.search.extras import evaluate_presets, progress_bar, sample_grids, update_cost

    wall0, cpu0 = time.perf_counter(), time.process_time()
    ctx = prepare(settings)
    s = ctx.settings
    run_dir = resolve_run_dir(s, reports_dir=Path(reports_dir), out=Path(out) if out else None)
    run_dir.mkdir(parents=True, exist_ok=True)
    storage = s.storage or sqlite_url(run_dir / "study.db")
    study_name = s.study or s.default_study_name(ctx.space.name)
    study = open_study(storage=storage, name=study_name, sampler=optuna.samplers.RandomSampler())
    recovered = recover_stale_trials(study)
    if not study.get_trials(deepcopy=False):  # a fresh study starts from the fastest sub-DiT: always feasible
        study.enqueue_trial(params_from_config(ctx.feasibility.fastest, ctx.space))
    quality, quality_source, proxy_name = _load_quality(s, ctx.space)
    record = _settings_record(ctx, run_dir=run_dir, storage=storage, study_name=study_name,
                              quality_source=quality_source, proxy_experiment=proxy_name)
    atomic_write_json(run_dir / "settings.json", record)
    study.set_user_attr("hwnas_settings", record)

    procs = []
    if s.workers > 1:
        mp = multiprocessing.get_context("spawn")
        procs = [mp.Process(target=_worker, args=(s, storage, study_name, i), daemon=False) for i in range(1, s.workers)]
        for p in procs:
            p.start()
    with progress_bar(console, total=s.n_trials, label=f"search {s.device} <= {s.budget_ms:g} ms") as advance:
        latency, loop_wall = _loop(ctx, quality, storage=storage, study_name=study_name, seed=s.seed, progress=advance)
    for p in procs:
        p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise RuntimeError(f"{len(bad)} search worker(s) failed (exit codes {bad}); rerun the command to resume")

    trials = trials_frame(study.get_trials(deepcopy=False))
    q0 = quality.cpu_s
    presets = evaluate_presets(ctx.space, latency=latency, quality=quality, budget_ms=s.budget_ms,
                               fastest=ctx.feasibility.fastest, confidence=s.confidence)
    atomic_write_text(run_dir / "presets.csv", presets.to_csv(index=False))
    best = write_results(trials, run_dir=run_dir, settings=record)
    grid_cpu = sample_grids(quality.net, run_dir=run_dir, settings=s, console=console)
    cost = update_cost(run_dir, trials=trials, study=study, session={
        "wall_s": time.perf_counter() - wall0, "search_loop_wall_s": loop_wall, "cpu_s": time.process_time() - cpu0,
        "workers": s.workers, "recovered_trials": recovered, "preset_quality_cpu_s": quality.cpu_s - q0,
        "sample_grid_cpu_s": grid_cpu,
    })
    if report:
        from hwnas.report import build_report

        build_report(run_dir)
    return {"run_dir": str(run_dir), "best": best, "settings": record, "cost": cost}
