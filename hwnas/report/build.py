"""`build_report(run_dir)`: files of a run -> PNG figures + self-contained `report.html`."""

from __future__ import annotations

from pathlib import Path

from hwnas.io import atomic_write_text
from hwnas.report.frames import load_run
from hwnas.report.html import render_html
from hwnas.report.plots import plot_breakdown, plot_pareto


def build_report(run_dir: str | Path) -> Path:
    """(Re)build `pareto.png`, `breakdown.png` and `report.html` in `run_dir` from its files; returns the HTML path."""
    data = load_run(run_dir)
    run_dir = Path(run_dir)
    scatter = plot_pareto(data, run_dir / "pareto.png")
    breakdown = plot_breakdown(data, run_dir / "breakdown.png")
    return atomic_write_text(run_dir / "report.html",
                             render_html(data, scatter_png=scatter, breakdown_png=breakdown))
