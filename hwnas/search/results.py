"""Study -> tables: every trial, the Pareto front and the best feasible sub-DiT (DataFrames and files).

File contract (read by `hwnas report` and `hwnas export`):
- `trials.csv`: one row per COMPLETE trial (config id, choices, quality, latency, source, feasible, ...);
- `pareto.csv`: one row per Pareto pick, `pick` 0.. in order of increasing latency; has `config_id`
  and `config_json` (`SubnetConfig.to_json()`);
- `best.json`: the feasible sub-DiT with the lowest val loss (`config`, `config_id`, `latency_ms`,
  `latency_source`, `quality`, `quality_source`, `device`, `experiment`, `steps`, `precision`, ...).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from hwnas.io import atomic_write_json, atomic_write_text
from hwnas.space import STAGES, SubnetConfig

_CHOICES = ("width", "depth", "ffn_ratio", "attn", "radius")
CHOICE_COLUMNS = tuple(f"{s}.{a}" for s in STAGES for a in _CHOICES)
BREAKDOWN_COLUMNS = ("denoiser_ms", "text_encoder_ms", "vae_decoder_ms")
FOOTPRINT_COLUMNS = ("params", "size_bytes", "memory_bytes")
"""Parameters, bytes on disk and peak bytes of one step at the run's precision (`hwnas.search.constraints`)."""
TRIAL_COLUMNS = ("trial", "config_id", "describe", *CHOICE_COLUMNS, "quality", "quality_evaluated", "quality_cached",
                 "latency_ms", "latency_source", "latency_ms_hi", "p_within_budget", "feasible",
                 *FOOTPRINT_COLUMNS, "step_ms",
                 *BREAKDOWN_COLUMNS, "quality_cpu_s", "latency_cpu_s", "worker", "retry_of", "config_json")
"""The columns of `trials.csv` (plus one `step_ms.<kind>` per kernel kind), also when it has no rows."""


def trials_frame(trials: list[optuna.trial.FrozenTrial]) -> pd.DataFrame:
    """One row per COMPLETE trial, ordered by trial number. `quality` is NaN where not evaluated."""
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != optuna.trial.TrialState.COMPLETE:
            continue
        a = t.user_attrs["hwnas"]
        cfg = SubnetConfig.from_json(a["config_json"])
        q = a.get("quality")
        row: dict[str, Any] = {
            "trial": t.number, "config_id": a["config_id"], "describe": a["describe"],
            **{f"{s}.{c}": getattr(cfg.stage(s), c) for s in STAGES for c in _CHOICES},  # CHOICE_COLUMNS
            "quality": float(q) if q is not None else math.nan,
            "quality_evaluated": q is not None, "quality_cached": bool(a.get("quality_cached", False)),
            "latency_ms": float(a["latency_ms"]), "latency_source": a["latency_source"],
            "latency_ms_hi": float(a.get("latency_ms_hi", a["latency_ms"])),
            "p_within_budget": float(a.get("p_within_budget", math.nan)),
            "feasible": bool(a["feasible"]),
            **{c: int(a[c]) if c in a else math.nan for c in FOOTPRINT_COLUMNS},  # NaN: a run from before them
            "step_ms": float(a["step_ms"]),
            **{c: float(a[c]) for c in BREAKDOWN_COLUMNS},
            **{f"step_ms.{k}": float(v) for k, v in a.get("step_ms_by_kind", {}).items()},
            "quality_cpu_s": float(a.get("quality_cpu_s", 0.0)), "latency_cpu_s": float(a.get("latency_cpu_s", 0.0)),
            "worker": t.user_attrs.get("worker", ""), "retry_of": t.user_attrs.get("retry_of", ""),
            "config_json": a["config_json"],
        }
        rows.append(row)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(TRIAL_COLUMNS))


def pareto_frame(trials: pd.DataFrame) -> pd.DataFrame:
    """Feasible, evaluated, non-dominated trials in (quality, latency_ms), one per config, by latency."""
    ok = trials[trials["feasible"] & trials["quality_evaluated"]] if len(trials) else trials
    if not len(ok):
        return ok.assign(pick=pd.Series(dtype=int))
    ok = ok.sort_values(["latency_ms", "quality", "trial"]).drop_duplicates("config_id", keep="first")
    front, best_q = [], math.inf
    for idx, row in ok.iterrows():  # increasing latency: keep a row only if it improves quality
        if row["quality"] < best_q:
            front.append(idx)
            best_q = row["quality"]
    out = ok.loc[front].reset_index(drop=True)
    out.insert(0, "pick", range(len(out)))
    return out


def best_record(pareto: pd.DataFrame, *, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The best feasible sub-DiT (lowest val loss; the last Pareto pick) as the `best.json` object."""
    if not len(pareto):
        return None
    row = pareto.iloc[-1]
    return {
        "config": json.loads(row["config_json"]), "config_id": row["config_id"], "describe": row["describe"],
        "pick": int(row["pick"]), "trial": int(row["trial"]),
        "latency_ms": round(float(row["latency_ms"]), 3), "latency_source": row["latency_source"],
        "latency_ms_hi": round(float(row.get("latency_ms_hi", row["latency_ms"])), 3),
        "p_within_budget": round(float(row.get("p_within_budget", math.nan)), 4),
        "confidence": settings.get("confidence"),
        "latency_breakdown_ms": {c: round(float(row[c]), 3) for c in BREAKDOWN_COLUMNS},
        "latency_provenance": settings["latency_provenance"],
        **{c: int(row[c]) for c in FOOTPRINT_COLUMNS if c in row and not pd.isna(row[c])},
        "constraints": settings.get("constraints", []),
        "quality": float(row["quality"]), "quality_metric": "val_loss (lower is better)",
        "quality_source": settings["quality_source"],
        **_confirmed_fields(row, settings),
        "budget_ms": settings["budget_ms"], "device": settings["device"], "experiment": settings["experiment_name"],
        "proxy_experiment": settings["proxy_experiment"], "steps": settings["steps"],
        "precision": settings["precision"],
    }


def hypervolume_2d(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by `points` (both objectives minimised) and bounded by `reference`."""
    pts = sorted(((q, lat) for q, lat in points if q < reference[0] and lat < reference[1]), key=lambda p: (p[1], p[0]))
    area, best_q = 0.0, reference[0]
    for q, lat in pts:
        if q >= best_q:
            continue
        # a strip from this latency to the reference latency, between the new and the previous best quality
        area += (best_q - q) * (reference[1] - lat)
        best_q = q
    return area


def _confirmed_fields(row: pd.Series, settings: dict[str, Any]) -> dict[str, Any]:
    """The fidelity of a pick's quality and, where the candidates were confirmed, the screen's value and
    the confirming metric (`hwnas.search.confirm`)."""
    fid = settings.get("quality_fidelity", {})
    confirmed = "quality_screen" in row.index
    out: dict[str, Any] = {"quality_fidelity": fid.get("picks" if confirmed else "trials", "")}
    if confirmed and pd.notna(row["quality_screen"]):
        out["quality_screen"] = float(row["quality_screen"])
        out["quality_source"] = (f"{settings['quality_source']} (the trials' screen); this pick's quality: "
                                 f"{out['quality_fidelity']}")
    for metric in ("compositional", "fd_ref"):
        if metric in row.index and pd.notna(row[metric]):
            out[metric] = float(row[metric])
            out[f"{metric}_source"] = row[f"{metric}_source"]
    return out


def write_results(trials: pd.DataFrame, *, run_dir: Path, settings: dict[str, Any],
                  pareto_from: pd.DataFrame | None = None) -> dict[str, Any] | None:
    """Write trials.csv, pareto.csv and best.json into `run_dir`; return the best record (or None).
    The Pareto picks come from `pareto_from` where given (the confirmed candidates), else from `trials`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "trials.csv", trials.to_csv(index=False))
    pareto = pareto_frame(trials if pareto_from is None else pareto_from)
    atomic_write_text(run_dir / "pareto.csv", pareto.to_csv(index=False))
    best = best_record(pareto, settings=settings)
    atomic_write_json(run_dir / "best.json", best)
    return best
