"""`hwnas runs`: the run directories under a reports folder, with device, budget, best and state.

A run is a directory with a `settings.json` written by `hwnas search`, directly under the folder or
one level deeper (the budgets of a sweep). Its state comes from its files: finished when the last
session ran to the end and the study holds the trials asked for; otherwise interrupted (Ctrl-C,
`--timeout`, a killed process, or a search still running).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from hwnas.paths import display_path
from hwnas.search.budget import format_ms

if TYPE_CHECKING:  # rich is imported where used
    from rich.console import JustifyMethod

RUN_COLUMNS = ("run_dir", "device", "budget", "budget_ms", "experiment", "sampler", "constraints", "trials",
               "trials_asked", "best", "best_val_loss", "best_latency_ms", "state", "why", "sweep")
_STOPPED = {"interrupted": "stopped by Ctrl-C", "timeout": "stopped by --timeout"}


def run_state(settings: dict[str, Any], cost: dict[str, Any]) -> tuple[str, str]:
    """("finished" | "interrupted", why) from a run's settings.json and search_cost.json (either may be {})."""
    asked = int(settings.get("n_trials", 0)) + int(settings.get("carried_trials", 0))
    if not cost:
        return "interrupted", "no session finished (killed, or still running)"
    done = int(cost.get("trials", 0)) + int(cost.get("failed_trials", 0))
    stopped = (cost.get("sessions") or [{}])[-1].get("stopped", "done")
    if stopped in _STOPPED:
        return "interrupted", f"{_STOPPED[stopped]} after {done}/{asked} trials"
    if done < asked:
        return "interrupted", f"{done}/{asked} trials (killed, or still running)"
    return "finished", f"{done}/{asked} trials"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _row(run_dir: Path, *, sweep: str) -> dict[str, Any] | None:
    settings = _read(run_dir / "settings.json")
    if not isinstance(settings, dict) or "device" not in settings or "budget_ms" not in settings:
        return None  # not a search run (or one whose settings.json is unreadable)
    cost = _read(run_dir / "search_cost.json")
    best = _read(run_dir / "best.json")
    best = best if isinstance(best, dict) else {}
    state, why = run_state(settings, cost if isinstance(cost, dict) else {})
    return {"run_dir": display_path(run_dir), "device": settings["device"],
            "budget": format_ms(float(settings["budget_ms"])), "budget_ms": float(settings["budget_ms"]),
            "experiment": settings.get("experiment_name", ""), "sampler": settings.get("sampler", ""),
            "constraints": ", ".join(settings.get("constraints") or []),
            "trials": int(cost.get("trials", 0)) if isinstance(cost, dict) else 0,
            "trials_asked": int(settings.get("n_trials", 0)) + int(settings.get("carried_trials", 0)),
            "best": best.get("describe", ""), "best_val_loss": best.get("quality", math.nan),
            "best_latency_ms": best.get("latency_ms", math.nan), "state": state, "why": why, "sweep": sweep}


def list_runs(reports_dir: str | Path = "reports") -> pd.DataFrame:
    """One row per run directory under `reports_dir` (and per budget of each sweep there), by path.

    Raises ValueError where `reports_dir` is not a folder.
    """
    root = Path(reports_dir)
    if not root.is_dir():
        raise ValueError(f"{display_path(root)} is not a folder (give --reports DIR)")
    rows: list[dict[str, Any]] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if (child / "settings.json").is_file():
            rows += [r for r in [_row(child, sweep="")] if r is not None]
        elif (child / "sweep.json").is_file():
            members = [_row(p, sweep=display_path(child)) for p in sorted(child.iterdir())
                       if (p / "settings.json").is_file()]
            rows += sorted((r for r in members if r is not None), key=lambda r: r["budget_ms"])
    return pd.DataFrame(rows, columns=list(RUN_COLUMNS))


def print_runs(runs: pd.DataFrame, console: Any, *, reports_dir: str | Path = "reports") -> None:
    """The runs as a rich table (best in bold where finished)."""
    from rich.table import Table

    if not len(runs):
        console.print(f"no search runs in {display_path(reports_dir)}")
        return
    table = Table(title=f"search runs in {display_path(reports_dir)}")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("run", "left"), ("device", "left"), ("budget", "right"), ("best", "left"), ("val loss", "right"),
        ("latency ms", "right"), ("state", "left"))
    for col, just in columns:
        table.add_column(col, justify=just, overflow="fold")
    for _, r in runs.iterrows():
        loss = f"{r['best_val_loss']:.5f}" if not pd.isna(r["best_val_loss"]) else "-"
        lat = f"{r['best_latency_ms']:,.1f}" if not pd.isna(r["best_latency_ms"]) else "-"
        state = r["state"] if r["state"] == "finished" else f"[yellow]{r['state']}[/yellow]"
        table.add_row(r["run_dir"], r["device"], r["budget"], r["best"] or "-", loss, lat, f"{state} ({r['why']})")
    console.print(table)
