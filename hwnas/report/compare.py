"""`hwnas report --compare RUN_DIR...`: Pareto fronts of several runs overlaid (devices, budgets, samplers).

DataFrames first (`load_comparison` -> `Comparison`: one row per run, one per Pareto pick), then one
figure and one self-contained HTML page with a CSV of the picks beside it (`build_comparison`).
Only runs of one experiment rated by one quality source are overlaid: val losses of two proxies, or
of one proxy on two validation sets, are not on one scale, and sub-DiTs of two spaces are not the
same candidates. A sweep directory stands for its runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from hwnas.io import atomic_write, atomic_write_text
from hwnas.paths import display_path
from hwnas.report.frames import RunData, load_run
from hwnas.report.html import _CSS, _esc, _img, _source, _table
from hwnas.search.budget import format_ms
from hwnas.search.constraints import format_bytes, format_count
from hwnas.search.results import hypervolume_2d

VARYING = ("device", "budget_ms", "sampler", "steps", "precision", "guidance", "confidence", "seed", "constraints",
           "latency_table_source")
"""Settings that may differ between overlaid runs; the labels name those that do."""
QUALITY_KEYS = ("quality_metric", "quality_source", "quality_fidelity", "checkpoint_sha256")
"""What must agree for the quality of one run to be comparable with another's (`_quality_basis`)."""
FRONT_COLUMNS = ("run", "run_dir", "device", "budget_ms", "sampler", "pick", "config_id", "describe", "latency_ms",
                 "latency_ms_hi", "latency_source", "quality", "params", "size_bytes", "memory_bytes")


class NotComparableError(ValueError):
    """Runs whose fronts cannot be overlaid (another experiment, another quality source); says why."""


@dataclass(frozen=True)
class Comparison:
    runs: tuple[RunData, ...]
    labels: tuple[str, ...]
    varies: tuple[str, ...]
    """The settings (`VARYING`) that differ between the runs."""
    summary: pd.DataFrame
    """One row per run: label, settings that vary, trials, quality evaluations, best, hypervolume, state."""
    fronts: pd.DataFrame
    """One row per Pareto pick of every run (`FRONT_COLUMNS`)."""
    reference: tuple[float, float]
    """Hypervolume reference point (val loss, latency ms): the worst evaluated val loss of all runs, the
    largest budget."""


def expand_run_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories from `paths`: a sweep directory (with `sweep.json`) stands for its runs, by budget."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        sweep = path / "sweep.json"
        if sweep.is_file() and not (path / "settings.json").is_file():
            try:
                members = json.loads(sweep.read_text()).get("members", [])
            except ValueError:
                raise ValueError(f"{display_path(sweep)}: not valid JSON") from None
            out += sorted((path / format_ms(float(m["budget_ms"])) for m in members), key=_budget_key)
        else:
            out.append(path)
    return out


def _budget_key(path: Path) -> float:
    try:
        return float(json.loads((path / "settings.json").read_text())["budget_ms"])
    except (OSError, ValueError, KeyError):
        return math.inf


def _where_they_differ(a: str, b: str, *, context: int = 40) -> tuple[str, str]:
    """The parts of two long strings around their first difference (`...` where cut)."""
    i = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    start = max(0, i - context)

    def cut(s: str) -> str:
        end = i + context
        return ("..." if start else "") + s[start:end] + ("..." if end < len(s) else "")

    return cut(a), cut(b)


def _quality_basis(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings a run's quality rests on: metric, source (without the proxy's caveat, a remark the
    code adds, not part of the measurement), fidelity where recorded, and the checkpoint's content hash."""
    return {"quality_metric": settings.get("quality_metric"),
            "quality_source": str(settings.get("quality_source", "")).split("; caveat:")[0],
            "quality_fidelity": settings.get("quality_fidelity"),
            "checkpoint_sha256": (settings.get("identity") or {}).get("checkpoint_sha256")}


def check_comparable(runs: Sequence[RunData]) -> None:
    """Raise NotComparableError (one line, saying why) unless all runs share experiment and quality source."""
    first = runs[0]
    for run in runs[1:]:
        a, b = first.settings, run.settings
        pair = f"{display_path(first.run_dir)} and {display_path(run.run_dir)}"
        if a.get("experiment_name") != b.get("experiment_name"):
            raise NotComparableError(f"cannot overlay {pair}: they search different experiments "
                                     f"({a.get('experiment_name')!r} vs {b.get('experiment_name')!r}), so their "
                                     f"sub-DiTs are not the same candidates; compare runs of one experiment")
        qa, qb = _quality_basis(a), _quality_basis(b)
        for key in QUALITY_KEYS:
            if key == "checkpoint_sha256" and None in (qa[key], qb[key]):
                continue  # a run from before the hash was recorded: the source's path and step must do
            if qa.get(key) != qb.get(key):
                da, db = _where_they_differ(str(qa.get(key)), str(qb.get(key)))
                raise NotComparableError(f"cannot overlay {pair}: their quality comes from different sources "
                                         f"({key}: {da!r} vs {db!r}), so their val losses are not on one scale; "
                                         f"compare runs rated by one quality source")


def _value(settings: dict[str, Any], key: str) -> str:
    v = settings.get(key)
    if key == "budget_ms" and v is not None:
        return format_ms(float(v))
    if key == "constraints":
        return ", ".join(v) if v else "latency only"
    return str(v)


def _labels(runs: Sequence[RunData]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    varies = tuple(k for k in VARYING if len({_value(r.settings, k) for r in runs}) > 1)
    labels = [" ".join(_value(r.settings, k) for k in varies) or r.run_dir.name for r in runs]
    if len(set(labels)) < len(labels):  # same settings (say, two --trials): tell them apart by folder
        labels = [f"{label} ({r.run_dir.name})" for label, r in zip(labels, runs)]
    return varies, tuple(labels)


def _state(run: RunData) -> str:
    from hwnas.report.runs import run_state

    return run_state(run.settings, run.cost)[0]


def load_comparison(run_dirs: Sequence[str | Path]) -> Comparison:
    """Read the runs (sweep directories expand to their runs) and line their fronts up.

    Raises ValueError (fewer than two runs, one given twice, not a run directory) or NotComparableError.
    """
    paths = expand_run_dirs(run_dirs)
    if len(paths) < 2:
        raise ValueError(f"--compare needs at least two runs (or a sweep), got {len(paths)}")
    seen: dict[Path, str] = {}
    for p in paths:
        if p.resolve() in seen:
            raise ValueError(f"{display_path(p)} is given twice")
        seen[p.resolve()] = str(p)
    runs = tuple(load_run(p) for p in paths)
    check_comparable(runs)
    varies, labels = _labels(runs)
    evaluated = [r.trials.loc[r.trials["quality_evaluated"].astype(bool), "quality"] for r in runs]
    worst = max((float(q.max()) for q in evaluated if len(q)), default=1.0)
    reference = (worst, max(r.budget_ms for r in runs))
    fronts, rows = [], []
    for run, label in zip(runs, labels):
        s, p, c = run.settings, run.pareto, run.cost
        front = pd.DataFrame({"run": label, "run_dir": display_path(run.run_dir), "device": s["device"],
                              "budget_ms": float(s["budget_ms"]), "sampler": s["sampler"]}, index=p.index)
        for col in FRONT_COLUMNS[5:]:
            front[col] = p[col] if col in p else math.nan
        fronts.append(front)
        best = run.best or {}
        hv = hypervolume_2d(list(zip(p["quality"], p["latency_ms"])), reference) if len(p) else 0.0
        rows.append({"run": label, **{k: _value(s, k) for k in varies}, "trials": c.get("trials"),
                     "quality_evaluations": c.get("quality_evaluations"), "pareto_picks": len(p),
                     "best": best.get("describe", ""), "best_val_loss": best.get("quality", math.nan),
                     "best_latency_ms": best.get("latency_ms", math.nan), "hypervolume": hv,
                     "latency_source": s.get("latency_table_source", ""), "state": _state(run),
                     "run_dir": display_path(run.run_dir)})
    front_frame = pd.concat(fronts, ignore_index=True) if fronts else pd.DataFrame(columns=list(FRONT_COLUMNS))
    return Comparison(runs=runs, labels=labels, varies=varies, summary=pd.DataFrame(rows),
                      fronts=front_frame[list(FRONT_COLUMNS)], reference=reference)


def plot_comparison(cmp: Comparison, path: Path) -> Path:
    """The Pareto fronts as steps, one colour and marker per run, each run's budget a dashed line of its colour.

    The x axis is the latency the budgets constrain: the one-sided upper bound (`latency_ms_hi`) where
    every run constrains it, so each front ends left of its budget line. Looser budgets are drawn first
    with larger markers, so fronts that share picks stay visible.
    """
    from hwnas.report.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 5.0))
    colors = plt.get_cmap("tab10")
    markers = ("o", "s", "^", "D", "v", "P")
    budgets_vary = "budget_ms" in cmp.varies
    confidences = {r.settings.get("confidence") for r in cmp.runs}
    known = sorted(float(c) for c in confidences if c is not None)
    bound = None not in confidences and cmp.fronts["latency_ms_hi"].notna().all()
    x = "latency_ms_hi" if bound else "latency_ms"
    order = sorted(range(len(cmp.runs)), key=lambda i: -cmp.runs[i].budget_ms)
    for rank, i in enumerate(order):
        run, label, color = cmp.runs[i], cmp.labels[i], colors(i % 10)
        p = cmp.fronts[cmp.fronts["run"] == label]
        if len(p):
            ax.step(p[x], p["quality"], where="post", color=color, lw=1.4, alpha=0.8)
            ax.scatter(p[x], p["quality"], s=max(14, 70 - 22 * rank), marker=markers[i % len(markers)],
                       color=color, zorder=3 + rank, edgecolors="white", linewidths=0.5,
                       label=f"{label}: {len(p)} Pareto picks")
        if budgets_vary or rank == 0:
            ax.axvline(run.budget_ms, color=color if budgets_vary else "black", ls="--", lw=1.0,
                       label=f"budget {format_ms(run.budget_ms)}" + ("" if budgets_vary else " (all runs)"))
    s = cmp.runs[0].settings
    sources = ", ".join(sorted({str(r.settings.get("latency_table_source", "")) for r in cmp.runs}))
    what = (f"predicted latency, one-sided {'/'.join(f'{c:.0%}' for c in known)} upper bound (ms)"
            if bound else "predicted latency (ms)")
    where = "" if "device" in cmp.varies else f" on {s['device']}"  # else the legend names the devices
    ax.set_xlabel(f"{what}{where}, {sources} LUT{'s' if len(cmp.runs) > 1 else ''}")
    ax.set_ylabel(f"val loss on {s.get('proxy_experiment', '?')} (lower is better)")
    ax.set_title(f"{s['experiment_name']}: Pareto fronts by {', '.join(_NAMES.get(k, k) for k in cmp.varies) or 'run'}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return path


_NAMES = {"budget_ms": "budget", "latency_table_source": "latency source"}


def render_comparison(cmp: Comparison, *, figure_png: Path, csv_name: str) -> str:
    """The comparison page: what varies, what is shared, the overlay, one row per run, every pick."""
    s = cmp.runs[0].settings
    varies = ", ".join(_NAMES.get(k, k) for k in cmp.varies) or "nothing (the same settings)"
    title = f"hwnas comparison: {s['experiment_name']} by {varies}"
    shared = [k for k in VARYING if k not in cmp.varies]
    shared_rows = pd.DataFrame({"setting": [_NAMES.get(k, k) for k in shared],
                                "value": [_value(s, k) for k in shared]})
    summary = cmp.summary.drop(columns=[k for k in cmp.varies if k in cmp.summary])  # the run label says them
    summary["latency_source"] = [_source(v) for v in summary["latency_source"]]
    fronts = cmp.fronts.drop(columns=["run_dir", "device", "budget_ms", "sampler"])  # in the run label
    for col, fmt in (("params", format_count), ("size_bytes", format_bytes), ("memory_bytes", format_bytes)):
        fronts[col] = [fmt(v) if isinstance(v, (int, float)) and math.isfinite(v) else "" for v in fronts[col]]
    fronts["latency_source"] = [_source(v) for v in fronts["latency_source"]]
    q_ref, lat_ref = cmp.reference
    body = f"""
<h1>{_esc(title)}</h1>
<p class="small">{len(cmp.runs)} runs. The picks below are also in <code>{_esc(csv_name)}</code> beside this page.</p>
<div class="box">Overlaid: the Pareto fronts (val loss vs predicted latency, both lower is better) of runs that
differ in <b>{_esc(varies)}</b>. They search one experiment and rate quality with one source, so their
fronts are on one scale.</div>
<h2>Where the numbers come from</h2>
<ul>
<li><b>Quality</b> (every run): {_esc(s.get('quality_source', ''))}. Lower is better.</li>
<li><b>Latency</b>: predicted end-to-end per image from each run's device lookup table; its source is given
per run (measured or estimated).</li>
<li><b>Hypervolume</b>: area dominated by a run's front, bounded by the reference point (val loss
{q_ref:.5g}, the worst evaluated by any of these runs; latency {lat_ref:,.0f} ms, the largest budget). Larger is
better; fronts under a tighter budget cover less by construction.</li>
</ul>
<h2>Pareto fronts</h2>
{_img(figure_png, "Pareto fronts overlaid")}
<h2>Runs</h2>
<div class="wide">{_table(summary, left=("run", "best", "run_dir", "state", "latency_source"),
                          raw=("latency_source",))}</div>
<h2>Shared settings</h2>
{_table(shared_rows, left=("setting", "value"))}
<h2>Every Pareto pick</h2>
<details><summary>{len(fronts)} picks (also in <code>{_esc(csv_name)}</code>)</summary><div class="wide">
{_table(fronts, left=("run", "config_id", "describe", "latency_source"), raw=("latency_source",))}</div></details>
<p class="small">Generated by hwnas (<code>hwnas report --compare
{_esc(' '.join(display_path(r.run_dir) for r in cmp.runs))}</code>).</p>
"""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}.wide{{overflow-x:auto}}</style></head><body>{body}</body></html>\n")


def build_comparison(run_dirs: Sequence[str | Path], *, out: str | Path = "compare.html") -> tuple[Path, Path]:
    """Write `out` (the page, its figure embedded), a CSV of every Pareto pick beside it (same stem) and the
    figure as a PNG (same stem); returns (HTML path, CSV path). Raises what `load_comparison` raises."""
    out = Path(out)
    if out.suffix != ".html":
        raise ValueError(f"the comparison page is an .html file, got {display_path(out)}")
    cmp = load_comparison(run_dirs)
    out.parent.mkdir(parents=True, exist_ok=True)
    csv_path = out.with_suffix(".csv")
    atomic_write_text(csv_path, cmp.fronts.to_csv(index=False))
    figure = plot_comparison(cmp, out.with_suffix(".png"))
    atomic_write_text(out, render_comparison(cmp, figure_png=figure, csv_name=csv_path.name))
    return out, csv_path
