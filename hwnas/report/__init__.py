"""Reports of search runs: DataFrames first (`load_run`, `summary_frame`, `breakdown_frame`), then plots,
a self-contained HTML page (`build_report`) and a terminal summary (`print_summary`)."""

from __future__ import annotations

from hwnas.report.build import build_report
from hwnas.report.frames import RunData, breakdown_frame, load_run, summary_frame
from hwnas.report.terminal import print_summary

__all__ = ["RunData", "breakdown_frame", "build_report", "load_run", "print_summary", "summary_frame"]
