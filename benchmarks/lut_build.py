"""Measured host LUT builds, the old path against the new, side by side: kernels per minute and accuracy.

Usage (from the repository root):

    OMP_NUM_THREADS=1 TVM_NUM_THREADS=1 .venv/bin/python benchmarks/lut_build.py [--subnets 3] [--seed 0]
        [--jobs 1] [--time-steps] [--overlap] [--json OUT]
    ... --all-kernels       every kernel of the experiment (the full table), scored on every report row
    ... --score-table DIR   no build: score the table in DIR (`hwnas lut build --tables DIR`) and the shipped one

The kernels built are those of `--subnets` held-out sub-DiTs drawn by `--seed` from the validation
report `--report` (`hwnas lut validate --seed 0 --n 100`: 100 whole steps timed with TVM), so every
table built here predicts sub-DiTs whose whole steps were timed. One after another on those kernels:

  old   the build before the kernel cache (the `_measure_chunk` loop of build.py at d00bd69, run on
        bench.py's functions, which are unchanged): each kernel compiled into its own library, `--jobs`
        at a time, in chunks of 64, each chunk then timed together (thread CPU time, 30 repeats of
        >= 1 ms in 5 interleaved rounds);
  new   `build_measured_table` as `hwnas lut build` runs it, over an empty kernel cache: kernels
        compiled ~16 to a library, one wave, then timed until each is known to +-2% (`DEFAULT_STOP`);
  warm  the same again over the filled cache (a rebuild, or another experiment sharing the kernels).

Kernels per minute: kernels measured over the build's wall time, compiling and timing. Accuracy, for
each table built here and for the shipped one: each drawn sub-DiT's predicted step (the sum of its
kernels) against its whole step as the report timed it, and each kernel against the shipped table.
`--time-steps` also compiles and times those whole steps now, after the builds (~30-60 s of TVM
compile each), so the tables are judged against steps timed under this run's load as well.
`--overlap` adds the diagnosis behind timing alone locally: the kernels timed with nothing of ours
running and beside `--jobs` compile processes (ABBA, thread CPU time), the ratio busy/quiet.

The default (3 sub-DiTs, 20-40 kernels) takes a few minutes on one loaded core; `--all-kernels` (611 on
shapes-32) about an hour, most of it the old path. These 2 cores are shared: the load average is
printed beside every build, and the ratios between the rows of one run are what carries.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from dataclasses import astuple, replace
from pathlib import Path
from typing import Any

from _common import add_json, add_seed, parser, positive_int, print_summary, user_input, write_json

from hwnas.latency import KernelKey, LatencyTable, Timing, enumerate_kernels, kernels, load_profile, load_table
from hwnas.latency.adaptive import FIXED_30, time_rounds
from hwnas.latency.bench import (
    DEFAULT_WARMUP,
    compile_kernel_library,
    load_local,
    run_parallel,
    time_interleaved,
)
from hwnas.latency.blocks import kernel_module
from hwnas.latency.build import build_measured_table, measured_meta
from hwnas.latency.kernel_cache import kernel_digest, load_library, lookup
from hwnas.latency.predict import predict_latency_ms
from hwnas.latency.profile import DeviceProfile, host_cpu
from hwnas.latency.table import tvm_version
from hwnas.latency.validate import accuracy, sample_subnets, tvm_measure
from hwnas.paths import repo_path
from hwnas.space import SearchSpace, SubnetConfig, load_space

OLD_CHUNK = 64
"""Kernels per chunk of the old local build (build.py's `CHUNK` at d00bd69)."""


def _load() -> float:
    return os.getloadavg()[0]


# The builds ------------------------------------------------------------------------------------


def _old_build(keys: list[KernelKey], space: SearchSpace, prof: DeviceProfile, *, jobs: int) -> dict[KernelKey, Timing]:
    """The local build before the kernel cache: build.py's `_measure_chunk` loop at d00bd69."""
    entries: dict[KernelKey, Timing] = {}
    for lo in range(0, len(keys), OLD_CHUNK):
        chunk = keys[lo:lo + OLD_CHUNK]
        with tempfile.TemporaryDirectory(prefix="hwnas-old-") as tmp:
            args = [(k, space, prof.target, prof.threads, Path(tmp) / f"k{i}.so") for i, k in enumerate(chunk)]
            libs = dict(run_parallel(compile_kernel_library, args, jobs=jobs))
            calls = [load_local(libs[i], kernel_module(k, space)[1], threads=prof.threads) for i, k in enumerate(chunk)]
            entries.update(zip(chunk, time_interleaved(calls, repeat=30, min_repeat_ms=1)))
    return entries


def _builds(keys: list[KernelKey], space: SearchSpace, prof: DeviceProfile, *, experiment: str, jobs: int,
            work: Path) -> tuple[list[dict[str, Any]], dict[str, LatencyTable]]:
    """Old, new (empty kernel cache) and warm (filled cache) builds of `keys`: a row each and its table."""
    rows: list[dict[str, Any]] = []
    tables: dict[str, LatencyTable] = {}
    load0, t0 = _load(), time.perf_counter()
    old = _old_build(keys, space, prof, jobs=jobs)
    wall = time.perf_counter() - t0
    meta = measured_meta(prof, space, experiment_path=experiment, remote=False, stop=FIXED_30, warmup=DEFAULT_WARMUP)
    tables["old"] = LatencyTable(replace(meta, calibration="old path: one library per kernel, " + FIXED_30.describe()),
                                 old, prof.text_encoder, prof.vae_decoder)
    rows.append({"path": "old", "kernels": len(old), "wall_s": wall, "compiled": len(keys), "cached": 0,
                 "load": [load0, _load()]})
    print(f"old   {wall:6.0f} s, load {load0:.1f} -> {_load():.1f}", flush=True)
    for name in ("new", "warm"):
        load0 = _load()
        rep = build_measured_table(prof, space, experiment_path=experiment, table_dir=work / name, keys=keys,
                                   jobs=jobs, cache=work / "kernels", progress=False)
        tables[name] = rep.table
        rows.append({"path": name, "kernels": rep.measured, "wall_s": rep.wall_s, "compiled": rep.compiled,
                     "cached": rep.cached, "compile_wait_s": rep.compile_s, "timing_s": rep.timing_s,
                     "repeats_median": statistics.median(t.n for t in rep.table.entries.values()),
                     "load": [load0, _load()]})
        print(f"{name:5s} {rep.wall_s:6.0f} s (compiling {rep.compile_s:.0f} s, timing {rep.timing_s:.0f} s), "
              f"load {load0:.1f} -> {_load():.1f}", flush=True)
    for row in rows:
        row["kernels_per_min"] = 60 * row["kernels"] / row["wall_s"]
    return rows, tables


# Accuracy --------------------------------------------------------------------------------------


def _report(path: Path, space: SearchSpace, prof: DeviceProfile) -> tuple[dict[str, Any], dict[str, SubnetConfig]]:
    """A `hwnas lut validate --json` report of this device and experiment, and its held-out sub-DiTs by id."""
    report = json.loads(path.read_text())
    try:
        if (report["device"], report["experiment"]) != (prof.name, space.name):
            raise ValueError(f"{path} validates {report['device']}/{report['experiment']}, not "
                             f"{prof.name}/{space.name}")
        held = {c.id: c for c in sample_subnets(space, report["n"], seed=report["seed"], purpose="validate")}
        missing = [r["config_id"] for r in report["rows"] if r["config_id"] not in held]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a `hwnas lut validate --json` report (no {exc})") from None
    if missing:
        raise ValueError(f"{path}: {len(missing)} rows are not held-out sub-DiTs of seed {report['seed']}")
    return report, held


def _step_ms(cfg: SubnetConfig, table: LatencyTable, space: SearchSpace) -> float:
    return predict_latency_ms(cfg, table, steps=1, precision="fp32", space=space).step_ms


def _scores(tables: dict[str, LatencyTable], cfgs: list[SubnetConfig], measured: dict[str, list[float]],
            keys: list[KernelKey], space: SearchSpace, *, budget_ms: float) -> dict[str, dict[str, Any]]:
    """Per table: accuracy of its predicted steps against each set of `measured` whole steps, and its kernels
    against the shipped table's (ratio table / shipped)."""
    shipped = tables["shipped"]
    out: dict[str, dict[str, Any]] = {}
    for name, table in tables.items():
        pred = [_step_ms(c, table, space) for c in cfgs]
        ratios = [table.entries[k].median_ms / shipped.entries[k].median_ms for k in keys]
        out[name] = {"predicted_ms": pred, **{f"vs_{what}": accuracy(pred, ms, budget_ms=budget_ms)
                                               for what, ms in measured.items()},
                     "kernels_vs_shipped": {"geomean_ratio": statistics.geometric_mean(ratios),
                                            "within_10pct": sum(abs(r - 1) <= 0.10 for r in ratios) / len(ratios)}}
    return out


def _agreement(new: dict[KernelKey, Timing], old: dict[KernelKey, Timing]) -> dict[str, float]:
    ratios = [new[k].median_ms / old[k].median_ms for k in old]
    return {"kernels": len(ratios), "median_ratio_new_over_old": statistics.median(ratios),
            "within_5pct": sum(abs(r - 1) <= 0.05 for r in ratios) / len(ratios),
            "within_10pct": sum(abs(r - 1) <= 0.10 for r in ratios) / len(ratios)}


# The overlap diagnosis -------------------------------------------------------------------------


def _compile_forever(keys: list[KernelKey], space: SearchSpace, target: dict[str, Any], out: str) -> None:
    """A stand-in compile worker: compiles `keys` one after another until killed."""
    os.environ["OMP_NUM_THREADS"] = os.environ["TVM_NUM_THREADS"] = "1"
    i = 0
    while True:
        compile_kernel_library(keys[i % len(keys)], space, target, 1, Path(out) / f"busy-{os.getpid()}.so")
        i += 1


def _overlap_check(keys: list[KernelKey], space: SearchSpace, prof: DeviceProfile, cache: Path, *,
                   jobs: int) -> dict[str, Any]:
    """Per-kernel medians timed quiet and beside `jobs` compile processes, ABBA; geometric mean of busy/quiet."""
    digests = {k: kernel_digest(k, space, target=prof.target, threads=prof.threads) for k in keys}
    where = lookup(cache, digests.values())
    by_lib: dict[Path, list[tuple[KernelKey, str]]] = {}
    for k in keys:
        by_lib.setdefault(where[digests[k]].lib, []).append((k, where[digests[k]].func))
    calls = []
    for lib, items in by_lib.items():
        calls += load_library(lib, [(f, kernel_module(k, space)[1]) for k, f in items], threads=1, warmup=3)[1]
    runs: dict[str, list[list[float]]] = {"quiet": [], "busy": []}
    loads: dict[str, list[float]] = {"quiet": [], "busy": []}
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="hwnas-busy-") as tmp:
        for cond in ("quiet", "busy", "busy", "quiet"):
            procs = []
            if cond == "busy":
                procs = [ctx.Process(target=_compile_forever, args=(keys[j::jobs], space, prof.target, tmp),
                                     daemon=True) for j in range(jobs)]
                for p in procs:
                    p.start()
                time.sleep(20.0)  # past torch's and TVM's imports, into compiling
            loads[cond].append(_load())
            runs[cond].append([t.median_ms for t in time_rounds(calls, FIXED_30)])
            for p in procs:
                p.kill()
                p.join()
    quiet = [statistics.median(col) for col in zip(*runs["quiet"])]
    busy = [statistics.median(col) for col in zip(*runs["busy"])]
    ratios = sorted(b / q for b, q in zip(busy, quiet))
    drift = [a / b for a, b in zip(*runs["quiet"])]
    return {"kernels": len(calls), "jobs": jobs, "busy_over_quiet_geomean": statistics.geometric_mean(ratios),
            "busy_over_quiet_p10_p90": [ratios[len(ratios) // 10], ratios[9 * len(ratios) // 10]],
            "quiet_run_to_run_geomean": statistics.geometric_mean(drift), "load": loads}


# Scoring a table built elsewhere ---------------------------------------------------------------


def _score_table(table_dir: Path, report: dict[str, Any], held: dict[str, SubnetConfig], space: SearchSpace,
                 prof: DeviceProfile, shipped: LatencyTable) -> dict[str, Any]:
    """`--score-table`: the table in `table_dir` and the shipped one on every row of the report."""
    built = load_table(prof, space.name, table_dir=table_dir)
    cfgs = [held[r["config_id"]] for r in report["rows"]]
    measured = [r["measured_ms"] for r in report["rows"]]
    return {"table_dir": str(table_dir), "n": len(cfgs), **{
        name: {**accuracy([_step_ms(c, t, space) for c in cfgs], measured, budget_ms=report["budget_ms"]),
               "date": t.meta.date, "calibration": t.meta.calibration}
        for name, t in (("shipped", shipped), ("scored", built))}}


def _print_scored(scored: dict[str, Any]) -> None:
    print(f"{'table':8s} {'n':>4s} {'within10':>8s} {'within5':>7s} {'MAPE%':>6s} {'max%':>6s} {'bias%':>6s} "
          f"{'spearman':>8s}  built")
    for name in ("shipped", "scored"):
        a = scored[name]
        print(f"{name:8s} {a['n']:4d} {a['within_10pct']:8.0%} {a['within_5pct']:7.0%} {a['mape']:6.2f} "
              f"{a['max_abs_pct']:6.1f} {a['bias_pct']:+6.2f} {a['spearman']:8.3f}  {a['date']}")
    s, b = scored["shipped"], scored["scored"]
    print_summary([f"on {s['n']} timed steps of the report: within 10% shipped {s['within_10pct']:.0%} scored "
                   f"{b['within_10pct']:.0%}", f"MAPE scored/shipped {b['mape'] / s['mape']:.2f}",
                   f"spearman shipped {s['spearman']:.3f} scored {b['spearman']:.3f}"])


def _print_builds(rows: list[dict[str, Any]], scores: dict[str, dict[str, Any]], measured: list[str],
                  shipped: LatencyTable) -> None:
    """One row per build and the shipped table: speed, then accuracy against each set of timed steps and
    kernel by kernel against the shipped table."""
    groups = "".join(f" {'steps: ' + ('the report' if m == 'report' else 'timed now'):-^21s}" for m in measured)
    print(f"\n{'':56s}{groups} {'kernels/shipped':-^14s}")
    print(f"{'path':8s} {'kernels':>7s} {'compiled':>8s} {'cached':>6s} {'wall_s':>6s} {'k/min':>6s} {'load':>9s}"
          + f" {'MAPE%':>6s} {'in10%':>6s} {'bias%':>7s}" * len(measured) + f" {'geomean':>7s} {'in10%':>6s}")
    for row in [*rows, {"path": "shipped"}]:
        sc = scores[row["path"]]
        if "wall_s" in row:
            head = (f"{row['path']:8s} {row['kernels']:7d} {row['compiled']:8d} {row['cached']:6d} "
                    f"{row['wall_s']:6.0f} {row['kernels_per_min']:6.1f} {row['load'][0]:4.1f}-{row['load'][1]:<4.1f}")
        else:
            head = f"{'shipped':8s} {'(old path, built ' + shipped.meta.date[:10] + ')':>47s}"
        cols = "".join(f" {a['mape']:6.2f} {a['within_10pct']:6.0%} {a['bias_pct']:+7.2f}"
                       for a in (sc[f"vs_{m}"] for m in measured))
        ks = sc["kernels_vs_shipped"]
        print(f"{head}{cols} {ks['geomean_ratio']:7.3f} {ks['within_10pct']:6.0%}")


def main() -> None:
    ap = parser(__doc__)
    ap.add_argument("--experiment", default="experiments/shapes-32.toml")
    ap.add_argument("--device", default="host", help="a local profile with one thread (default: %(default)s)")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--subnets", type=positive_int, default=3,
                      help="held-out sub-DiTs of the report whose kernels are built (default: %(default)s)")
    what.add_argument("--all-kernels", action="store_true",
                      help="build every kernel of the experiment and score every row of the report (~1 h)")
    what.add_argument("--score-table", metavar="DIR", help="build nothing: score the table in DIR")
    add_seed(ap, controls="which of the report's held-out sub-DiTs are built (not used with --all-kernels)")
    ap.add_argument("--jobs", type=positive_int, default=1, help="compile processes, both paths (default: 1)")
    ap.add_argument("--report", default="reports/lut-validate-host.json",
                    help="`hwnas lut validate --json` report with the timed whole steps (default: %(default)s)")
    ap.add_argument("--time-steps", action="store_true", help="also time the drawn sub-DiTs' whole steps now")
    ap.add_argument("--overlap", action="store_true", help="also time the kernels beside --jobs compiles")
    add_json(ap)
    opts = ap.parse_args()

    with user_input():
        space = load_space(repo_path(opts.experiment))
        prof = load_profile(opts.device)
        if not prof.local or prof.threads != 1:
            raise ValueError(f"device {prof.name!r}: this benchmark builds on this machine with one thread")
        shipped = load_table(prof, space.name)
        report_path = repo_path(opts.report)
        report, held = _report(report_path, space, prof)
        if opts.subnets > len(report["rows"]):
            raise ValueError(f"--subnets {opts.subnets}: the report has {len(report['rows'])} sub-DiTs")
    cpu = host_cpu()[0]
    if (report["host_cpu"], report["tvm_version"], shipped.meta.host_cpu) != (cpu, tvm_version(), cpu):
        print(f"note: this is {cpu} with TVM {tvm_version()}; the report was timed on {report['host_cpu']} with TVM "
              f"{report['tvm_version']}, the shipped table on {shipped.meta.host_cpu}: the columns against them "
              "compare different machines", flush=True)
    if opts.score_table:
        with user_input():
            scored = _score_table(repo_path(opts.score_table), report, held, space, prof, shipped)
        write_json(opts.json_out, scored)
        _print_scored(scored)
        return

    rows_used = report["rows"] if opts.all_kernels else random.Random(opts.seed).sample(report["rows"], opts.subnets)
    cfgs = [held[r["config_id"]] for r in rows_used]
    wanted = (enumerate_kernels(space, precisions=("fp32",)) if opts.all_kernels
              else {k for c in cfgs for k in kernels(c, space, precision="fp32")})
    keys = sorted(wanted, key=lambda k: astuple(k.op))
    print(f"{space.name} on {prof.name} ({prof.target.get('mcpu')}): {len(keys)} kernels of {len(cfgs)} held-out "
          f"sub-DiTs of {opts.report}, --jobs {opts.jobs}, load {_load():.1f}", flush=True)

    with tempfile.TemporaryDirectory(prefix="hwnas-lut-build-") as tmp:
        rows, tables = _builds(keys, space, prof, experiment=opts.experiment, jobs=opts.jobs, work=Path(tmp))
        overlap = _overlap_check(keys, space, prof, Path(tmp) / "kernels", jobs=opts.jobs) if opts.overlap else None
    measured = {"report": [r["measured_ms"] for r in rows_used]}
    if opts.time_steps:
        load0 = _load()
        steps = tvm_measure(space, prof, jobs=opts.jobs).many(cfgs)
        measured["now"] = [t.median_ms for t in steps]
        print(f"timed {len(cfgs)} whole steps now, load {load0:.1f} -> {_load():.1f}", flush=True)
    tables["shipped"] = shipped
    scores = _scores(tables, cfgs, measured, keys, space, budget_ms=report["budget_ms"])
    agreement = _agreement(tables["new"].entries, tables["old"].entries)

    _print_builds(rows, scores, list(measured), shipped)
    print(f"new vs old, kernel by kernel: median ratio {agreement['median_ratio_new_over_old']:.3f}, within 5% "
          f"{agreement['within_5pct']:.0%}, within 10% {agreement['within_10pct']:.0%}")
    if overlap:
        print(f"overlap: timed beside {opts.jobs} compiles / quiet {overlap['busy_over_quiet_geomean']:.3f} (quiet run "
              f"to run {overlap['quiet_run_to_run_geomean']:.3f}), load {overlap['load']}")

    write_json(opts.json_out, {
        "experiment": space.name, "device": prof.name, "host_cpu": cpu, "tvm_version": tvm_version(),
        "seed": opts.seed, "report": opts.report, "config_ids": [c.id for c in cfgs], "jobs": opts.jobs,
        "kernels": len(keys), "rows": rows, "measured_ms": measured, "scores": scores,
        "kernel_agreement": agreement, "overlap": overlap})
    old, new, warm = rows
    vs = "vs_now" if "now" in measured else "vs_report"
    mape = {name: scores[name][vs]["mape"] for name in ("shipped", "old", "new")}
    print_summary([f"kernels/min new/old {new['kernels_per_min'] / old['kernels_per_min']:.2f} (cold cache), "
                   f"warm/old {warm['kernels_per_min'] / old['kernels_per_min']:.1f}",
                   f"step MAPE vs {'steps timed now' if 'now' in measured else 'the report'} (n {len(cfgs)}) "
                   f"old {mape['old']:.2f}% new {mape['new']:.2f}% (shipped {mape['shipped']:.2f}%)",
                   f"kernels within 10% of shipped old {scores['old']['kernels_vs_shipped']['within_10pct']:.0%} "
                   f"new {scores['new']['kernels_vs_shipped']['within_10pct']:.0%}",
                   f"new/old kernel median ratio {agreement['median_ratio_new_over_old']:.3f}"])


if __name__ == "__main__":
    main()
