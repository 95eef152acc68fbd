"""What a search leaves beside its trials: reference presets, sample grids, search-cost accounting, progress."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from hwnas.io import atomic_write_json
from hwnas.search.constraints import Bounds, footprint
from hwnas.search.objective import LatencyModel, QualityModel
from hwnas.search.results import BREAKDOWN_COLUMNS
from hwnas.search.study import SearchSettings
from hwnas.space import PRESET_WIDTHS, SearchSpace, SubnetConfig


def evaluate_presets(space: SearchSpace, *, latency: LatencyModel, quality: QualityModel, budget_ms: float,
                     fastest: SubnetConfig, confidence: float | None = None,
                     bounds: Bounds | None = None) -> pd.DataFrame:
    """SnapGen++'s presets and the fastest sub-DiT: latency, footprint, quality (cached by id) and feasibility
    (of the one-sided `confidence` upper bound, as the search judges it, None: of the point; and within
    `bounds`)."""
    rows = []
    configs = {}
    for name in PRESET_WIDTHS:
        try:
            configs[name] = space.preset(name)
        except ValueError:  # the space does not offer this preset's width
            continue
    for name, cfg in {**configs, "fastest": fastest}.items():
        pred = latency(cfg)
        q, _ = quality(cfg)
        bound_ms = pred.total_ms if confidence is None else pred.upper_ms(confidence)
        fp = footprint(cfg, space, precision=latency.precision)
        rows.append({"name": name, "config_id": cfg.id, "describe": cfg.describe(), "quality": q,
                     "latency_ms": pred.total_ms, "latency_source": pred.source_label,
                     "latency_ms_hi": bound_ms, "p_within_budget": pred.prob_within(budget_ms),
                     "feasible": bound_ms <= budget_ms and fp.within(bounds or Bounds()),
                     "params": fp.params, "size_bytes": fp.size_bytes, "memory_bytes": fp.memory_bytes,
                     "step_ms": pred.step_ms, **{c: getattr(pred, c) for c in BREAKDOWN_COLUMNS},
                     "config_json": cfg.to_json()})
    return pd.DataFrame(rows)


def grid_picks(pareto: pd.DataFrame, *, max_grids: int) -> pd.DataFrame:
    """At most `max_grids` Pareto picks spread evenly along the front (always the fastest and the best)."""
    n = len(pareto)
    if n <= max_grids:
        return pareto
    idx = sorted({round(i * (n - 1) / (max_grids - 1)) for i in range(max_grids)})
    return pareto.iloc[idx]


def sample_prompts(net: Any, *, n: int) -> list[str]:
    from hwnas.data import make_dataset

    space = net.space
    data = make_dataset(space.dataset, split="val", resolution=space.resolution, size=n, seed=1)
    return [data[i][1] for i in range(n)]


def sample_grids(net: Any, *, run_dir: Path, settings: SearchSettings, console: Any = None) -> float:
    """`samples/<config_id>.png` for the Pareto picks (skips existing files); returns the CPU seconds spent."""
    from hwnas.train import generate, save_grid

    pareto = pd.read_csv(run_dir / "pareto.csv")
    picks = grid_picks(pareto, max_grids=settings.max_grids)
    prompts = sample_prompts(net, n=settings.sample_prompts)
    start = time.process_time()
    out = run_dir / "samples"
    todo = [r for _, r in picks.iterrows() if not (out / f"{r['config_id']}.png").exists()]
    with progress_bar(console, total=len(todo), label="sample grids") as advance:
        for i, row in enumerate(todo):
            cfg = SubnetConfig.from_json(row["config_json"])
            images = generate(net, prompts, cfg, steps=settings.sample_steps, cfg_scale=4.0, seed=0)
            save_grid(images, out / f"{row['config_id']}.png", ncol=len(prompts), scale=3, labels=prompts)
            advance(i + 1)
    meta = {"prompts": prompts, "steps": settings.sample_steps, "cfg_scale": 4.0, "solver": "euler", "seed": 0,
            "checkpoint": str(settings.checkpoint or "shipped proxy")}
    atomic_write_json(out / "samples.json", meta)
    return time.process_time() - start


def update_cost(run_dir: Path, *, trials: pd.DataFrame, study: optuna.Study, session: dict[str, Any]) -> dict[str, Any]:
    """Append this session to `search_cost.json` and recompute the totals from the trials."""
    path = run_dir / "search_cost.json"
    previous = json.loads(path.read_text()).get("sessions", []) if path.exists() else []
    sessions = [*previous, {**session, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}]
    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    has = len(trials) > 0
    cost = {
        "trials": int(len(trials)),
        "feasible_trials": int(trials["feasible"].sum()) if has else 0,
        "quality_evaluations": int((trials["quality_evaluated"] & ~trials["quality_cached"]).sum()) if has else 0,
        "quality_cache_hits": int(trials["quality_cached"].sum()) if has else 0,
        "failed_trials": len(failed),
        "quality_cpu_s": round(float(trials["quality_cpu_s"].sum()), 3) if has else 0.0,
        "latency_cpu_s": round(float(trials["latency_cpu_s"].sum()), 4) if has else 0.0,
        "preset_quality_cpu_s": round(sum(s.get("preset_quality_cpu_s", 0.0) for s in sessions), 3),
        "sample_grid_cpu_s": round(sum(s.get("sample_grid_cpu_s", 0.0) for s in sessions), 3),
        "wall_s": round(sum(s["wall_s"] for s in sessions), 2),
        "sessions": sessions,
    }
    atomic_write_json(path, cost)
    return cost


@contextlib.contextmanager
def progress_bar(console: Any, *, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on `console` (nothing when None); yields `advance(completed)`."""
    if console is None:
        yield lambda done: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield lambda done: progress.update(task, completed=min(done, total))
