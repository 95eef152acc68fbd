"""`hwnas devices`, `predict`, `lut build|calibrate|validate`: devices and their latency tables."""

from __future__ import annotations

import json

import click

from hwnas.cli._app import main, user_errors
from hwnas.cli._options import (
    DEFAULT_EXPERIMENT,
    LATENCY_EXPERIMENT,
    confidence_option,
    device_option,
    experiment_option,
    guidance_option,
    json_option,
    load_device,
    load_experiment,
    one_config,
    precision_option,
    preset_or_config_options,
    profile_option,
    steps_option,
    table_option,
)
from hwnas.latency import (
    PRECISIONS,
    DeviceProfile,
    Guidance,
    Precision,
    load_table,
    predict_latency_ms,
    write_table,
)
from hwnas.latency.profile import DEVICE_KINDS, DeviceKind
from hwnas.paths import repo_path
from hwnas.space import SearchSpace


def _echo_lines(lines: list[str]) -> None:
    click.echo("\n".join(lines))


@main.group(invoke_without_command=True)
@profile_option
@table_option
@click.pass_context
def devices(ctx: click.Context, profiles: str, tables: str) -> None:
    """Device profiles and the latency tables each has (measured / estimated / none per experiment)."""
    from hwnas.latency.devices import overview_lines

    if ctx.invoked_subcommand is None:
        _echo_lines(overview_lines(profile_dir=repo_path(profiles), table_dir=repo_path(tables)))


@devices.command("show")
@click.argument("name")
@profile_option
@table_option
@user_errors
def devices_show(name: str, profiles: str, tables: str) -> None:
    """Every field of one device profile, with the source of each number."""
    from hwnas.latency.devices import profile_lines

    _echo_lines(profile_lines(load_device(name, profiles), table_dir=repo_path(tables)))


@devices.command("add")
@click.argument("name")
@click.option("--target", required=True,
              help='TVM target as JSON, e.g. \'{"kind": "llvm", "mtriple": "aarch64-linux-android"}\', or a bare kind.')
@click.option("--description", default="", help="What the device is.")
@click.option("--kind", "kind", type=click.Choice(DEVICE_KINDS), default="cpu", show_default=True)
@profile_option
@user_errors
def devices_add(name: str, target: str, description: str, kind: DeviceKind, profiles: str) -> None:
    """Scaffold device_profiles/NAME.toml with every field (TODO sources); never overwrites."""
    from hwnas.latency.devices import add_profile

    path = add_profile(name, target=target, description=description, kind=kind, profile_dir=profiles)
    click.echo(f"wrote {path}: fill in the TODO figures and sources, then `hwnas devices show {name}`")


@main.command()
@device_option
@experiment_option(LATENCY_EXPERIMENT)
@preset_or_config_options
@steps_option
@precision_option
@click.option("--correct", is_flag=True, help="Apply the table's fitted linear correction.")
@guidance_option
@confidence_option("Central interval reported around the prediction.")
@json_option
@profile_option
@table_option
@user_errors
def predict(device: str, experiment: str, preset: str | None, config: str | None, steps: int,
            precision: Precision | None, correct: bool, guidance: Guidance, confidence: float, as_json: bool,
            profiles: str, tables: str) -> None:
    """End-to-end latency of one image of a sub-DiT on a device, from the device's LUT, with an interval."""
    prof, sp = load_device(device, profiles), load_experiment(experiment)
    cfg = one_config(sp, preset=preset, config=config)
    table = load_table(prof, sp.name, table_dir=repo_path(tables))
    pred = predict_latency_ms(cfg, table, steps=steps, precision=precision or prof.default_precision,
                              space=sp, correct=correct, guidance=guidance)
    if as_json:
        click.echo(json.dumps(pred.report(confidence), indent=2))
    else:
        _echo_lines(pred.lines(confidence, describe=cfg.describe(), device_description=prof.description))


@main.group()
def lut() -> None:
    """Build device latency lookup tables (LUTs)."""


@lut.command("build")
@device_option
@experiment_option(LATENCY_EXPERIMENT)
@click.option("--estimate", is_flag=True, help="Roofline-estimated table from the profile's peaks (no device needed).")
@click.option("--tracker", help="TVM RPC tracker HOST:PORT (measured builds).")
@click.option("--key", "rpc_key", help="RPC key of the device at the tracker (default: the profile's).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(PRECISIONS),
              help="Repeat for several; default: every precision the profile has a peak for.")
@click.option("--prior-from", "prior_from", help="Estimates: take this device's calibrated per-kind parameters as "
                                                 "the priors (an assumption: alike hardware).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Measured builds: compile processes (locally, timing runs alone between waves of compiles).")
@click.option("--cache", "cache", type=click.Path(file_okay=False),
              help="Measured builds: folder of compiled kernels, reused by later builds [default: "
                   "$XDG_CACHE_HOME/hwnas/kernels, else ~/.cache/hwnas/kernels]; delete it to clear it.")
@click.option("--no-cache", "no_cache", is_flag=True, help="Measured builds: compile into a temporary folder.")
@profile_option
@table_option
@user_errors
def lut_build(device: str, experiment: str, estimate: bool, tracker: str | None, rpc_key: str | None,
              precisions: tuple[Precision, ...], prior_from: str | None, jobs: int, cache: str | None,
              no_cache: bool, profiles: str, tables: str) -> None:
    """Build the LUT of a device for an experiment: every kernel of its search space."""
    from hwnas.latency.calibrate import estimated_table

    prof, sp, table_dir = load_device(device, profiles), load_experiment(experiment), repo_path(tables)
    if cache and no_cache:
        raise click.UsageError("--cache and --no-cache exclude each other")
    if not estimate:
        _measured_build(prof, sp, experiment, tracker=tracker, rpc_key=rpc_key, precisions=precisions, jobs=jobs,
                        cache=cache, no_cache=no_cache, tables=tables)
        return
    if cache or no_cache:
        raise click.UsageError("--cache/--no-cache are for measured builds; an --estimate build compiles nothing")
    if tracker is not None or rpc_key is not None:
        raise click.UsageError("--tracker/--key are for measured builds; an --estimate build needs no device")
    donor = load_table(load_device(prior_from, profiles), sp.name, table_dir=table_dir) if prior_from else None
    table = estimated_table(prof, sp, experiment_path=experiment, precisions=precisions, donor=donor)
    csv_path, meta_path = write_table(table, table_dir=table_dir)
    _echo_lines([f"wrote {csv_path} ({len(table.entries)} kernels, {', '.join(table.meta.precisions)}; estimated)",
                 f"      {meta_path}", f"calibration: {table.meta.calibration}"])


def _measured_build(prof: DeviceProfile, sp: SearchSpace, experiment: str, *, tracker: str | None,
                    rpc_key: str | None, precisions: tuple[str, ...], jobs: int, cache: str | None, no_cache: bool,
                    tables: str) -> None:
    from hwnas.latency.bench import TrackerError, parse_tracker
    from hwnas.latency.build import DeviceDroppedError, build_measured_table
    from hwnas.latency.kernel_cache import DEFAULT_KERNEL_CACHE

    if precisions and set(precisions) != {"fp32"}:
        raise click.UsageError(f"measured builds time fp32 kernels only, got --precision {list(precisions)}")
    try:
        if tracker is not None:
            parse_tracker(tracker)
        rep = build_measured_table(prof, sp, experiment_path=experiment, table_dir=repo_path(tables),
                                   tracker=tracker, rpc_key=rpc_key, jobs=jobs,
                                   cache=None if no_cache else cache or DEFAULT_KERNEL_CACHE)
    except (TrackerError, DeviceDroppedError) as exc:
        raise click.UsageError(str(exc)) from None
    if rep.note:
        click.echo(rep.note)
    click.echo(f"wrote {rep.paths[0]} ({len(rep.table.entries)} kernels; measured {rep.measured} now, kept "
               f"{rep.kept}; compiled {rep.compiled}, {rep.cached} from the kernel cache) in {rep.wall_s:.0f} s "
               f"({rep.compile_s:.0f} s compiling, {rep.timing_s:.0f} s timing)")


@lut.command("calibrate")
@device_option
@experiment_option(LATENCY_EXPERIMENT)
@click.option("--measurements", required=True, type=click.Path(dir_okay=False),
              help="CSV: config, ms, per (step|image), optional steps, precision, runtime, note.")
@profile_option
@table_option
@user_errors
def lut_calibrate(device: str, experiment: str, measurements: str, profiles: str, tables: str) -> None:
    """Fit a device's per-op-kind cost parameters to measured sub-DiTs; rewrite its estimated table."""
    from hwnas.latency.calibrate import calibrated_table, calibration_lines

    table, fit = calibrated_table(load_device(device, profiles), load_experiment(experiment), measurements,
                                  experiment_path=experiment)
    csv_path, _ = write_table(table, table_dir=repo_path(tables))
    _echo_lines([*calibration_lines(table, fit),
                 f"wrote {csv_path} ({len(table.entries)} kernels): {table.meta.calibration}"])


@lut.command("dispatch")
@device_option
@click.option("--probe-ms", "probe_ms", required=True, type=float,
              help="Measured ms per denoising step (batch 1) of the probe, the smallest sub-DiT of "
                   "experiments/shapes-32.toml: hwnas export --checkpoint checkpoints/shapes-32 --config smallest.")
@click.option("--passes", type=click.FloatRange(min=1.0), default=None,
              help="Element-wise passes over memory per primitive, where known (1: the runtime fuses "
                   "norm-scale-shift chains; PyTorch eager: 3.25). Default: the profile's, else 1.")
@profile_option
@user_errors
def lut_dispatch(device: str, probe_ms: float, passes: float | None, profiles: str) -> None:
    """The runtime's dispatch overhead from one timed probe: prints the [runtime.dispatch] table to put
    in the device's profile (then rebuild its table: lut build --estimate, or lut calibrate)."""
    import dataclasses
    import datetime as dt

    from hwnas.latency.calibrate import PROBE_EXPERIMENT, dispatch_figure
    from hwnas.latency.profile import Figure

    profile = load_device(device, profiles)
    if passes is not None:
        profile = dataclasses.replace(profile, elementwise_passes=Figure(passes, "given: lut dispatch --passes"))
    overhead, _ = dispatch_figure(profile, load_experiment(PROBE_EXPERIMENT), probe_ms,
                                  how=f"hwnas lut dispatch, {dt.date.today().isoformat()}")
    lines = ["[runtime.dispatch]", f"overhead_us = {overhead.value:g}"]
    if profile.elementwise_passes is not None:
        lines.append(f"elementwise_passes = {profile.elementwise_passes.value:g}")
    _echo_lines([*lines, "source = " + json.dumps(overhead.source)])


@lut.command("threading")
@device_option
@click.option("--timings", required=True, type=click.Path(dir_okay=False),
              help="CSV with columns mflop, ms_one, ms_threads: at least three primitives of different sizes (e.g. "
                   "linear layers) timed on one thread and on the profile's device.threads, ms per call.")
@profile_option
@user_errors
def lut_threading(device: str, timings: str, profiles: str) -> None:
    """How much of its threads' speed-up the runtime gives a primitive of a given size, fitted to a timed
    ladder: prints the [runtime.threading] table to put in the device's profile (then rebuild its table)."""
    import datetime as dt

    from hwnas.latency.calibrate import half_speedup_figure, read_threading

    profile = load_device(device, profiles)
    flops, one, many = read_threading(timings)
    figure = half_speedup_figure(flops, one, many, profile.threads,
                                 how=f"hwnas lut threading on {timings}, {dt.date.today().isoformat()}")
    _echo_lines(["[runtime.threading]", f"half_speedup_mflop = {figure.value:g}",
                 "source = " + json.dumps(figure.source)])


@lut.command("validate")
@click.option("--device", required=True, help="Device profile name (a measured table on this machine).")
@experiment_option(DEFAULT_EXPERIMENT)
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=2), help="Held-out sub-DiTs.")
@click.option("--calibration", "n_calibration", default=20, show_default=True, type=click.IntRange(min=2),
              help="Separate sub-DiTs the correction and the FLOPs baseline are fitted on.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--noise-repeats", "noise_repeats", default=5, show_default=True, type=click.IntRange(min=0),
              help="Time one sub-DiT this many times for the noise floor (0: skip).")
@click.option("--cache", "cache", type=click.Path(dir_okay=False),
              help="JSON-lines file of measured sub-DiTs, reused on a rerun (resume).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Compile this many sub-DiTs at once; timing always runs alone, after compiling.")
@click.option("--write-correction", "write_correction", is_flag=True,
              help="Store the fitted correction in the table's sidecar (used by `predict --correct`).")
@click.option("--write-interval", "write_interval", is_flag=True,
              help="Store the held-out error in the table's sidecar: predictions then carry intervals from it.")
@click.option("--from-report", "from_report", type=click.Path(exists=True, dir_okay=False),
              help="Reuse this earlier `--json` report instead of timing again (with --write-interval).")
@json_option
@profile_option
@table_option
@user_errors
def lut_validate(device: str, experiment: str, n: int, n_calibration: int, seed: int, noise_repeats: int,
                 cache: str | None, jobs: int, write_correction: bool, write_interval: bool, from_report: str | None,
                 as_json: bool, profiles: str, tables: str) -> None:
    """Predicted vs measured whole-step latency of held-out random sub-DiTs (compiled with TVM)."""
    from hwnas.latency import validate as val

    prof, sp = load_device(device, profiles), load_experiment(experiment)
    if not prof.local:
        raise click.UsageError(f"device {prof.name!r} is not this machine; validation runs locally")
    table = load_table(prof, sp.name, table_dir=repo_path(tables))
    report = (val.reuse_report(from_report, device=prof.name, experiment=sp.name) if from_report else
              val.validate_table(table, sp, prof, n=n, seed=seed, n_calibration=n_calibration,
                                 noise_repeats=noise_repeats, cache=cache, jobs=jobs))
    report = val.check_intervals(report)
    val.record_validation(table, report, interval=write_interval, correction=write_correction,
                          table_dir=repo_path(tables))
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(val.report_lines(report)))
