"""Reports of search runs: DataFrames first (`load_run`, `summary_frame`, `breakdown_frame`), then plots,
a self-contained HTML page (`build_report`) and a terminal summary (`print_summary`); fronts of several
runs overlaid (`load_comparison`, `build_comparison`); the runs of a reports folder (`list_runs`)."""

from __future__ import annotations

from hwnas.report.build import build_report
from hwnas.report.compare import Comparison, NotComparableError, build_comparison, load_comparison
from hwnas.report.frames import RunData, breakdown_frame, load_run, summary_frame
from hwnas.report.runs import list_runs, print_runs, run_state
from hwnas.report.terminal import print_summary, print_sweep

__all__ = ["Comparison", "NotComparableError", "RunData", "breakdown_frame", "build_comparison", "build_report",
           "list_runs", "load_comparison", "load_run", "print_runs", "print_summary", "print_sweep", "run_state",
           "summary_frame"]
