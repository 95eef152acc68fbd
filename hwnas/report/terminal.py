"""A readable terminal summary of a run (rich)."""

from __future__ import annotations

from typing import Any

from hwnas.report.frames import RunData, summary_frame


def print_summary(data: RunData, console: Any) -> None:
    """The Pareto picks, the best pick, the sources of the numbers and the search cost, on a rich Console."""
    from rich.table import Table

    s = data.settings
    table = Table(title=f"Pareto picks: {s['experiment_name']} on {s['device']}, budget {s['budget_ms']:g} ms, "
                        f"{s['steps']} steps, {s['precision']}")
    for col, just in (("pick", "right"), ("sub-DiT", "left"), ("id", "left"), ("latency ms", "right"),
                      ("source", "left"), ("val loss", "right"), ("headroom ms", "right")):
        table.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    best_id = data.best["config_id"] if data.best else None
    for _, r in summary_frame(data).iterrows():
        style = "bold green" if r["config_id"] == best_id else None
        table.add_row(str(r["pick"]), r["sub-DiT"], r["config_id"], f"{r['latency_ms']:,.1f}", r["source"],
                      f"{r['val_loss']:.5f}", f"{r['headroom_ms']:,.1f}", style=style)
    console.print(table)
    if data.best:
        b = data.best
        console.print(f"[bold]best[/bold] {b['describe']} (id {b['config_id']}): {b['latency_ms']:,.1f} ms "
                      f"({b['latency_source']}), val loss {b['quality']:.5f}")
    else:
        console.print("[yellow]no sub-DiT within the budget was evaluated[/yellow]")
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
