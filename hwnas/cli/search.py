"""`hwnas search`, `report`, `runs`: the Optuna search of a device's sub-DiTs, its reports, the runs so far."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from hwnas.cli._app import main, os_error, user_errors
from hwnas.cli._options import (
    LATENCY_EXPERIMENT,
    checkpoint_option,
    confidence_option,
    device_option,
    experiment_option,
    guidance_option,
    precision_option,
    profile_option,
    steps_option,
    table_option,
)
from hwnas.paths import display_path, redact_url
from hwnas.search.study import QUALITIES, SAMPLERS, STARTS, SearchSettings

_DEFAULTS = SearchSettings(device="-", budget_ms=1.0)


@main.command()
@device_option
@click.option("--budget", required=True,
              help="End-to-end latency budget: 1.8s, 1800ms, or a bare number of seconds up to 60 (1.8); "
                   "a list 1.2s,1.8s,2.4s is one sweep sharing quality evaluations.")
@experiment_option(LATENCY_EXPERIMENT, "Experiment whose LUT gives latency (the supernet gives quality on the "
                                       "same choices).")
@checkpoint_option
@steps_option
@precision_option
@click.option("--resolution", type=click.IntRange(min=1), help="Image side in px (only what the experiment offers).")
@confidence_option("Feasible = the latency's one-sided upper bound at this confidence is within the budget.")
@guidance_option
@click.option("--sampler", type=click.Choice(SAMPLERS), default=_DEFAULTS.sampler, show_default=True)
@click.option("--start", type=click.Choice(STARTS), default=_DEFAULTS.start, show_default=True,
              help="feasible: start (random: every trial) from sub-DiTs predicted within the budget; "
                   "plain: from the fastest only.")
@click.option("--screen", default="off", show_default=True,
              help="IMAGESxT: a cheap val loss (e.g. 16x4) scores the trials; the Pareto candidates get the full one.")
@click.option("--quality", type=click.Choice(QUALITIES), default=_DEFAULTS.quality, show_default=True,
              help="Also score the Pareto candidates with this metric (beside the val loss).")
@click.option("--trials", "n_trials", default=_DEFAULTS.n_trials, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=_DEFAULTS.seed, show_default=True, type=int)
@click.option("--storage", help="Optuna storage URL (default: sqlite file study.db in the run directory).")
@click.option("--study", "study", help="Study name (default: from device, budget, steps, precision, sampler, seed).")
@click.option("--workers", default=_DEFAULTS.workers, show_default=True, type=click.IntRange(min=1),
              help="Local worker processes.")
@click.option("--threads", default=_DEFAULTS.threads, show_default=True, type=click.IntRange(min=1),
              help="torch threads per worker.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0, min_open=True),
              help="Seconds: stop asking for new trials after this long; rerun the command to continue.")
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="Run directory (default: the run of the same search under --reports, "
                   "or reports/<device>-<budget>-<date>).")
@click.option("--force", is_flag=True, help="With --out: replace the run of another search there.")
@click.option("--reports", "reports", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print {run_dir, best} (a sweep: every budget's) as JSON.")
@click.option("--max-params", "max_params", help="Constraint: parameters of the denoiser, e.g. 300M, 0.3B.")
@click.option("--max-size", "max_size", help="Constraint: bytes of its weights at the precision, e.g. 150MB, 1.2GB.")
@click.option("--max-memory", "max_memory",
              help="Constraint: peak weights + activations of one denoising step at the precision, e.g. 1.2GB.")
@profile_option
@table_option
@user_errors
def search(budget: str, screen: str, out: str | None, force: bool, reports: str, as_json: bool, max_params: str | None,
           max_size: str | None, max_memory: str | None, profiles: str, tables: str, **settings: Any) -> None:
    """Search sub-DiTs for a device under a latency budget (Optuna; proxy quality vs LUT latency).

    Rerunning the same command resumes the run (a larger --trials extends it). Ctrl-C writes the
    partial results, prints the command that resumes and exits 130.
    """
    from rich.console import Console

    from hwnas.search import parse_bounds, parse_screen, run_search
    from hwnas.search.run import SearchInterrupted
    from hwnas.search.sweep import parse_budgets_ms, run_sweep

    if force and out is None:
        raise click.UsageError("--force replaces the run in --out; give --out DIR")
    budgets = parse_budgets_ms(budget)
    bounds = parse_bounds(max_params=max_params, max_size=max_size, max_memory=max_memory)
    screen_images, screen_t = parse_screen(screen)
    s = SearchSettings(budget_ms=max(budgets), profile_dir=profiles, table_dir=tables, max_params=bounds.max_params,
                       max_size_bytes=bounds.max_size_bytes, max_memory_bytes=bounds.max_memory_bytes,
                       screen_images=screen_images, screen_t=screen_t, **settings)
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 120)
    try:
        result = (run_sweep(s, budgets, reports_dir=reports, out=out, console=console, force=force)
                  if len(budgets) > 1 else run_search(s, reports_dir=reports, out=out, console=console, force=force))
    except OSError as exc:  # a FileNotFoundError too: where the run directory could not be written
        raise click.UsageError(os_error(exc)) from None
    except (SearchInterrupted, KeyboardInterrupt) as exc:
        run_dir = exc.run_dir if isinstance(exc, SearchInterrupted) else None
        what = str(exc) if isinstance(exc, SearchInterrupted) else "interrupted"
        click.echo(f"{what}; resume with: {_resume_command(click.get_current_context(), run_dir)}", err=True)
        sys.exit(130)
    _print_result(result, s, console, as_json=as_json)


def _print_result(result: Any, s: SearchSettings, console: Any, *, as_json: bool) -> None:
    """A search's (dict) or a sweep's (`Sweep`) outcome: warnings on stderr, then JSON or the summary."""
    from hwnas.report import load_run, print_summary, print_sweep

    if not isinstance(result, dict):  # a sweep
        if result.timed_out:
            click.echo(f"stopped after --timeout {s.timeout_s:g} s; rerun the command to continue", err=True)
        click.echo(json.dumps(result.to_dict(), indent=2)) if as_json else print_sweep(result, console)
        return
    if result["timed_out"]:
        click.echo(f"stopped after --timeout {s.timeout_s:g} s with {result['cost']['trials']}/{s.n_trials} trials; "
                   f"rerun the command to continue", err=True)
    if result["failed"]:
        click.echo(f"{len(result['failed'])} trial(s) failed; the first: {result['failed'][0]}", err=True)
    if as_json:
        click.echo(json.dumps({"run_dir": result["run_dir"], "best": result["best"]}, indent=2))
    else:
        print_summary(load_run(result["run_dir"]), console)


def _resume_command(ctx: click.Context, run_dir: Path | None) -> str:
    """The command line that resumes this search: its non-default options, `--out RUN_DIR`, the
    storage URL without its password."""
    parts = ["hwnas", ctx.info_name or "search"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if not isinstance(param, click.Option) or value is None or value == param.default or value is False:
            continue
        if param.name in ("out", "force"):
            continue
        shown = redact_url(str(value)) if param.name == "storage" else str(value)
        parts += [param.opts[0]] if param.is_flag else [param.opts[0], shown]
    out = run_dir if run_dir is not None else ctx.params.get("out")
    if out is not None:
        parts += ["--out", display_path(out)]
    return shlex.join(parts)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--compare", is_flag=True,
              help="Overlay the Pareto fronts of several runs (or a sweep) in one HTML page with a CSV beside it.")
@click.option("--out", "out", default="compare.html", show_default=True, type=click.Path(dir_okay=False),
              help="With --compare: the page to write (the CSV and PNG get its name).")
@user_errors
def report(run_dirs: tuple[str, ...], compare: bool, out: str) -> None:
    """Rebuild report.html and its figures from the files of a search run directory.

    `hwnas report --compare RUN_DIR...` overlays the fronts of runs of one experiment and one quality
    source (devices, budgets, samplers).
    """
    from hwnas.report import build_comparison, build_report

    if not compare and len(run_dirs) > 1:
        raise click.UsageError("give one RUN_DIR, or --compare RUN_DIR... to overlay several")
    if compare:
        page, table = build_comparison(run_dirs, out=out)
        click.echo(f"wrote {page} and {table}")
    else:
        click.echo(f"wrote {build_report(run_dirs[0])}")


@main.command()
@click.option("--reports", "reports", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON list.")
@user_errors
def runs(reports: str, as_json: bool) -> None:
    """List search runs: device, budget, best sub-DiT and state (finished or interrupted)."""
    from rich.console import Console

    from hwnas.report import list_runs, print_runs

    frame = list_runs(reports)
    if as_json:
        click.echo(frame.to_json(orient="records", indent=2))
    else:
        print_runs(frame, Console(width=None if sys.stdout.isatty() else 160), reports_dir=reports)
