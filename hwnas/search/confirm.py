"""Multi-fidelity quality: a cheap val loss screens the trials; the Pareto candidates are confirmed.

With `SearchSettings.screen_images` > 0 every trial is scored with the val loss on a few images and
t values (the screen). After the search the candidates, the first `fronts` non-dominated fronts of
the screened trials (a sub-DiT that the screen's noise put just behind the front still gets its
chance), are scored with the full val loss, and the Pareto picks (`pareto.csv`, `best.json`) are
chosen on it. With `quality` compositional or fd_ref the candidates are also scored with that metric
(`hwnas.metrics.evaluate`), reported beside the val loss, not ranked on. Every value says its
fidelity: `quality_screen` (the screen), `quality` (the full val loss), `<metric>` and `<metric>_source`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from hwnas.io import atomic_write_text
from hwnas.search.objective import QualityModel
from hwnas.search.study import SearchSettings
from hwnas.space import SubnetConfig

CONFIRM_COLUMNS = ("config_id", "trial", "front", "latency_ms", "quality_screen", "quality", "confirm_cpu_s")
"""The columns of `confirmed.csv` (plus `<metric>` and `<metric>_source` for compositional or fd_ref)."""


def front_ranks(points: list[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting: the front (1, 2, ...) of each (quality, latency_ms) point, both minimised.
    A point is dominated by one at least as good in both objectives and better in one."""
    rank = [0] * len(points)
    left = set(range(len(points)))
    front = 0
    while left:
        front += 1
        now = {i for i in left if not any(
            points[j][0] <= points[i][0] and points[j][1] <= points[i][1] and points[j] != points[i]
            for j in left)}
        for i in now:
            rank[i] = front
        left -= now
    return rank


def candidate_frame(trials: pd.DataFrame, *, fronts: int = 2) -> pd.DataFrame:
    """The feasible, evaluated trials (one per sub-DiT) on the first `fronts` fronts, with a `front` column,
    by front then latency."""
    ok = trials[trials["feasible"] & trials["quality_evaluated"]] if len(trials) else trials
    ok = ok.sort_values(["latency_ms", "quality", "trial"]).drop_duplicates("config_id", keep="first")
    ranks = front_ranks(list(zip(ok["quality"].astype(float), ok["latency_ms"].astype(float))))
    out = ok.assign(front=ranks)
    return out[out["front"] <= fronts].sort_values(["front", "latency_ms"]).reset_index(drop=True)


def confirm(trials: pd.DataFrame, *, full: QualityModel | None, metric: str = "val_loss",
            score: Callable[[SubnetConfig], dict[str, Any]] | None = None, previous: pd.DataFrame | None = None,
            fronts: int = 2) -> pd.DataFrame:
    """Score the candidates again: the full val loss with `full` (None: the trials were scored with it
    already), and `metric` with `score` (`hwnas.metrics.evaluate`'s result: `value`, `source`).

    `previous` (an earlier `confirmed.csv`) supplies metric values by config id, so a rerun does not
    generate images again. Returns one row per candidate (`CONFIRM_COLUMNS`, plus `metric` and
    `<metric>_source` unless `metric` is val_loss).
    """
    known = {}
    if previous is not None and metric in previous.columns:
        known = {r["config_id"]: (r[metric], r[f"{metric}_source"]) for _, r in previous.iterrows()
                 if isinstance(r[metric], (int, float)) and math.isfinite(r[metric])}
    rows = []
    for _, r in candidate_frame(trials, fronts=fronts).iterrows():
        cfg = SubnetConfig.from_json(r["config_json"])
        start = time.process_time()
        screen = float(r["quality"])
        row: dict[str, Any] = {"config_id": r["config_id"], "trial": int(r["trial"]), "front": int(r["front"]),
                               "latency_ms": float(r["latency_ms"]),
                               "quality_screen": screen if full is not None else math.nan,
                               "quality": full(cfg)[0] if full is not None else screen}
        if metric != "val_loss":
            if score is None:
                raise ValueError(f"confirming with {metric} needs a scoring function")
            if r["config_id"] in known:
                value, source = known[r["config_id"]]
            else:
                result = score(cfg)
                value, source = result["value"], result["source"]
            row.update({metric: float(value), f"{metric}_source": source})
        row["confirm_cpu_s"] = time.process_time() - start
        rows.append(row)
    extra = [metric, f"{metric}_source"] if metric != "val_loss" else []
    return pd.DataFrame(rows, columns=[*CONFIRM_COLUMNS, *extra])


def confirmed_trials(trials: pd.DataFrame, confirmed: pd.DataFrame) -> pd.DataFrame:
    """The candidates' trial rows with `quality` replaced by the confirmed full val loss (`quality_screen`
    keeps the screen's) and the metric columns added: what `pareto_frame` picks the front from."""
    extra = [c for c in confirmed.columns if c not in CONFIRM_COLUMNS]
    conf = confirmed.set_index("trial")
    rows = trials[trials["trial"].isin(conf.index)].copy()
    rows["quality_screen"] = rows["trial"].map(conf["quality_screen"])
    rows["quality"] = rows["trial"].map(conf["quality"])
    for c in extra:
        rows[c] = rows["trial"].map(conf[c])
    return rows


FULL_T_VALUES = 8
"""t values of the full val loss (`make_val_set`'s default grid)."""


def parse_screen(text: str) -> tuple[int, int]:
    """`16x4` -> (16 images, 4 t values); `16` -> (16, 4); `off` or `0` -> (0, 4): no screening.
    Raises ValueError quoting `text` for anything else."""
    if str(text).strip().lower() in ("off", "0"):
        return 0, 4
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", str(text))
    if match is None or int(match[1]) < 1 or (match[2] is not None and int(match[2]) < 1):
        raise ValueError(f"cannot read screen {text!r}: write IMAGESxT (e.g. 16x4: the val loss on 16 images at "
                         f"4 t values), IMAGES (4 t values) or off")
    return int(match[1]), int(match[2] or 4)


def fidelity(settings: SearchSettings) -> dict[str, str]:
    """Which quality the trials and the Pareto picks carry, in words (the report labels every figure with it)."""
    full = f"full val loss ({settings.val_images} images x {FULL_T_VALUES} t values)"
    trials = (f"screen val loss ({settings.screen_images} images x {settings.screen_t} t values)"
              if settings.screen_images else full)
    picks = full + (f"; {settings.quality} on {settings.confirm_n} images" if settings.quality != "val_loss" else "")
    return {"trials": trials, "picks": picks if settings.confirms else trials}


def confirm_search(trials: pd.DataFrame, *, settings: SearchSettings, quality: QualityModel, checkpoint: Path,
                   run_dir: Path) -> tuple[pd.DataFrame, QualityModel]:
    """Confirm the candidates of a finished search and write `run_dir/confirmed.csv`.

    Returns (the rows `pareto_frame` picks the front from, the full-fidelity quality model: `quality`
    itself unless the trials were screened). An existing `confirmed.csv` supplies metric values.
    """
    import torch

    from hwnas.metrics.evaluate import evaluate
    from hwnas.metrics.val_loss import make_val_set

    full = None
    if settings.screen_images:
        torch.manual_seed(0)  # as `hwnas.search.run` builds the unscreened val set
        full = QualityModel(net=quality.net, val=make_val_set(quality.net, n=settings.val_images,
                                                              grid=FULL_T_VALUES, seed=0))

    def score(cfg: SubnetConfig) -> dict[str, Any]:
        return evaluate(quality.net, cfg, metric=settings.quality, n=settings.confirm_n,
                        checkpoint=checkpoint)

    path = run_dir / "confirmed.csv"
    previous = pd.read_csv(path) if path.is_file() else None
    confirmed = confirm(trials, full=full, metric=settings.quality, score=score, previous=previous)
    atomic_write_text(path, confirmed.to_csv(index=False))
    return confirmed_trials(trials, confirmed), full or quality
