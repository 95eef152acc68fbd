"""Matplotlib figures of a run (drawn from `RunData`'s DataFrames; Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from hwnas.io import atomic_write
from hwnas.report.frames import RunData, breakdown_frame


def _plt() -> ModuleType:
    """matplotlib.pyplot on the Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(data: RunData, path: Path) -> Path:
    """Quality (val loss) vs predicted latency: all trials, the Pareto front, the budget line, the presets.

    Filled markers are measured latencies, hollow ones estimated; over-budget trials (quality not
    evaluated) are ticks along the bottom. The legend says each series' quality fidelity. Each Pareto
    pick carries a bar from its predicted latency to the one-sided upper bound the search constrained
    (its probability of fitting is in the table).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.0, 5.0))
    fid = data.fidelity
    t = data.trials
    ev = t[t["quality_evaluated"]]
    for source, sub in ev.groupby("latency_source"):
        filled = source == "measured"
        ax.scatter(sub["latency_ms"], sub["quality"], s=22, marker="o",
                   facecolors="tab:blue" if filled else "none", edgecolors="tab:blue", alpha=0.7,
                   label=f"trials ({source} latency; {fid['trials']})")
    p = data.pareto
    if len(p):
        ax.step(p["latency_ms"], p["quality"], where="post", color="tab:red", lw=1.5)
        ax.scatter(p["latency_ms"], p["quality"], s=46, color="tab:red", zorder=3,
                   label=f"Pareto picks ({fid['picks']})")
        if "latency_ms_hi" in p:
            conf = data.settings.get("confidence", 0.9)
            ax.errorbar(p["latency_ms"], p["quality"], xerr=[[0.0] * len(p), p["latency_ms_hi"] - p["latency_ms"]],
                        fmt="none", ecolor="tab:red", elinewidth=0.8, capsize=2, alpha=0.6,
                        label=f"to the {conf:.0%} upper bound of latency")
        for _, r in p.iterrows():  # each pick's probability of fitting is in the table beside the plot
            ax.annotate(str(int(r["pick"])), (r["latency_ms"], r["quality"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color="tab:red")
    pr = data.presets
    if len(pr):
        for _, r in pr.iterrows():
            ax.scatter([r["latency_ms"]], [r["quality"]], marker="*", s=140, color="tab:green", zorder=4,
                       edgecolors="black", linewidths=0.5)
            ax.annotate(str(r["name"]), (r["latency_ms"], r["quality"]), textcoords="offset points",
                        xytext=(5, -10), fontsize=8, color="darkgreen")
        ax.scatter([], [], marker="*", s=140, color="tab:green", edgecolors="black",
                   label=f"presets (reference; {fid['picks']})")
    over = t[~t["quality_evaluated"]]
    if len(over):
        ax.plot(over["latency_ms"], np.zeros(len(over)), "|", color="grey", ms=10, alpha=0.6,
                transform=ax.get_xaxis_transform(),
                label=f"over budget{' or bounds' if data.settings.get('constraints') else ''}, not evaluated "
                      f"({len(over)})")
    ax.axvline(data.budget_ms, color="black", ls="--", lw=1.2, label=f"budget {data.budget_ms:g} ms")
    s = data.settings
    ax.set_xlabel(f"predicted latency on {s['device']} (ms, {s['steps']} steps, {s['precision']}, "
                  f"{s['latency_table_source']} LUT)")
    ax.set_ylabel(f"val loss on {s['proxy_experiment']} (lower is better)")
    ax.set_title(f"{s['experiment_name']} sub-DiTs on {s['device']}: quality vs latency")
    ax.set_xscale("log")  # the presets can be several times the budget
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return path


def plot_breakdown(data: RunData, path: Path) -> Path:
    """Stacked horizontal bars: where each Pareto pick's end-to-end latency goes."""
    plt = _plt()
    bd = breakdown_frame(data)
    fig, ax = plt.subplots(figsize=(8.0, 2.0 + 0.35 * max(len(bd), 1)))
    if len(bd):
        parts = bd.drop(columns=["config_id"])
        left = np.zeros(len(parts))
        cmap = plt.get_cmap("tab20")
        for i, col in enumerate(parts.columns):
            ax.barh([f"pick {k}" for k in parts.index], parts[col], left=left, color=cmap(i % 20), label=col)
            left += parts[col].to_numpy()
        ax.axvline(data.budget_ms, color="black", ls="--", lw=1.2, label="budget")
        ax.invert_yaxis()
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=4, frameon=False)
    ax.set_xlabel(f"predicted latency (ms) on {data.settings['device']}, {data.settings['latency_table_source']}")
    ax.set_title("latency breakdown of the Pareto picks")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)
    return path
