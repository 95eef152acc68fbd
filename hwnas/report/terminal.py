"""A readable terminal summary of a run (rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hwnas.report.frames import RunData, summary_frame
from hwnas.search.constraints import format_bytes, format_count

if TYPE_CHECKING:  # rich is imported where used
    from rich.console import JustifyMethod


def print_summary(data: RunData, console: Any) -> None:
    """The Pareto picks, the best pick, the sources of the numbers and the search cost, on a rich Console."""
    from rich.table import Table

    s = data.settings
    table = Table(title=f"Pareto picks: {s['experiment_name']} on {s['device']}, budget {s['budget_ms']:g} ms, "
                        f"{s['steps']} steps, {s['precision']}")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("pick", "right"), ("sub-DiT", "left"), ("id", "left"), ("latency ms", "right"),
        (f"{s.get('confidence', 0.9):.0%} bound", "right"), ("P(fit)", "right"), ("source", "left"),
        ("val loss", "right"), ("headroom ms", "right"))
    for col, just in columns:
        table.add_column(col, justify=just, overflow="fold")
    best_id = data.best["config_id"] if data.best else None
    for _, r in summary_frame(data).iterrows():
        style = "bold green" if r["config_id"] == best_id else None
        p_fit = "n/a" if r["p_fit"] != r["p_fit"] else f"{r['p_fit']:.0%}"  # NaN: a run without intervals
        table.add_row(str(r["pick"]), r["sub-DiT"], r["config_id"], f"{r['latency_ms']:,.1f}",
                      f"{r['latency_hi_ms']:,.1f}", p_fit, r["source"], f"{r['val_loss']:.5f}",
                      f"{r['headroom_ms']:,.1f}", style=style)
    console.print(table)
    if data.best:
        b = data.best
        console.print(f"[bold]best[/bold] {b['describe']} (id {b['config_id']}): {b['latency_ms']:,.1f} ms "
                      f"({b['latency_source']}), val loss {b['quality']:.5f}")
    else:
        console.print("[yellow]no sub-DiT within the budget was evaluated[/yellow]")
    if s.get("constraints"):
        fp = ""
        if data.best and "params" in data.best:
            b = data.best
            fp = (f" (best: {format_count(b['params'])} params, {format_bytes(b['size_bytes'])} on disk, "
                  f"{format_bytes(b['memory_bytes'])} peak memory)")
        console.print(f"constraints: {', '.join(s['constraints'])}{fp}")
    console.print(f"latency: {s['latency_table']} ({s['latency_table_source']})")
    console.print(f"quality: {s['quality_source']}")
    if data.fidelity["trials"] != data.fidelity["picks"]:
        console.print(f"fidelity: trials {data.fidelity['trials']}; picks {data.fidelity['picks']}")
    c = data.cost
    if c:
        console.print(f"cost: {c['trials']} trials ({c['feasible_trials']} within budget, {c['quality_evaluations']} "
                      f"val-loss evaluations, {c['quality_cache_hits']} cache hits), quality {c['quality_cpu_s']:.1f} "
                      f"CPU-s, latency {c['latency_cpu_s']:.3f} CPU-s, wall {c['wall_s']:.1f} s")
    console.print(f"report: {data.run_dir / 'report.html'}")


def print_sweep(result: Any, console: Any) -> None:
    """A budget sweep (`hwnas.search.sweep.SweepResult`): per budget its best and its quality evaluations,
    then the sweep's total."""
    from rich.table import Table

    from hwnas.search.budget import format_ms

    table = Table(title=f"budget sweep: {', '.join(format_ms(b) for b in result.budgets_ms)}")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("budget", "right"), ("best sub-DiT", "left"), ("latency ms", "right"), ("val loss", "right"),
        ("trials", "right"), ("carried", "right"), ("quality evals", "right"), ("state", "left"))
    for col, just in columns:
        table.add_column(col, justify=just, overflow="fold")
    for m in sorted(result.members, key=lambda m: m.budget_ms):
        b = m.best or {}
        table.add_row(format_ms(m.budget_ms), b.get("describe", "-"),
                      f"{b['latency_ms']:,.1f}" if b else "-", f"{b['quality']:.5f}" if b else "-", str(m.trials),
                      str(m.carried_trials), str(m.quality_evaluations), m.state)
    console.print(table)
    console.print(f"quality evaluations: {result.quality_evaluations} in total "
                  f"({' + '.join(f'{m.quality_evaluations} at {format_ms(m.budget_ms)}' for m in result.members)}; "
                  f"one quality cache across the budgets, loosest first)")
    if result.compare_html:
        console.print(f"fronts overlaid: {result.compare_html}")
    console.print(f"sweep: {result.sweep_dir / 'sweep.json'}")
