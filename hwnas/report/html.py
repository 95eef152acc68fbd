"""The HTML page of a run: one self-contained file (images embedded as data URIs, no network, no script)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from hwnas.paths import display_path, redact_passwords, redact_url
from hwnas.report.frames import RunData, breakdown_frame, summary_frame
from hwnas.search.constraints import format_bytes, format_count

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;
line-height:1.45;padding:0 16px}
h1{font-size:1.5em;margin-bottom:0.2em}h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:0.86em;margin:0.6em 0}th,td{border:1px solid #ddd;padding:3px 7px;
text-align:right;vertical-align:middle}th{background:#f4f4f4}td.l,th.l{text-align:left}
.estimated{color:#a15c00;font-style:italic}.measured{color:#0a6b2b;font-weight:600}.other-cpu{color:#a15c00}
.box{background:#f7f9fc;border:1px solid #cfd8e6;border-radius:6px;padding:10px 14px}
.small{font-size:0.82em;color:#555}img{max-width:100%}code{background:#f2f2f2;padding:0 3px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _source(source: str) -> str:
    """A latency source styled by kind; "measured on <another CPU>, running on <this one>" is not styled as measured."""
    kind = source if source in ("measured", "estimated", "mixed") else "other-cpu"
    return f'<span class="{kind}">{_esc(source)}</span>'


def _table(df: pd.DataFrame, *, left: tuple[str, ...] = (), raw: tuple[str, ...] = ()) -> str:
    """`df` as an HTML table; columns in `raw` hold HTML already, the rest is escaped."""
    head = "".join(f'<th class="{"l" if c in left else ""}">{_esc(c)}</th>' for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in df.columns:
            v = r[c]
            text = v if c in raw else _esc(f"{v:,.5g}" if isinstance(v, float) else v)
            cells.append(f'<td class="{"l" if c in left else ""}">{text}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _pareto_section(data: RunData) -> str:
    df = summary_frame(data)
    if not len(df):
        return "<p>No feasible trial was evaluated.</p>"
    df["source"] = [_source(s) for s in df["source"]]
    df["samples"] = [_img(data.samples[c], f"samples of {c}") if c in data.samples else "(not generated)"
                     for c in df["config_id"]]
    meta = data.samples_meta
    note = (f"Samples: {meta.get('steps')} {meta.get('solver')} steps, CFG {meta.get('cfg_scale')}, seed "
            f"{meta.get('seed')}, from the proxy supernet (quality of the proxy, not of a deployed model). "
            f"Prompts: {', '.join(map(str, meta.get('prompts', [])))}." if meta else "")
    s = data.settings
    interval = (f"latency_hi_ms: the one-sided {s.get('confidence', 0.9):.0%} upper bound of the latency, which the "
                f"search keeps within the budget ({s.get('latency_interval') or 'interval of the table'}); p_fit: the "
                f"probability that one image takes at most {data.budget_ms:g} ms.")
    return (_table(df, left=("sub-DiT", "config_id", "samples"), raw=("source", "samples"))
            + f'<p class="small">{_esc(interval)}</p><p class="small">{_esc(note)}</p>')


def _confirm_section(data: RunData) -> str:
    """The candidates scored again after the search (`confirmed.csv`), each value with its fidelity."""
    c = data.confirmed
    if not len(c):
        return ""
    fid = data.fidelity
    cols = {"front": "front", "config_id": "config_id", "latency_ms": "latency_ms",
            "quality_screen": f"trials: {fid['trials']}", "quality": "full val loss",
            "compositional": "compositional accuracy", "fd_ref": "fd_ref"}
    df = c[[k for k in cols if k in c.columns]].rename(columns=cols)
    sources = {src for m in ("compositional", "fd_ref") for src in c.get(f"{m}_source", pd.Series()).dropna()}
    note = (f"The candidates (fronts 1-{int(c['front'].max())} of the trials) were scored again; the Pareto picks "
            f"are chosen on the full val loss." + "".join(f" {s}." for s in sorted(sources)))
    return (f"<h2>Confirmed candidates</h2>{_table(df, left=('config_id',))}"
            f'<p class="small">{_esc(note)}</p>')


def _compress_section(data: RunData) -> str:
    if not data.compress:
        return ""
    parts = ["<h2>Distillation and quantization of the picks</h2>"]
    for res in data.compress:
        parts.append(f"<h3>{_esc(res['config_id'])}</h3>")
        rows = pd.DataFrame(res.get("quality_rows", []))
        if len(rows):
            parts.append(_table(rows, left=("stage", "metric", "source")))
        shipped = res.get("shipped")
        if isinstance(shipped, dict):
            parts.append(f'<p class="small">Quantized and exported: the {_esc(shipped.get("model"))} model '
                         f'({_esc(shipped.get("why"))}).</p>')
        lat = res.get("latency")
        if isinstance(lat, dict):
            parts.append(_table(pd.DataFrame([lat]), left=("device", "precision", "how")))
    return "".join(parts)


def _cost_section(data: RunData) -> str:
    c = data.cost
    if not c:
        return "<p>(no search_cost.json)</p>"
    keys = ("trials", "feasible_trials", "quality_evaluations", "quality_cache_hits", "failed_trials",
            "quality_cpu_s", "latency_cpu_s", "preset_quality_cpu_s", "sample_grid_cpu_s", "wall_s")
    df = pd.DataFrame({"what": [k for k in keys if k in c], "value": [c[k] for k in keys if k in c]})
    sessions = len(c.get("sessions", []))
    return _table(df, left=("what",)) + f'<p class="small">{sessions} session(s); wall time summed over them.</p>'


def _footprint(best: dict[str, Any]) -> str:
    """` · 167.2M params · 334.5 MB on disk · 421 MB peak memory` where the run recorded them."""
    if "params" not in best:
        return ""
    return (f" &middot; {format_count(best['params'])} params &middot; {format_bytes(best['size_bytes'])} on disk "
            f"&middot; {format_bytes(best['memory_bytes'])} peak memory")


def _constraints_item(s: dict[str, Any]) -> str:
    """The constraints beyond latency, the smallest achievable values and how footprints are counted."""
    if "footprint_model" not in s:  # a run from before the constraints
        return ""
    bounds = s.get("constraints") or []
    least = s.get("smallest", {})
    head = (f"{_esc(', '.join(bounds))}, besides the latency budget; a sub-DiT outside any of them is infeasible "
            f"and not evaluated" if bounds else "none besides the latency budget (no --max-params, --max-size, "
                                                "--max-memory)")
    smallest = (f" The smallest sub-DiT has {format_count(least['params'])} params, "
                f"{format_bytes(least['size_bytes'])} on disk and {format_bytes(least['memory_bytes'])} peak memory."
                if least else "")
    return (f"<li><b>Constraints</b>: {head}.{_esc(smallest)} Footprints at {_esc(s['precision'])}: "
            f"{_esc(s['footprint_model'])}.</li>")


def _transpose(bd: pd.DataFrame) -> pd.DataFrame:
    """Breakdown with one row per pipeline part and one column per pick (plus the total)."""
    parts = bd.drop(columns=["config_id"]).round(2)
    out = parts.T
    out.columns = [f"pick {k}" for k in parts.index]
    out.loc["total"] = out.sum()
    return out.reset_index(names="part")


def render_html(data: RunData, *, scatter_png: Path, breakdown_png: Path) -> str:
    """The report page. Latencies carry their source (measured/estimated); quality states its source."""
    s, best = data.settings, data.best
    title = f"hwnas search: {s['device']}, budget {s['budget_ms']:g} ms"
    best_html = "<p>No sub-DiT within the budget was found.</p>"
    if best:
        best_html = (
            f'<div class="box"><b>Best sub-DiT within the budget</b>: <code>{_esc(best["describe"])}</code> '
            f'(id <code>{_esc(best["config_id"])}</code>, Pareto pick {best["pick"]})<br>'
            f'latency {best["latency_ms"]:,.1f} ms ({_source(best["latency_source"])}, budget {s["budget_ms"]:g} ms) '
            f'&middot; val loss {best["quality"]:.5f}{_footprint(best)}</div>')
    bd = breakdown_frame(data)
    settings_rows = pd.DataFrame({"setting": ["device", "budget", "constraints", "experiment (latency)", "steps",
                                              "precision", "resolution", "sampler", "trials", "seed", "storage",
                                              "study"],
                                  "value": [s["device"], f"{s['budget_ms']:g} ms",
                                            "; ".join(s.get("constraints") or ["latency only"]),
                                            s["experiment_name"], s["steps"], s["precision"], s["resolution"],
                                            s["sampler"], s["n_trials"], s["seed"], redact_url(str(s["storage"])),
                                            s["study"]]})
    trials = data.trials[["trial", "config_id", "describe", "quality", "latency_ms", "latency_source", "feasible",
                          "quality_cached", *(c for c in ("params", "memory_bytes") if c in data.trials)]]
    body = f"""
<h1>{_esc(title)}</h1>
<p class="small">Run directory <code>{_esc(display_path(data.run_dir))}</code>. Open the study in optuna-dashboard:
<code>{_esc(redact_passwords(str(s.get('dashboard', ''))))}</code></p>
{best_html}
<h2>Where the numbers come from</h2>
<ul>
<li><b>Latency</b> ({_source(s['latency_table_source'])}): predicted end-to-end for one image =
{s['steps']} x denoiser step + text encoder + VAE decoder, from the {_esc(s['latency_table'])} lookup table at
{_esc(s['precision'])}. {_esc(s['latency_provenance'])}</li>
<li><b>Quality</b>: {_esc(s['quality_source'])}. Lower is better. Sub-DiTs over the budget are not evaluated.
Fidelity: the trials carry the {_esc(data.fidelity['trials'])}; the Pareto picks and presets the
{_esc(data.fidelity['picks'])}.</li>
{_constraints_item(s)}
</ul>
<h2>Quality vs latency</h2>
{_img(scatter_png, "quality-latency scatter with Pareto front and budget")}
<h2>Pareto picks (by latency)</h2>
{_pareto_section(data)}
{_confirm_section(data)}
<h2>Latency breakdown of the picks (ms)</h2>
{_img(breakdown_png, "latency breakdown")}
{_table(_transpose(bd), left=("part",)) if len(bd) else ""}
<h2>SnapGen++ presets (reference)</h2>
{_table(data.presets[["name", "describe", "latency_ms", "latency_source", "quality", "feasible"]],
        left=("name", "describe")) if len(data.presets) else "<p>(none)</p>"}
{_compress_section(data)}
<h2>Search cost</h2>
{_cost_section(data)}
<h2>Settings</h2>
{_table(settings_rows, left=("setting", "value"))}
<details><summary>All {len(trials)} trials</summary>{_table(trials, left=("config_id", "describe"))}</details>
<p class="small">Generated by hwnas from the files of this directory
(<code>hwnas report {_esc(display_path(data.run_dir))}</code> rebuilds it).
Settings: <code>{_esc(json.dumps(s.get('identity', {})))}</code></p>
"""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body>{body}</body></html>\n")
