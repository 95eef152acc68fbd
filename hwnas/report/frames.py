"""A run directory -> `RunData`: the DataFrames and records a report draws (no plotting here)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

REQUIRED = ("settings.json", "trials.csv", "pareto.csv", "best.json")


@dataclass(frozen=True)
class RunData:
    """Everything a report shows, read from the files of one run directory."""

    run_dir: Path
    settings: dict[str, Any]
    trials: pd.DataFrame
    pareto: pd.DataFrame
    presets: pd.DataFrame
    best: dict[str, Any] | None
    cost: dict[str, Any]
    samples: dict[str, Path]  # config_id -> PNG
    samples_meta: dict[str, Any]
    compress: list[dict[str, Any]]  # RUN_DIR/compress/<config_id>/results.json, in pick order
    confirmed: pd.DataFrame = field(default_factory=pd.DataFrame)  # confirmed.csv (hwnas.search.confirm)

    @property
    def fidelity(self) -> dict[str, str]:
        """Which quality the trials and the picks carry, in words (runs before fidelities: the val loss)."""
        return self.settings.get("quality_fidelity") or {"trials": "val loss", "picks": "val loss"}

    @property
    def budget_ms(self) -> float:
        return float(self.settings["budget_ms"])


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory written by `hwnas search`. A missing file is a ValueError naming it."""
    run_dir = Path(run_dir)
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(f"{run_dir} is not a search run directory: missing {', '.join(missing)}")
    try:
        settings = json.loads((run_dir / "settings.json").read_text())
        best = json.loads((run_dir / "best.json").read_text())
        trials = pd.read_csv(run_dir / "trials.csv")
        pareto = pd.read_csv(run_dir / "pareto.csv")
    except (ValueError, pd.errors.ParserError) as exc:
        raise ValueError(f"{run_dir}: unreadable run file ({exc})") from None
    presets_path = run_dir / "presets.csv"
    presets = pd.read_csv(presets_path) if presets_path.is_file() else pd.DataFrame()
    cost_path = run_dir / "search_cost.json"
    cost = json.loads(cost_path.read_text()) if cost_path.is_file() else {}
    sample_dir = run_dir / "samples"
    samples = {p.stem: p for p in sorted(sample_dir.glob("*.png"))} if sample_dir.is_dir() else {}
    meta_path = sample_dir / "samples.json"
    samples_meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    confirmed_path = run_dir / "confirmed.csv"
    confirmed = pd.read_csv(confirmed_path) if confirmed_path.is_file() else pd.DataFrame()
    return RunData(run_dir=run_dir, settings=settings, trials=trials, pareto=pareto, presets=presets, best=best,
                   cost=cost, samples=samples, samples_meta=samples_meta,
                   compress=_compress_results(run_dir, pareto), confirmed=confirmed)


def _compress_results(run_dir: Path, pareto: pd.DataFrame) -> list[dict[str, Any]]:
    """Results of `hwnas compress` per processed pick, if any (schema in the distillation contract)."""
    order = {cid: i for i, cid in enumerate(pareto.get("config_id", []))}
    out = []
    for path in sorted((run_dir / "compress").glob("*/results.json")):
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict) and "config_id" in data:
            out.append(data)
    return sorted(out, key=lambda d: order.get(d["config_id"], math.inf))


def summary_frame(data: RunData) -> pd.DataFrame:
    """The Pareto picks as the table people read: pick, sub-DiT, latency (point and the one-sided upper
    bound the search constrained), the probability that one image fits the budget, quality, margin to budget."""
    p = data.pareto
    if not len(p):
        return pd.DataFrame(columns=["pick", "config_id", "sub-DiT", "latency_ms", "latency_hi_ms", "p_fit", "source",
                                     "val_loss", "headroom_ms"])
    out = pd.DataFrame({
        "pick": p["pick"], "config_id": p["config_id"], "sub-DiT": p["describe"],
        "latency_ms": p["latency_ms"].round(1),
        "latency_hi_ms": p.get("latency_ms_hi", p["latency_ms"]).round(1),
        "p_fit": p.get("p_within_budget", pd.Series(float("nan"), index=p.index)).round(3),
        "source": p["latency_source"], "val_loss": p["quality"].round(5),
        "headroom_ms": (data.budget_ms - p["latency_ms"]).round(1),
    })
    if "params" in p and p["params"].notna().all():  # runs from before the footprint columns lack them
        out["params_M"] = (p["params"] / 1e6).round(2)
        out["size_MB"] = (p["size_bytes"] / 1e6).round(1)
        out["memory_MB"] = (p["memory_bytes"] / 1e6).round(1)
    if "quality_screen" in p.columns and p["quality_screen"].notna().any():  # confirmed picks: the screen's too
        out.insert(6, "screen_val_loss", p["quality_screen"].round(5))
    for metric in ("compositional", "fd_ref"):
        if metric in p.columns:
            out[metric] = p[metric].round(4)
    return out


def breakdown_frame(data: RunData) -> pd.DataFrame:
    """Latency of each Pareto pick split into denoiser kernel kinds x steps, text encoder and VAE decoder."""
    p = data.pareto
    if not len(p):
        return pd.DataFrame()
    steps = int(data.settings["steps"])
    kinds = [c for c in p.columns if c.startswith("step_ms.")]
    out = pd.DataFrame({"pick": p["pick"], "config_id": p["config_id"]})
    for c in kinds:
        out[f"denoiser: {c.removeprefix('step_ms.')}"] = p[c].fillna(0.0) * steps
    out["text encoder"] = p["text_encoder_ms"]
    out["VAE decoder"] = p["vae_decoder_ms"]
    return out.set_index("pick")
