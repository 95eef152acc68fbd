"""The `hwnas` command line: thin click commands over the library.

Each command parses its options, loads the experiment / profile into dataclasses, calls one
library function and prints or writes the result. User mistakes end in one line on stderr and
exit code 2 (`click.UsageError`), never a traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from hwnas import __version__
from hwnas.io import atomic_write_json
from hwnas.paths import repo_path
from hwnas.space import PRESET_WIDTHS, SearchSpace, SubnetConfig, load_config, load_space

DEFAULT_EXPERIMENT = "experiments/shapes-32.toml"
_repo_path = repo_path


def _load_space(path: str) -> SearchSpace:
    try:
        return load_space(_repo_path(path))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def _resolve_config(space: SearchSpace, *, preset: str | None, config: str | None) -> SubnetConfig:
    """A sub-DiT from `--preset NAME` or `--config FILE.json` (exactly one), checked against `space`."""
    if (preset is None) == (config is None):
        raise click.UsageError("give exactly one of --preset NAME or --config FILE.json")
    try:
        cfg = space.preset(preset) if preset is not None else load_config(config)  # type: ignore[arg-type]
        space.validate(cfg)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hwnas")
def main() -> None:
    """Hardware-aware NAS for efficient text-to-image diffusion transformers on edge devices.

    \b
    Start here (the main job):
      hwnas search --device pixel8 --budget 1.8s    best sub-DiT under a budget + report
    \b
    The pipeline:
      hwnas space show --preset small               sizes of a sub-DiT (params, FLOPs)
      hwnas train / sample / eval                   proxy supernet: train, images, quality
      hwnas devices / predict / lut build|validate  device profiles and latency tables
      hwnas search / report                         Optuna search and its report
      hwnas export / distill / quantize / compress  K-DMD, int4, ONNX; close the loop
    """


def _config_by_name(space: SearchSpace, value: str) -> SubnetConfig:
    """`--config tiny|small|full|largest|smallest|FILE.json`, checked against `space`."""
    try:
        if value in PRESET_WIDTHS:
            cfg = space.preset(value)
        elif value in ("largest", "smallest"):
            cfg = space.largest() if value == "largest" else space.smallest()
        else:
            cfg = load_config(value)
        space.validate(cfg)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return cfg


def _load_supernet(checkpoint: str | None):  # -> hwnas.train.Supernet
    from hwnas.train import load_supernet

    try:
        return load_supernet(checkpoint)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.group()
def space() -> None:
    """Inspect the search space of an experiment: presets, sizes, random members."""


@space.command("show")
@click.option("--experiment", "experiment", default=DEFAULT_EXPERIMENT, show_default=True,
              help="Experiment TOML defining the search space.")
@click.option("--preset", type=click.Choice(sorted(PRESET_WIDTHS)), help="One of SnapGen++'s presets.")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="A SubnetConfig JSON file.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def space_show(experiment: str, preset: str | None, config: str | None, as_json: bool) -> None:
    """Parameters, FLOPs per denoising step and bytes of one sub-DiT (pure counts, no model)."""
    from hwnas.cost import summary

    sp = _load_space(experiment)
    cfg = _resolve_config(sp, preset=preset, config=config)
    info = summary(cfg, sp)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"experiment      {sp.name}  ({experiment})")
    click.echo(f"sub-DiT         {info['describe']}  id {info['config_id']}")
    click.echo(f"params          {info['params'] / 1e6:,.2f} M")
    click.echo(f"FLOPs / step    {info['flops_per_step'] / 1e9:,.2f} GFLOP  (1 image, no CFG; multiply-add = 2)")
    click.echo(f"weights fp16    {info['weight_bytes_fp16'] / 2**20:,.1f} MiB")
    click.echo(f"weights int4    {info['weight_bytes_int4'] / 2**20:,.1f} MiB  (no scales)")
    click.echo(f"tokens          {info['tokens_outer']} (Down/Up), {info['tokens_middle']} (Middle)")


@space.command("sample")
@click.option("--experiment", "experiment", default=DEFAULT_EXPERIMENT, show_default=True)
@click.option("--n", "n", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "out", type=click.Path(file_okay=False), help="Write each sample as <id>.json here.")
def space_sample(experiment: str, n: int, seed: int, out: str | None) -> None:
    """Uniform random sub-DiTs of the space, as JSON lines (or files with --out)."""
    import random

    sp = _load_space(experiment)
    rng = random.Random(seed)
    for _ in range(n):
        cfg = sp.sample(rng)
        if out:
            atomic_write_json(Path(out) / f"{cfg.id}.json", cfg.to_dict())
        click.echo(cfg.to_json())


@main.command()
@click.option("--experiment", "experiment", default=DEFAULT_EXPERIMENT, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), help="Override [train] steps.")
@click.option("--batch-size", "batch_size", type=click.IntRange(min=1), help="Override [train] batch_size.")
@click.option("--out", "out", default="runs/train", show_default=True, type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True,
              help="Continue the run in --out where it stopped (a larger --steps extends it).")
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (default: torch's choice).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(experiment: str, steps: int | None, batch_size: int | None, out: str, resume: bool,
          threads: int | None, quiet: bool) -> None:
    """Train the elastic supernet (flow matching; the largest + sampled sub-DiTs every step).

    Runs under torchrun too: `torchrun --nproc-per-node 2 -m hwnas.cli train ...`.
    """
    import torch

    from hwnas.train import train as run_training

    if threads:
        torch.set_num_threads(threads)
    path = _repo_path(experiment)
    _load_space(experiment)
    if not resume and (Path(out) / "train_state.pt").exists():
        raise click.UsageError(f"{out} already holds a run; pass --resume or choose another --out")
    try:
        summary = run_training(path, out=out, steps=steps, resume=resume, progress=not quiet,
                               overrides={"batch_size": batch_size})
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(json.dumps(summary))


@main.command()
@click.option("--checkpoint", type=click.Path(), help="Supernet checkpoint dir (default: the shipped proxy).")
@click.option("--config", "config", default="small", show_default=True,
              help="tiny|small|full|largest|smallest or a SubnetConfig JSON file.")
@click.option("--prompt", "prompts", multiple=True, required=True, help="Repeat for several prompts.")
@click.option("--n", "n", default=4, show_default=True, type=click.IntRange(min=1), help="Images per prompt.")
@click.option("--steps", default=28, show_default=True, type=click.IntRange(min=1))
@click.option("--cfg-scale", "cfg_scale", default=4.0, show_default=True, type=float)
@click.option("--solver", type=click.Choice(["euler", "heun"]), default="euler", show_default=True)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", "output", default="grid.png", show_default=True, type=click.Path(dir_okay=False))
def sample(checkpoint: str | None, config: str, prompts: tuple[str, ...], n: int, steps: int,
           cfg_scale: float, solver: str, seed: int, output: str) -> None:
    """Generate an image grid from one sub-DiT of a trained supernet."""
    from hwnas.train import generate, save_grid

    net = _load_supernet(checkpoint)
    cfg = _config_by_name(net.space, config)
    batch = [p for p in prompts for _ in range(n)]
    images = generate(net, batch, cfg, steps=steps, cfg_scale=cfg_scale, solver=solver, seed=seed)  # type: ignore[arg-type]
    save_grid(images, output, ncol=n, labels=batch)
    click.echo(f"wrote {output} ({len(batch)} images, sub-DiT {cfg.describe()}, {steps} {solver} steps, "
               f"CFG {cfg_scale})")


@main.command("eval")
@click.option("--checkpoint", type=click.Path(), help="Supernet checkpoint dir (default: the shipped proxy).")
@click.option("--config", "config", default="small", show_default=True,
              help="tiny|small|full|largest|smallest or a SubnetConfig JSON file.")
@click.option("--metric", type=click.Choice(["compositional", "fd_ref", "val_loss"]), default="compositional",
              show_default=True)
@click.option("--steps", default=28, show_default=True, type=click.IntRange(min=1))
@click.option("--cfg-scale", "cfg_scale", default=4.0, show_default=True, type=float)
@click.option("--n", "n", default=200, show_default=True, type=click.IntRange(min=2))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(checkpoint: str | None, config: str, metric: str, steps: int, cfg_scale: float, n: int,
             seed: int, as_json: bool) -> None:
    """Quality of one sub-DiT: compositional accuracy, fd_ref or validation loss."""
    from hwnas.metrics.evaluate import evaluate

    net = _load_supernet(checkpoint)
    cfg = _config_by_name(net.space, config)
    try:
        result = evaluate(net, cfg, metric=metric, n=n, steps=steps, cfg_scale=cfg_scale, seed=seed,  # type: ignore[arg-type]
                          checkpoint=checkpoint)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{metric} = {result['value']:.4f}  ({result['source']})")
    for cat, acc in result.get("per_category", {}).items():
        click.echo(f"  {cat:<14} {acc:.3f}")


# Devices, latency tables, latency prediction ---------------------------------------------------

PROFILE_DIR = "device_profiles"
TABLE_DIR = "latency_tables"
LATENCY_EXPERIMENT = "experiments/snapgenpp-1024.toml"
"""Default experiment of the latency commands, and the space the paper's anchor point is solved on."""


def _profile_option(f):  # type: ignore[no-untyped-def]
    return click.option("--profiles", "profiles", default=PROFILE_DIR, show_default=True,
                        type=click.Path(file_okay=False), help="Directory of device profile TOML files.")(f)


def _table_option(f):  # type: ignore[no-untyped-def]
    return click.option("--tables", "tables", default=TABLE_DIR, show_default=True,
                        type=click.Path(file_okay=False), help="Directory of latency tables (<device>/<experiment>.csv).")(f)


def _load_profile(name: str, profiles: str):  # -> hwnas.latency.DeviceProfile
    from hwnas.latency import load_profile

    try:
        return load_profile(name, profile_dir=_repo_path(profiles))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


@main.group(invoke_without_command=True)
@_profile_option
@_table_option
@click.pass_context
def devices(ctx: click.Context, profiles: str, tables: str) -> None:
    """Device profiles and the latency tables each has (measured / estimated / none per experiment)."""
    if ctx.invoked_subcommand is not None:
        return
    from hwnas.latency import list_profiles, load_profile, table_kinds

    names = list_profiles(_repo_path(profiles))
    kinds = {n: table_kinds(n, table_dir=_repo_path(tables)) for n in names}
    experiments = sorted({e for k in kinds.values() for e in k})
    for name in names:
        try:
            p = load_profile(name, profile_dir=_repo_path(profiles))
            head = f"{name:18s} {p.kind:4s} {p.default_precision:6s} {p.description}"
        except ValueError as exc:
            head = f"{name:18s} invalid profile: {exc}"
        luts = ", ".join(f"{e}: {kinds[name].get(e, 'none')}" for e in experiments) or "no latency tables"
        click.echo(f"{head}\n{'':18s} LUT {luts}")


@devices.command("show")
@click.argument("name")
@_profile_option
@_table_option
def devices_show(name: str, profiles: str, tables: str) -> None:
    """Every field of one device profile, with the source of each number."""
    from hwnas.latency import table_kinds

    p = _load_profile(name, profiles)
    click.echo(f"{p.name}: {p.description}  ({p.path})")
    click.echo(f"kind {p.kind}, {p.threads} threads, default precision {p.default_precision}, "
               f"local {str(p.local).lower()}")
    click.echo(f"TVM target  {json.dumps(p.target)}")
    click.echo(f"RPC key     {p.rpc_key or '(local)'}")
    for prec, fig in p.peak_gflops.items():
        click.echo(f"peak {prec:6s} {fig.value:>9,.1f} GFLOP/s  {fig.source}")
    click.echo(f"bandwidth   {p.bandwidth_gbps.value:>9,.1f} GB/s     {p.bandwidth_gbps.source}")
    click.echo(f"text encoder {p.text_encoder.latency_ms.value:>8,.1f} ms  {p.text_encoder.latency_ms.source}")
    click.echo(f"VAE decoder {p.vae_decoder.latency_ms.value:>9,.1f} ms  at {p.vae_decoder.resolution} px: "
               f"{p.vae_decoder.latency_ms.source}")
    luts = table_kinds(p.name, table_dir=_repo_path(tables))
    click.echo("LUTs        " + (", ".join(f"{e}: {k}" for e, k in luts.items()) or "none"))


@devices.command("add")
@click.argument("name")
@click.option("--target", required=True,
              help='TVM target as JSON, e.g. \'{"kind": "llvm", "mtriple": "aarch64-linux-android"}\', or a bare kind.')
@click.option("--description", default="", help="What the device is.")
@click.option("--kind", "kind", type=click.Choice(["cpu", "gpu", "npu"]), default="cpu", show_default=True)
@_profile_option
def devices_add(name: str, target: str, description: str, kind: str, profiles: str) -> None:
    """Scaffold device_profiles/NAME.toml with every field (TODO sources); never overwrites."""
    from hwnas.latency import scaffold_profile

    try:
        target_dict = json.loads(target) if target.lstrip().startswith("{") else {"kind": target.strip()}
    except json.JSONDecodeError as exc:
        raise click.UsageError(f"--target is not valid JSON: {exc}: {target!r}") from None
    if not isinstance(target_dict.get("kind"), str) or not target_dict["kind"]:
        raise click.UsageError(f"--target needs a 'kind' such as llvm, cuda or metal, got {target!r}")
    path = Path(profiles) / f"{name}.toml"
    if path.exists():
        raise click.UsageError(f"{path} exists already; edit it or choose another name")
    try:
        text = scaffold_profile(name, target=target_dict, description=description, kind=kind)  # type: ignore[arg-type]
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x") as fh:
        fh.write(text)
    click.echo(f"wrote {path}: fill in the TODO figures and sources, then `hwnas devices show {name}`")


def _prediction_json(pred) -> dict[str, object]:  # pred: hwnas.latency.LatencyPrediction
    return {
        "latency_ms": round(pred.total_ms, 3), "step_ms": round(pred.step_ms, 3), "steps": pred.steps,
        "breakdown": {
            "denoiser_ms": round(pred.denoiser_ms, 3),
            "denoiser_step_ms_by_kind": {k: round(v, 3) for k, v in pred.step_ms_by_kind.items()},
            "text_encoder_ms": round(pred.text_encoder_ms, 3), "vae_decoder_ms": round(pred.vae_decoder_ms, 3),
        },
        "source": pred.source, "provenance": pred.provenance, "corrected": pred.corrected,
        "device": pred.device, "precision": pred.precision, "experiment": pred.experiment,
        "config_id": pred.config_id,
    }


@main.command()
@click.option("--device", required=True, help="Device profile name (see `hwnas devices`).")
@click.option("--experiment", "experiment", default=LATENCY_EXPERIMENT, show_default=True)
@click.option("--preset", type=click.Choice(sorted(PRESET_WIDTHS)), help="One of SnapGen++'s presets.")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="A SubnetConfig JSON file.")
@click.option("--steps", default=4, show_default=True, type=click.IntRange(min=1), help="Denoising steps.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "w8a16", "w4a16"]),
              help="Default: the device's default precision.")
@click.option("--correct", is_flag=True, help="Apply the table's fitted linear correction.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_profile_option
@_table_option
def predict(device: str, experiment: str, preset: str | None, config: str | None, steps: int,
            precision: str | None, correct: bool, as_json: bool, profiles: str, tables: str) -> None:
    """End-to-end latency of one image of a sub-DiT on a device, from the device's LUT."""
    from hwnas.latency import MissingKernelError, load_table, predict_latency_ms

    prof = _load_profile(device, profiles)
    sp = _load_space(experiment)
    cfg = _resolve_config(sp, preset=preset, config=config)
    try:
        table = load_table(prof, sp.name, table_dir=_repo_path(tables))
        pred = predict_latency_ms(cfg, table, steps=steps, precision=precision or prof.default_precision,  # type: ignore[arg-type]
                                  space=sp, correct=correct)
    except (FileNotFoundError, ValueError, MissingKernelError) as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(_prediction_json(pred), indent=2))
        return
    click.echo(f"device       {pred.device}  ({prof.description})")
    click.echo(f"sub-DiT      {cfg.describe()}  id {pred.config_id}, {pred.precision}, {pred.steps} steps")
    click.echo(f"latency      {pred.total_ms:,.1f} ms  ({pred.source})")
    click.echo(f"  denoiser   {pred.steps} x {pred.step_ms:,.1f} ms = {pred.denoiser_ms:,.1f} ms"
               + ("  (corrected)" if pred.corrected else ""))
    click.echo(f"  text enc   {pred.text_encoder_ms:,.1f} ms")
    click.echo(f"  VAE dec    {pred.vae_decoder_ms:,.1f} ms")
    for kind, ms in pred.step_ms_by_kind.items():
        click.echo(f"    {kind:12s} {ms:>10,.2f} ms/step")
    click.echo(f"source       {pred.provenance}")


@main.group()
def lut() -> None:
    """Build device latency lookup tables (LUTs)."""


@lut.command("build")
@click.option("--device", required=True, help="Device profile name (see `hwnas devices`).")
@click.option("--experiment", "experiment", default=LATENCY_EXPERIMENT, show_default=True)
@click.option("--estimate", is_flag=True, help="Roofline-estimated table from the profile's peaks (no device needed).")
@click.option("--tracker", help="TVM RPC tracker HOST:PORT (measured builds).")
@click.option("--key", "rpc_key", help="RPC key of the device at the tracker (default: the profile's).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "w8a16", "w4a16"]),
              help="Repeat for several; default: every precision the profile has a peak for.")
@click.option("--efficiency-from", "efficiency_from",
              help="CPU estimates: take per-kernel-kind efficiencies from this device's measured table.")
@click.option("--anchor-experiment", "anchor_experiment", default=LATENCY_EXPERIMENT, show_default=True,
              help="Experiment the paper's iPhone point is solved on.")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Local builds: compile this many kernels at once (timing runs alone, after each chunk).")
@_profile_option
@_table_option
def lut_build(device: str, experiment: str, estimate: bool, tracker: str | None, rpc_key: str | None,
              precisions: tuple[str, ...], efficiency_from: str | None, anchor_experiment: str, jobs: int,
              profiles: str, tables: str) -> None:
    """Build the LUT of a device for an experiment: every kernel of its search space."""
    from hwnas.latency import (
        SNAPGENPP_ANCHOR, build_estimated_table, efficiency_from_table, estimator_params, load_table, write_table,
    )

    prof = _load_profile(device, profiles)
    sp = _load_space(experiment)
    if tracker is not None:
        host, _, port = tracker.rpartition(":")
        if not host or not port.isdigit():
            raise click.UsageError(f"--tracker must be HOST:PORT, got {tracker!r}")
    if not estimate:
        from hwnas.latency.bench import TrackerError
        from hwnas.latency.build import DeviceDroppedError, build_measured_table

        if precisions and set(precisions) != {"fp32"}:
            raise click.UsageError(f"measured builds time fp32 kernels only, got --precision {list(precisions)}")
        try:
            rep = build_measured_table(prof, sp, experiment_path=experiment, table_dir=_repo_path(tables),
                                       tracker=tracker, rpc_key=rpc_key, jobs=jobs)
        except (TrackerError, DeviceDroppedError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
        if rep.note:
            click.echo(rep.note)
        click.echo(f"wrote {rep.paths[0]} ({len(rep.table.entries)} kernels; measured {rep.measured} now, kept "
                   f"{rep.kept}) in {rep.wall_s:.0f} s")
        return
    if tracker is not None or rpc_key is not None:
        raise click.UsageError("--tracker/--key are for measured builds; an --estimate build needs no device")
    bad = [p for p in precisions if p not in prof.peak_gflops]
    if bad:
        raise click.UsageError(f"device {prof.name!r} has no peak for precision {bad[0]!r} "
                               f"(it has {list(prof.precisions)})")
    try:
        anchor_profile = _load_profile(SNAPGENPP_ANCHOR.device, profiles)
        host_eff, host_src = None, ""
        if efficiency_from:
            ref_prof = _load_profile(efficiency_from, profiles)
            ref = load_table(ref_prof, sp.name, table_dir=_repo_path(tables))
            if ref.meta.source == "estimated":
                raise click.UsageError(f"the {efficiency_from}/{sp.name} table is estimated; --efficiency-from "
                                       "needs measured entries")
            ref_params = estimator_params(ref_prof, anchor_profile=anchor_profile,
                                          anchor_space=_load_space(anchor_experiment))
            host_eff = efficiency_from_table(ref, ref_prof, launch_overhead_ms=ref_params.launch_overhead_ms)
            host_src = (f"{efficiency_from}/{sp.name} table measured {ref.meta.date} (target "
                        f"{json.dumps(ref.meta.target)}), measured time vs {efficiency_from} roofline per kind")
        params = estimator_params(prof, anchor_profile=anchor_profile, anchor_space=_load_space(anchor_experiment),
                                  host_efficiency=host_eff, host_efficiency_source=host_src)
        table = build_estimated_table(prof, sp, params, experiment_path=experiment,
                                      precisions=tuple(precisions) or None)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    csv_path, meta_path = write_table(table, table_dir=_repo_path(tables))
    click.echo(f"wrote {csv_path} ({len(table.entries)} kernels, {', '.join(table.meta.precisions)}; estimated)")
    click.echo(f"      {meta_path}")
    click.echo(f"calibration: {table.meta.calibration}")


@lut.command("validate")
@click.option("--device", required=True, help="Device profile name (a measured table on this machine).")
@click.option("--experiment", "experiment", default=DEFAULT_EXPERIMENT, show_default=True)
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
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON report.")
@_profile_option
@_table_option
def lut_validate(device: str, experiment: str, n: int, n_calibration: int, seed: int, noise_repeats: int,
                 cache: str | None, jobs: int, write_correction: bool, as_json: bool, profiles: str,
                 tables: str) -> None:
    """Predicted vs measured whole-step latency of held-out random sub-DiTs (compiled with TVM)."""
    from hwnas.latency import MissingKernelError, load_table
    from hwnas.latency import validate as val

    prof = _load_profile(device, profiles)
    sp = _load_space(experiment)
    if not prof.local:
        raise click.UsageError(f"device {prof.name!r} is not this machine; validation runs locally")
    try:
        table = load_table(prof, sp.name, table_dir=_repo_path(tables))
        report = val.validate_table(table, sp, prof, n=n, seed=seed, n_calibration=n_calibration,
                                    noise_repeats=noise_repeats, cache=cache, jobs=jobs)
    except (FileNotFoundError, ValueError, MissingKernelError) as exc:
        raise click.UsageError(str(exc)) from None
    if write_correction:
        c = report["corrected"]
        val.write_correction(table, a=c["a"], b_ms=c["b_ms"], table_dir=_repo_path(tables),
                             source=f"measured: hwnas lut validate --seed {seed}, least squares on "
                                    f"{report['n_calibration']} calibration sub-DiTs disjoint from the held-out ones")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for name, r in (("LUT", report), ("LUT corrected", report["corrected"]), ("FLOPs-linear", report["baseline"])):
        click.echo(f"{name:14s} n {r['n']}  within 5% {r['within_5pct']:.0%}  within 10% {r['within_10pct']:.0%}  "
                   f"MAPE {r['mape']:.1f}%  max {r['max_abs_pct']:.1f}%  bias {r['bias_pct']:+.1f}%  "
                   f"spearman {r['spearman']:.3f}  kendall {r['kendall']:.3f}  "
                   f"false-feasible {r['false_feasible_rate']:.0%} at {r['budget_ms']:.2f} ms")
    if "noise_floor" in report:
        nf = report["noise_floor"]
        click.echo(f"noise floor    same sub-DiT x{nf['times']}: CV {nf['cv']:.1%}, max {nf['max_abs_pct']:.1f}% "
                   f"from the median")



# Compression: export, distill, quantize, close the loop ------------------------------------------


def _pick(space: SearchSpace, *, run: str | None, pick: str | None, config: str | None) -> SubnetConfig:
    """`--run DIR --pick N|best` or `--config tiny|small|full|FILE.json` (exactly one way)."""
    from hwnas.compress import resolve_pick

    if (run is None) == (config is None):
        raise click.UsageError("give --run RUN_DIR (with --pick) or --config NAME|FILE.json, not both")
    if config is not None:
        return _config_by_name(space, config)
    try:
        cfg = resolve_pick(run, pick or "best")  # type: ignore[arg-type]
        space.validate(cfg)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return cfg


def _pick_options(f):  # type: ignore[no-untyped-def]
    f = click.option("--config", "config", help="tiny|small|full|largest|smallest or a SubnetConfig JSON file.")(f)
    f = click.option("--pick", default="best", show_default=True, help="Row of pareto.csv (0-based) or 'best'.")(f)
    f = click.option("--run", "run", type=click.Path(file_okay=False), help="A search run directory.")(f)
    return click.option("--checkpoint", type=click.Path(), help="Supernet checkpoint dir (default: the shipped proxy).")(f)


@main.command("export")
@_pick_options
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--onnx", "with_onnx", is_flag=True, help="Also write model.onnx (fp32).")
def export_cmd(checkpoint: str | None, run: str | None, pick: str, config: str | None, out: str,
               with_onnx: bool) -> None:
    """Extract a sub-DiT from the supernet as a standalone model (safetensors + JSON)."""
    from hwnas.compress import from_supernet, save_subdit

    net = _load_supernet(checkpoint)
    cfg = _pick(net.space, run=run, pick=pick, config=config)
    sub = from_supernet(net, cfg, source=f"{checkpoint or 'shipped proxy supernet'}"
                        + (f", search run {run} pick {pick}" if run else ""))
    save_subdit(sub, out)
    if with_onnx:
        from hwnas.model import export_onnx

        export_onnx(sub.dit, Path(out) / "model.onnx")
    click.echo(json.dumps({"out": out, "config_id": cfg.id, "describe": cfg.describe(),
                           "params": sum(p.numel() for p in sub.dit.parameters())}))


@main.command("distill")
@_pick_options
@click.option("--out", "out", required=True, type=click.Path(file_okay=False))
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1), help="Student updates.")
@click.option("--student-steps", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--critic-updates", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=5e-5, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Student learning rate (AdamW, constant).")
@click.option("--critic-lr", default=1e-4, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Critic (fake score) learning rate.")
@click.option("--beta1", default=0.0, show_default=True, type=click.FloatRange(min=0, max=1, max_open=True),
              help="AdamW beta1 of student and critic (DMD2 uses 0; beta2 is 0.99).")
@click.option("--cfg-scale", default=4.0, show_default=True, type=click.FloatRange(min=1),
              help="Classifier-free guidance of the teacher (real score and KD targets).")
@click.option("--mode", type=click.Choice(["kdmd", "dmd", "kd"]), default="kdmd", show_default=True,
              help="K-DMD (all terms), DMD-only or KD-only (output + feature).")
@click.option("--no-feature", is_flag=True, help="Turn the feature-level term off.")
@click.option("--kd-teacher-steps", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--resume", is_flag=True, help="Continue the distillation in --out where it stopped.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def distill_cmd(checkpoint: str | None, run: str | None, pick: str, config: str | None, out: str, steps: int,
                student_steps: int, batch_size: int, critic_updates: int, lr: float, critic_lr: float, beta1: float,
                cfg_scale: float, mode: str, no_feature: bool, kd_teacher_steps: int, resume: bool,
                quiet: bool) -> None:
    """K-DMD step distillation of a sub-DiT against the full supernet (runs under torchrun too)."""
    from dataclasses import replace

    from hwnas.compress import DistillConfig, distill, from_supernet, terms

    net = _load_supernet(checkpoint)
    cfg = _pick(net.space, run=run, pick=pick, config=config)
    if not resume and (Path(out) / "distill_state.pt").exists():
        raise click.UsageError(f"{out} already holds a distillation; pass --resume or choose another --out")
    try:
        dc = terms(mode, DistillConfig(steps=steps, student_steps=student_steps, batch_size=batch_size,  # type: ignore[arg-type]
                                       critic_updates=critic_updates, kd_teacher_steps=kd_teacher_steps,
                                       lr=lr, critic_lr=critic_lr, beta1=beta1, cfg_scale=cfg_scale))
        if no_feature:
            dc = replace(dc, feat_weight=0.0)
        summary = distill(net, from_supernet(net, cfg), out=out, dc=dc, resume=resume, progress=not quiet)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(json.dumps(summary))


@main.command("quantize")
@click.option("--checkpoint", type=click.Path(), help="Supernet checkpoint dir (default: the shipped proxy).")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), help="A sub-DiT dir (export/distill output).")
@click.option("--config", "config", default="small", show_default=True,
              help="tiny|small|full|largest|smallest or a SubnetConfig JSON file (ignored with --model).")
@click.option("--method", type=click.Choice(["rtn", "kmeans"]), default="rtn", show_default=True)
@click.option("--group", default=32, show_default=True, type=click.IntRange(min=0),
              help="rtn: input channels per scale; kmeans: output rows per palette (0 = per tensor).")
@click.option("--asymmetric", is_flag=True, help="rtn with zero points.")
@click.option("--mixed", is_flag=True, help="8 bits for the most sensitive layers (+0.3 average bits).")
@click.option("--finetune-steps", default=0, show_default=True, type=click.IntRange(min=0),
              help="Bias/norm self-distillation steps after quantization.")
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=2))
@click.option("--steps", default=28, show_default=True, type=click.IntRange(min=1))
@click.option("--cfg-scale", "cfg_scale", default=4.0, show_default=True, type=float)
@click.option("--onnx", "onnx_out", type=click.Path(dir_okay=False), help="Write the int4 ONNX model here (rtn).")
@click.option("--json", "as_json", is_flag=True)
def quantize_cmd(checkpoint: str | None, model_dir: str | None, config: str, method: str, group: int,
                 asymmetric: bool, mixed: bool, finetune_steps: int, n: int, steps: int, cfg_scale: float,
                 onnx_out: str | None, as_json: bool) -> None:
    """Weight-only int4 quantization; accuracy before/after on the quantized weights."""
    from hwnas.compress import QuantSpec, from_supernet, load_subdit, quality_row, quantize_subdit
    from hwnas.compress.quant import finetune_biases_norms
    from hwnas.model import example_inputs

    try:
        if model_dir is not None:
            sub = load_subdit(model_dir)
        else:
            net = _load_supernet(checkpoint)
            sub = from_supernet(net, _config_by_name(net.space, config))
        spec = QuantSpec(method, 4, None if method == "kmeans" and group == 0 else group, not asymmetric)  # type: ignore[arg-type]
        qsub, q = quantize_subdit(sub, spec, mixed=mixed)
        if finetune_steps:
            finetune_biases_norms(qsub.dit, sub.dit, lambda i: example_inputs(sub.space, batch=8, seed=1000 + i),
                                  steps=finetune_steps)
        kw = dict(metric="compositional", n=n, steps=steps, cfg_scale=cfg_scale, checkpoint=checkpoint)
        before = quality_row(sub, sub.cfg, stage="fp32", **kw)
        after = quality_row(qsub, sub.cfg, stage="quantized", **kw)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    result = {"config_id": sub.cfg.id, "method": method, "group": spec.group, "symmetric": spec.symmetric,
              "mixed": mixed, "finetune_steps": finetune_steps, **q.summary(), "acc_fp32": before["value"],
              "acc_quant": after["value"], "n": n, "steps": steps, "cfg_scale": cfg_scale}
    if onnx_out:
        from hwnas.compress import check_parity, export_int4_onnx

        try:
            result["onnx"] = export_int4_onnx(sub.dit, q, onnx_out)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        result["parity"] = check_parity(onnx_out, qsub.dit)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{method} g{spec.group} {'sym' if spec.symmetric else 'asym'}{' mixed' if mixed else ''}: "
               f"{result['avg_bits']:.3f} bits, {result['bytes']} B vs {result['bytes_fp16']} B fp16; "
               f"accuracy {result['acc_fp32']:.3f} -> {result['acc_quant']:.3f} (n={n}, {steps} steps)")


@main.command("compress")
@_pick_options
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="Default: RUN_DIR/compress/<config_id> (with --run), else runs/compress/<config_id>.")
@click.option("--distill-steps", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--n", "n", default=100, show_default=True, type=click.IntRange(min=2))
@click.option("--resume", is_flag=True, help="Resume the distillation in OUT/kdmd.")
@click.option("--keep-distilled", is_flag=True,
              help="Quantize and export the K-DMD student even where the undistilled sub-DiT scores better.")
@click.option("--quiet", is_flag=True)
def compress_cmd(checkpoint: str | None, run: str | None, pick: str, config: str | None, out: str | None,
                 distill_steps: int, n: int, resume: bool, keep_distilled: bool, quiet: bool) -> None:
    """Close the loop for one pick: quality at 28 / 4 / K-DMD 4 / int4, predicted vs measured latency."""
    from hwnas.compress import DistillConfig, compress_pick

    net = _load_supernet(checkpoint)
    cfg = _pick(net.space, run=run, pick=pick, config=config)
    target = Path(out) if out else (Path(run) if run else Path("runs")) / "compress" / cfg.id
    try:
        result = compress_pick(net, cfg, out=target, checkpoint=checkpoint, dc=DistillConfig(steps=distill_steps),
                               n=n, resume=resume, progress=not quiet, keep_distilled=keep_distilled)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(json.dumps({"results": str(target / "results.json"), "quality_rows": result["quality_rows"],
                           "shipped": result["shipped"], "latency": result["latency"]}, indent=2))


# Search and report ---------------------------------------------------------------------------------


@main.command()
@click.option("--device", required=True, help="Device profile name (see `hwnas devices`).")
@click.option("--budget", required=True, help="End-to-end latency budget: 1.8s, 1800ms or 1.8 (seconds).")
@click.option("--experiment", "experiment", default=LATENCY_EXPERIMENT, show_default=True,
              help="Experiment whose LUT gives latency (the supernet gives quality on the same choices).")
@click.option("--checkpoint", type=click.Path(), help="Supernet checkpoint dir (default: the shipped proxy).")
@click.option("--steps", default=4, show_default=True, type=click.IntRange(min=1), help="Denoising steps.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "w8a16", "w4a16"]),
              help="Default: the device's default precision.")
@click.option("--resolution", type=click.IntRange(min=1), help="Image side in px (only what the experiment offers).")
@click.option("--sampler", type=click.Choice(["nsga2", "tpe", "gp", "random"]), default="nsga2", show_default=True)
@click.option("--trials", "n_trials", default=96, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--storage", help="Optuna storage URL (default: sqlite file study.db in the run directory).")
@click.option("--study", "study", help="Study name (default: from device, budget, steps, precision, sampler, seed).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Local worker processes.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="torch threads per worker.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run directory (default: reports/<device>-<budget>-<date>).")
@click.option("--reports", "reports", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print {run_dir, best} as JSON on stdout.")
@_profile_option
@_table_option
def search(device: str, budget: str, experiment: str, checkpoint: str | None, steps: int, precision: str | None,
           resolution: int | None, sampler: str, n_trials: int, seed: int, storage: str | None, study: str | None,
           workers: int, threads: int, out: str | None, reports: str, as_json: bool, profiles: str,
           tables: str) -> None:
    """Search sub-DiTs for a device under a latency budget (Optuna; proxy quality vs LUT latency)."""
    from rich.console import Console

    from hwnas.latency import MissingKernelError
    from hwnas.report import load_run, print_summary
    from hwnas.search import SearchSettings, parse_budget_ms, run_search

    try:
        settings = SearchSettings(device=device, budget_ms=parse_budget_ms(budget), experiment=experiment,
                                  checkpoint=checkpoint, steps=steps, precision=precision, resolution=resolution,
                                  sampler=sampler, n_trials=n_trials, seed=seed, storage=storage, study=study,  # type: ignore[arg-type]
                                  workers=workers, threads=threads, profile_dir=profiles, table_dir=tables)
        console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 120)
        result = run_search(settings, reports_dir=reports, out=out, console=console)
    except (ValueError, FileNotFoundError, MissingKernelError) as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"run_dir": result["run_dir"], "best": result["best"]}, indent=2))
    else:
        print_summary(load_run(result["run_dir"]), console)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """Rebuild report.html and its figures from the files of a search run directory."""
    from hwnas.report import build_report

    try:
        path = build_report(run_dir)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
