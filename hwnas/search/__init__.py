"""Hardware-aware search: Optuna, constrained multi-objective (proxy val loss, predicted latency <= budget).

    settings = SearchSettings(device="pixel8", budget_ms=parse_budget_ms("1.8s"))
    result = run_search(settings)          # {"run_dir", "best", "settings", "cost"}

Public: `parse_budget_ms`, `check_budget`, `SearchSettings`, `run_search`, `prepare`, the constraints
beyond latency (`parse_bounds`, `Bounds`, `footprint`, `BoundError`),
`InfeasibleBudgetError`, `hypervolume_2d`, and the pieces a benchmark or another driver reuses
(`LatencyModel`, `QualityModel`, `run_trial`, `make_sampler`, `search_sampler`, `first_trials`,
`fits_budget`, `run_loop`, `trials_frame`, `pareto_frame`), and the multi-fidelity quality (`parse_screen`,
`confirm`, `fidelity`).
"""

from __future__ import annotations

from hwnas.search.budget import Feasibility, check_budget, format_ms, parse_budget_ms
from hwnas.search.confirm import confirm, fidelity, parse_screen
from hwnas.search.constraints import BoundError, Bounds, Footprint, footprint, parse_bounds, parse_bytes, parse_count
from hwnas.search.objective import (
    LatencyModel,
    QualityModel,
    config_from_params,
    params_from_config,
    run_trial,
    same_choices,
    suggest_config,
)
from hwnas.search.results import hypervolume_2d, pareto_frame, trials_frame
from hwnas.search.run import InfeasibleBudgetError, prepare, run_search
from hwnas.search.start import FeasibleRandomSampler, first_trials, fits_budget, search_sampler
from hwnas.search.study import (
    SAMPLERS,
    STARTS,
    SamplerName,
    SearchSettings,
    StartName,
    make_sampler,
    recover_stale_trials,
    run_loop,
)

__all__ = [
    "BoundError", "Bounds", "Feasibility", "FeasibleRandomSampler", "Footprint", "InfeasibleBudgetError",
    "LatencyModel", "QualityModel", "SAMPLERS", "STARTS", "SamplerName", "SearchSettings", "StartName",
    "check_budget", "config_from_params", "confirm", "fidelity", "first_trials", "fits_budget", "footprint",
    "format_ms", "hypervolume_2d", "make_sampler", "params_from_config", "pareto_frame", "parse_bounds",
    "parse_budget_ms", "parse_bytes", "parse_count", "parse_screen", "prepare", "recover_stale_trials", "run_loop",
    "run_search", "run_trial", "same_choices", "search_sampler", "suggest_config", "trials_frame",
]
