"""The `hwnas` command line: thin click commands over the library.

Each command parses its options, loads the experiment / profile into dataclasses, calls one
library function and prints or writes the result. User mistakes end in one line on stderr and
exit code 2 (`click.UsageError`), never a traceback.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import click

from hwnas import __version__
from hwnas.io import atomic_write_json
from hwnas.paths import repo_path
from hwnas.space import PRESET_WIDTHS, SearchSpace, SubnetConfig, load_config, load_space

DEFAULT_EXPERIMENT = "experiments/shapes-32.toml"
LATENT_EXPERIMENT = "experiments/shapes-latent.toml"
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


class _OneLineErrors(click.Group):
    """The `hwnas` group: every user error (click's own, `UsageError`, an OSError such as a read-only
    directory) ends in exactly one line on stderr and exit code 2, never a traceback."""

    def main(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.pop("standalone_mode", None)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:  # `hwnas` or `hwnas lut` alone: the help
            click.echo(exc.format_message())
            sys.exit(0)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"Error: {_one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            click.echo(f"Error: {_one_line(_os_error(exc))}", err=True)
            sys.exit(2)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        return rv


def _one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
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
      hwnas vae train|eval                          the latent proxy's autoencoder
      hwnas devices / predict / lut build|validate  device profiles and latency tables
      hwnas search / report                         Optuna search and its report
      hwnas export / distill / quantize / compress  K-DMD, int4, ONNX; close the loop
    """
    warnings.formatwarning = _warning_line


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """Warnings (e.g. a host table timed on another CPU) as one line, without the source location
    Python adds."""
    return f"warning: {message}\n"


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


def _load_supernet(checkpoint: str | None, vae: str | None = None):  # -> hwnas.train.Supernet
    from hwnas.train import load_supernet

    try:
        return load_supernet(checkpoint, vae=vae)
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
@click.option("--standalone", "standalone", default=None,
              help="Train this one sub-DiT from scratch instead of the supernet "
                   "(tiny|small|full|largest|smallest or a SubnetConfig JSON file).")
@click.option("--vae", "vae", type=click.Path(file_okay=False),
              help="diffusers VAE folder (overrides the experiment's [vae] path).")
@click.option("--max-wall-s", "max_wall_s", type=click.FloatRange(min=1.0),
              help="Stop (with a checkpoint) after this many seconds of training in total; --resume continues.")
@click.option("--cache-dir", "cache_dir", type=click.Path(file_okay=False),
              help="Keep the encoded training set here, shared by runs of the same data and VAE.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(experiment: str, steps: int | None, batch_size: int | None, out: str, resume: bool,
          threads: int | None, standalone: str | None, vae: str | None, max_wall_s: float | None,
          cache_dir: str | None, quiet: bool) -> None:
    """Train the elastic supernet (flow matching; the largest + sampled sub-DiTs every step).

    Runs under torchrun too: `torchrun --nproc-per-node 2 -m hwnas.cli train ...`.
    """
    import torch

    from hwnas.train import train as run_training

    if threads:
        torch.set_num_threads(threads)
    path = _repo_path(experiment)
    sp = _load_space(experiment)
    alone = _config_by_name(sp, standalone) if standalone is not None else None
    if not resume and (Path(out) / "train_state.pt").exists():
        raise click.UsageError(f"{out} already holds a run; pass --resume or choose another --out")
    try:
        summary = run_training(path, out=out, steps=steps, resume=resume, progress=not quiet,
                               overrides={"batch_size": batch_size}, standalone=alone, vae=vae,
                               max_wall_s=max_wall_s, cache_dir=cache_dir)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(json.dumps(summary))


@main.group()
def vae() -> None:
    """The latent autoencoder of a latent experiment: train one here, or check a diffusers folder."""


@vae.command("train")
@click.option("--experiment", "experiment", default=LATENT_EXPERIMENT, show_default=True,
              help="Its dataset, resolution, latent channels and downsampling set the autoencoder's shape.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="New VAE folder.")
@click.option("--steps", default=1500, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", "batch_size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads (default: torch's choice).")
@click.option("--device", "device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
def vae_train(experiment: str, out: str, steps: int, batch_size: int, threads: int | None, device: str) -> None:
    """Train a small diffusers AutoencoderKL on the experiment's data; print its reconstruction quality."""
    import math

    import torch

    from hwnas.model.vae import train_autoencoder

    sp = _load_space(experiment)
    if sp.latent_downsample == 1:
        raise click.UsageError(f"{experiment}: a pixel-space experiment (latent_downsample 1) has no VAE")
    levels = int(math.log2(sp.latent_downsample)) + 1
    if 2 ** (levels - 1) != sp.latent_downsample:
        raise click.UsageError(f"{experiment}: latent_downsample must be a power of 2, got {sp.latent_downsample}")
    if Path(out).exists() and any(Path(out).iterdir()):
        raise click.UsageError(f"{out} is not empty; choose a new --out")
    if threads:
        torch.set_num_threads(threads)
    block_out = tuple(min(32 * 2**i, 128) for i in range(levels))
    summary = train_autoencoder(dataset=sp.dataset, resolution=sp.resolution, out=out,
                                channels=sp.latent_channels, block_out=block_out, steps=steps,
                                batch_size=batch_size, device=device)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "log"}))


@vae.command("eval")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--experiment", "experiment", default=LATENT_EXPERIMENT, show_default=True)
@click.option("--n", "n", default=200, show_default=True, type=click.IntRange(min=1))
def vae_eval(folder: str, experiment: str, n: int) -> None:
    """PSNR and the compositional checker's accuracy on reconstructions of validation images."""
    from hwnas.model.vae import evaluate_autoencoder, load_autoencoder

    sp = _load_space(experiment)
    try:
        ae = load_autoencoder(folder, channels=sp.latent_channels, downsample=sp.latent_downsample)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(json.dumps({"vae": ae.describe(), **evaluate_autoencoder(ae, dataset=sp.dataset,
                                                                          resolution=sp.resolution, n=n)}))


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

    if Path(output).suffix.lower() not in IMAGE_SUFFIXES:
        raise click.UsageError(f"-o {output}: an image file is written; end the name in one of "
                               f"{', '.join(IMAGE_SUFFIXES)}")
    net = _load_supernet(checkpoint)
    cfg = _config_by_name(net.space, config)
    batch = [p for p in prompts for _ in range(n)]
    images = generate(net, batch, cfg, steps=steps, cfg_scale=cfg_scale, solver=solver, seed=seed)  # type: ignore[arg-type]
    save_grid(images, output, ncol=n, labels=batch)
    click.echo(f"wrote {output} ({len(batch)} images, sub-DiT {cfg.describe()}, {steps} {solver} steps, "
               f"CFG {cfg_scale})")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".webp")


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
@click.option("--device", "device", default="cpu", show_default=True, help="torch device, e.g. cuda.")
@click.option("--json", "as_json", is_flag=True)
def eval_cmd(checkpoint: str | None, config: str, metric: str, steps: int, cfg_scale: float, n: int,
             seed: int, device: str, as_json: bool) -> None:
    """Quality of one sub-DiT: compositional accuracy, fd_ref or validation loss."""
    from hwnas.metrics.evaluate import evaluate

    net = _load_supernet(checkpoint)
    try:
        net.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise click.UsageError(f"--device {device}: {str(exc).splitlines()[0]}") from None
    cfg = _config_by_name(net.space, config)
    try:
        result = evaluate(net, cfg, metric=metric, n=n, steps=steps, cfg_scale=cfg_scale, seed=seed,  # type: ignore[arg-type]
                          checkpoint=checkpoint)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not math.isfinite(result["value"]):
        raise click.UsageError(f"{metric} of {cfg.describe()} is {result['value']} (not a number): the checkpoint "
                               f"or the sampling diverged; no result reported")
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
                        type=click.Path(file_okay=False),
                        help="Directory of latency tables (<device>/<experiment>.csv).")(f)


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
    kinds: dict[str, dict[str, str]] = {}
    heads: dict[str, str] = {}
    for name in names:
        try:
            p = load_profile(name, profile_dir=_repo_path(profiles))
            heads[name] = f"{name:18s} {p.kind:4s} {p.default_precision:6s} {p.description}"
        except ValueError as exc:
            p, heads[name] = None, f"{name:18s} invalid profile: {exc}"
        kinds[name] = table_kinds(name, table_dir=_repo_path(tables), profile=p)
    experiments = sorted({e for k in kinds.values() for e in k})
    for name in names:
        head = heads[name]
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
    click.echo(f"TVM target  {json.dumps(p.target)}"
               + ('  (mcpu "native": the CPU this runs on, as LLVM names it)' if p.native_cpu else ""))
    click.echo(f"RPC key     {p.rpc_key or '(local)'}")
    for prec, fig in p.peak_gflops.items():
        click.echo(f"peak {prec:6s} {fig.value:>9,.1f} GFLOP/s  {fig.source}")
    click.echo(f"bandwidth   {p.bandwidth_gbps.value:>9,.1f} GB/s     {p.bandwidth_gbps.source}")
    click.echo(f"text encoder {p.text_encoder.latency_ms.value:>8,.1f} ms  {p.text_encoder.latency_ms.source}")
    click.echo(f"VAE decoder {p.vae_decoder.latency_ms.value:>9,.1f} ms  at {p.vae_decoder.resolution} px: "
               f"{p.vae_decoder.latency_ms.source}")
    luts = table_kinds(p.name, table_dir=_repo_path(tables), profile=p)
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


def _prediction_json(pred, confidence: float) -> dict[str, object]:  # pred: hwnas.latency.LatencyPrediction
    iv, err = pred.interval(confidence), pred.error
    return {
        "latency_ms": round(pred.total_ms, 3), "step_ms": round(pred.step_ms, 3), "steps": pred.steps,
        "guidance": pred.guidance, "passes_per_step": pred.passes, "confidence": confidence,
        "step_ms_lo": round(iv.step_ms_lo, 3), "step_ms_hi": round(iv.step_ms_hi, 3),
        "latency_ms_lo": round(iv.latency_ms_lo, 3), "latency_ms_hi": round(iv.latency_ms_hi, 3),
        "interval": {"kind": err.kind, "n": err.n, "log_bias": err.log_bias, "log_sd": err.log_sd, "dof": err.dof,
                     "source": err.source},
        "breakdown": {
            "denoiser_ms": round(pred.denoiser_ms, 3),
            "denoiser_step_ms_by_kind": {k: round(v, 3) for k, v in pred.step_ms_by_kind.items()},
            "text_encoder_ms": round(pred.text_encoder_ms, 3), "vae_decoder_ms": round(pred.vae_decoder_ms, 3),
        },
        "source": pred.source_label, "provenance": pred.provenance, "corrected": pred.corrected,
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
@click.option("--guidance", type=click.Choice(["distilled", "cfg", "none"]), default="distilled", show_default=True,
              help="cfg: two denoiser passes per step; distilled (guidance-distilled, e.g. K-DMD) or none: one.")
@click.option("--confidence", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Central interval reported around the prediction.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_profile_option
@_table_option
def predict(device: str, experiment: str, preset: str | None, config: str | None, steps: int,
            precision: str | None, correct: bool, guidance: str, confidence: float, as_json: bool, profiles: str,
            tables: str) -> None:
    """End-to-end latency of one image of a sub-DiT on a device, from the device's LUT, with an interval."""
    from hwnas.latency import MissingKernelError, load_table, predict_latency_ms

    prof = _load_profile(device, profiles)
    sp = _load_space(experiment)
    cfg = _resolve_config(sp, preset=preset, config=config)
    try:
        table = load_table(prof, sp.name, table_dir=_repo_path(tables))
        pred = predict_latency_ms(cfg, table, steps=steps, precision=precision or prof.default_precision,  # type: ignore[arg-type]
                                  space=sp, correct=correct, guidance=guidance)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError, MissingKernelError) as exc:
        raise click.UsageError(str(exc)) from None
    if as_json:
        click.echo(json.dumps(_prediction_json(pred, confidence), indent=2))
        return
    iv = pred.interval(confidence)
    click.echo(f"device       {pred.device}  ({prof.description})")
    click.echo(f"sub-DiT      {cfg.describe()}  id {pred.config_id}, {pred.precision}, {pred.steps} steps")
    click.echo(f"latency      {pred.total_ms:,.1f} ms  ({pred.source_label}); {confidence:.0%} interval "
               f"{iv.latency_ms_lo:,.1f}..{iv.latency_ms_hi:,.1f} ms")
    click.echo(f"  denoiser   {pred.steps} x {pred.passes} x {pred.step_ms:,.1f} ms = {pred.denoiser_ms:,.1f} ms"
               f"  (guidance {pred.guidance})" + ("  (corrected)" if pred.corrected else ""))
    click.echo(f"  text enc   {pred.text_encoder_ms:,.1f} ms")
    click.echo(f"  VAE dec    {pred.vae_decoder_ms:,.1f} ms")
    for kind, ms in pred.step_ms_by_kind.items():
        click.echo(f"    {kind:12s} {ms:>10,.2f} ms/step")
    click.echo(f"source       {pred.provenance}")
    click.echo(f"interval     {pred.error.describe(confidence)}")


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
@click.option("--prior-from", "prior_from",
              help="Estimates: take this device's calibrated per-kind parameters as the priors "
                   "(an assumption: alike hardware).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(min=1),
              help="Measured builds: compile processes (locally, timing runs alone between waves of compiles).")
@click.option("--cache", "cache", type=click.Path(file_okay=False),
              help="Measured builds: folder of compiled kernels, reused by later builds [default: "
                   "$XDG_CACHE_HOME/hwnas/kernels, else ~/.cache/hwnas/kernels]; delete it to clear it.")
@click.option("--no-cache", "no_cache", is_flag=True, help="Measured builds: compile into a temporary folder.")
@_profile_option
@_table_option
def lut_build(device: str, experiment: str, estimate: bool, tracker: str | None, rpc_key: str | None,
              precisions: tuple[str, ...], prior_from: str | None, jobs: int, cache: str | None, no_cache: bool,
              profiles: str, tables: str) -> None:
    """Build the LUT of a device for an experiment: every kernel of its search space."""
    from hwnas.latency import (
        borrow_params,
        build_estimated_table,
        load_table,
        params_from_meta,
        prior_params,
        write_table,
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
        from hwnas.latency.kernel_cache import DEFAULT_KERNEL_CACHE

        if precisions and set(precisions) != {"fp32"}:
            raise click.UsageError(f"measured builds time fp32 kernels only, got --precision {list(precisions)}")
        if cache and no_cache:
            raise click.UsageError("--cache and --no-cache exclude each other")
        try:
            rep = build_measured_table(prof, sp, experiment_path=experiment, table_dir=_repo_path(tables),
                                       tracker=tracker, rpc_key=rpc_key, jobs=jobs,
                                       cache=None if no_cache else cache or DEFAULT_KERNEL_CACHE)
        except (TrackerError, DeviceDroppedError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None
        if rep.note:
            click.echo(rep.note)
        click.echo(f"wrote {rep.paths[0]} ({len(rep.table.entries)} kernels; measured {rep.measured} now, kept "
                   f"{rep.kept}; compiled {rep.compiled}, {rep.cached} from the kernel cache) in {rep.wall_s:.0f} s "
                   f"({rep.compile_s:.0f} s compiling, {rep.timing_s:.0f} s timing)")
        return
    if cache or no_cache:
        raise click.UsageError("--cache/--no-cache are for measured builds; an --estimate build compiles nothing")
    if tracker is not None or rpc_key is not None:
        raise click.UsageError("--tracker/--key are for measured builds; an --estimate build needs no device")
    bad = [p for p in precisions if p not in prof.peak_gflops]
    if bad:
        raise click.UsageError(f"device {prof.name!r} has no peak for precision {bad[0]!r} "
                               f"(it has {list(prof.precisions)})")
    try:
        params = prior_params(prof)
        if prior_from:
            donor = load_table(_load_profile(prior_from, profiles), sp.name, table_dir=_repo_path(tables))
            if donor.meta.source != "estimated":
                raise click.UsageError(f"the {prior_from}/{sp.name} table is {donor.meta.source}; --prior-from needs "
                                       "an estimated (ideally calibrated) table")
            params = borrow_params(prof, params_from_meta(donor.meta), donor_name=prior_from)
        table = build_estimated_table(prof, sp, params, experiment_path=experiment,
                                      precisions=tuple(precisions) or None)  # type: ignore[arg-type]
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    csv_path, meta_path = write_table(table, table_dir=_repo_path(tables))
    click.echo(f"wrote {csv_path} ({len(table.entries)} kernels, {', '.join(table.meta.precisions)}; estimated)")
    click.echo(f"      {meta_path}")
    click.echo(f"calibration: {table.meta.calibration}")


@lut.command("calibrate")
@click.option("--device", required=True, help="Device profile name (see `hwnas devices`).")
@click.option("--experiment", "experiment", default=LATENCY_EXPERIMENT, show_default=True)
@click.option("--measurements", required=True, type=click.Path(dir_okay=False),
              help="CSV: config, ms, per (step|image), optional steps, precision, runtime, note.")
@_profile_option
@_table_option
def lut_calibrate(device: str, experiment: str, measurements: str, profiles: str, tables: str) -> None:
    """Fit a device's per-op-kind cost parameters to measured sub-DiTs; rewrite its estimated table."""
    from hwnas.latency import calibrated_table, write_table

    prof = _load_profile(device, profiles)
    sp = _load_space(experiment)
    try:
        table, fit = calibrated_table(prof, sp, measurements, experiment_path=experiment)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    csv_path, _ = write_table(table, table_dir=_repo_path(tables))
    for r in fit.rows:
        click.echo(f"line {r['line']:>3}  {r['describe']:<44s} measured {r['measured_step_ms']:>10,.2f}  prior "
                   f"{r['prior_step_ms']:>10,.2f}  fitted {r['fitted_step_ms']:>10,.2f} ms/step  "
                   f"({r['residual_pct']:+.1f}%; left out {r['loo_residual_pct']:+.1f}%)")
    k = len(fit.rows)
    click.echo(f"leave-one-out error: MAPE {fit.loo_mape_pct:.1f}%, max {fit.loo_max_pct:.1f}% over {k} measurement"
               f"{'s' if k != 1 else ''}" + (" (with one row: the uncalibrated prior's error)" if k == 1 else ""))
    if fit.note:
        click.echo(f"note: {fit.note}")
    click.echo(f"interval: {table.error_model.describe(0.9)}")
    click.echo(f"wrote {csv_path} ({len(table.entries)} kernels): {table.meta.calibration}")


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
@click.option("--write-interval", "write_interval", is_flag=True,
              help="Store the held-out error in the table's sidecar: predictions then carry intervals from it.")
@click.option("--from-report", "from_report", type=click.Path(exists=True, dir_okay=False),
              help="Reuse this earlier `--json` report instead of timing again (with --write-interval).")
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON report.")
@_profile_option
@_table_option
def lut_validate(device: str, experiment: str, n: int, n_calibration: int, seed: int, noise_repeats: int,
                 cache: str | None, jobs: int, write_correction: bool, write_interval: bool, from_report: str | None,
                 as_json: bool, profiles: str, tables: str) -> None:
    """Predicted vs measured whole-step latency of held-out random sub-DiTs (compiled with TVM)."""
    from hwnas.latency import MissingKernelError, load_table
    from hwnas.latency import validate as val

    prof = _load_profile(device, profiles)
    sp = _load_space(experiment)
    if not prof.local:
        raise click.UsageError(f"device {prof.name!r} is not this machine; validation runs locally")
    try:
        table = load_table(prof, sp.name, table_dir=_repo_path(tables))
        if from_report:
            report = json.loads(Path(from_report).read_text())
            if (report.get("device"), report.get("experiment")) != (prof.name, sp.name):
                raise ValueError(f"{from_report} validates {report.get('device')}/{report.get('experiment')}, "
                                 f"not {prof.name}/{sp.name}")
        else:
            report = val.validate_table(table, sp, prof, n=n, seed=seed, n_calibration=n_calibration,
                                        noise_repeats=noise_repeats, cache=cache, jobs=jobs)
        pred_ms, meas_ms = [r["predicted_ms"] for r in report["rows"]], [r["measured_ms"] for r in report["rows"]]
        report["interval_90"] = val.interval_check(pred_ms, meas_ms, confidence=0.9, budget_ms=report["budget_ms"])
    except (FileNotFoundError, ValueError, KeyError, MissingKernelError) as exc:
        raise click.UsageError(str(exc)) from None
    if write_interval:
        val.write_error(table, rows=report["rows"], table_dir=_repo_path(tables),
                        source=f"hwnas lut validate --seed {report['seed']} on {len(report['rows'])} "
                               f"held-out sub-DiTs ({report.get('host_cpu')}, TVM {report.get('tvm_version')})")
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
    iv = report["interval_90"]
    click.echo(f"90% intervals  coverage {iv['coverage']:.0%}; at the one-sided 90% bound, false-feasible "
               f"{iv['false_feasible_rate']:.0%} of {iv['predicted_feasible']} at {iv['budget_ms']:.2f} ms "
               f"({iv['folds']}-fold cross-fitted)")
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
    return click.option("--checkpoint", type=click.Path(),
                        help="Supernet checkpoint dir (default: the shipped proxy).")(f)


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
@click.option("--budget", required=True,
              help="End-to-end latency budget: 1.8s, 1800ms, or a bare number of seconds up to 60 (1.8).")
@click.option("--experiment", "experiment", default=LATENCY_EXPERIMENT, show_default=True,
              help="Experiment whose LUT gives latency (the supernet gives quality on the same choices).")
@click.option("--checkpoint", type=click.Path(), help="Supernet checkpoint dir (default: the shipped proxy).")
@click.option("--steps", default=4, show_default=True, type=click.IntRange(min=1), help="Denoising steps.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "w8a16", "w4a16"]),
              help="Default: the device's default precision.")
@click.option("--resolution", type=click.IntRange(min=1), help="Image side in px (only what the experiment offers).")
@click.option("--confidence", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Feasible = the latency's one-sided upper bound at this confidence is within the budget.")
@click.option("--guidance", type=click.Choice(["distilled", "cfg", "none"]), default="distilled", show_default=True,
              help="cfg: two denoiser passes per step; distilled (guidance-distilled, e.g. K-DMD) or none: one.")
@click.option("--sampler", type=click.Choice(["nsga2", "tpe", "gp", "random"]), default="nsga2", show_default=True)
@click.option("--trials", "n_trials", default=96, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--storage", help="Optuna storage URL (default: sqlite file study.db in the run directory).")
@click.option("--study", "study", help="Study name (default: from device, budget, steps, precision, sampler, seed).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1), help="Local worker processes.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="torch threads per worker.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(0, min_open=True),
              help="Seconds: stop asking for new trials after this long; rerun the command to continue.")
@click.option("--out", "out", type=click.Path(file_okay=False),
              help="Run directory (default: the run of the same search under --reports, "
                   "or reports/<device>-<budget>-<date>).")
@click.option("--force", is_flag=True, help="With --out: replace the run of another search there.")
@click.option("--reports", "reports", default="reports", show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print {run_dir, best} as JSON on stdout.")
@_profile_option
@_table_option
def search(device: str, budget: str, experiment: str, checkpoint: str | None, steps: int, precision: str | None,
           resolution: int | None, confidence: float, guidance: str, sampler: str, n_trials: int, seed: int,
           storage: str | None, study: str | None,
           workers: int, threads: int, timeout_s: float | None, out: str | None, force: bool, reports: str,
           as_json: bool, profiles: str, tables: str) -> None:
    """Search sub-DiTs for a device under a latency budget (Optuna; proxy quality vs LUT latency).

    Rerunning the same command resumes the run (a larger --trials extends it). Ctrl-C writes the
    partial results, prints the command that resumes and exits 130.
    """
    from rich.console import Console

    from hwnas.latency import MissingKernelError
    from hwnas.report import load_run, print_summary
    from hwnas.search import SearchSettings, parse_budget_ms, run_search
    from hwnas.search.run import SearchInterrupted

    if force and out is None:
        raise click.UsageError("--force replaces the run in --out; give --out DIR")
    try:
        settings = SearchSettings(device=device, budget_ms=parse_budget_ms(budget), experiment=experiment,
                                  checkpoint=checkpoint, steps=steps, precision=precision, resolution=resolution,
                                  confidence=confidence, guidance=guidance, sampler=sampler,  # type: ignore[arg-type]
                                  n_trials=n_trials, seed=seed, storage=storage, study=study,
                                  workers=workers, threads=threads, timeout_s=timeout_s, profile_dir=profiles,
                                  table_dir=tables)
        console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 120)
        result = run_search(settings, reports_dir=reports, out=out, console=console, force=force)
    except (ValueError, FileNotFoundError, MissingKernelError) as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.UsageError(_os_error(exc)) from None
    except (SearchInterrupted, KeyboardInterrupt) as exc:
        run_dir = exc.run_dir if isinstance(exc, SearchInterrupted) else None
        what = str(exc) if isinstance(exc, SearchInterrupted) else "interrupted"
        click.echo(f"{what}; resume with: {_resume_command(click.get_current_context(), run_dir)}", err=True)
        sys.exit(130)
    if result["timed_out"]:
        click.echo(f"stopped after --timeout {timeout_s:g} s with {result['cost']['trials']}/{n_trials} trials; "
                   f"rerun the command to continue", err=True)
    if result["failed"]:
        click.echo(f"{len(result['failed'])} trial(s) failed; the first: {result['failed'][0]}", err=True)
    if as_json:
        click.echo(json.dumps({"run_dir": result["run_dir"], "best": result["best"]}, indent=2))
    else:
        print_summary(load_run(result["run_dir"]), console)


def _os_error(exc: OSError) -> str:
    """An OSError in one line: `reports/x: Permission denied`."""
    from hwnas.paths import display_path

    where = display_path(exc.filename) if exc.filename else ""
    return f"{where}: {exc.strerror or exc}" if where else str(exc.strerror or exc)


def _resume_command(ctx: click.Context, run_dir: Path | None) -> str:
    """The command line that resumes this search: its non-default options, `--out RUN_DIR`, the
    storage URL without its password."""
    import shlex

    from hwnas.paths import display_path, redact_url

    parts = ["hwnas", ctx.info_name or "search"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if not isinstance(param, click.Option) or value is None or value == param.default or value is False:
            continue
        if param.name == "out" or param.name == "force":
            continue
        parts += [param.opts[0]] if param.is_flag else [param.opts[0], redact_url(str(value)) if param.name == "storage"
                                                       else str(value)]
    out = run_dir if run_dir is not None else ctx.params.get("out")
    if out is not None:
        parts += ["--out", display_path(out)]
    return shlex.join(parts)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """Rebuild report.html and its figures from the files of a search run directory."""
    from hwnas.report import build_report

    try:
        path = build_report(run_dir)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        raise click.UsageError(_os_error(exc)) from None
    click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
