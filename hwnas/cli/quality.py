"""`hwnas space`, `train`, `vae`, `sample`, `eval`: the search space and the proxy's quality."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hwnas.cli._app import main, user_errors
from hwnas.cli._options import (
    LATENT_EXPERIMENT,
    checkpoint_option,
    config_option,
    experiment_option,
    json_option,
    load_experiment,
    load_supernet,
    one_config,
    preset_or_config_options,
    shift_option,
)
from hwnas.io import atomic_write_json
from hwnas.space import resolve_config

if TYPE_CHECKING:  # torch modules: imported by the commands that need them
    from hwnas.data.shapes import Split
    from hwnas.metrics.evaluate import Metric
    from hwnas.train.flow import Solver

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".webp")
METRICS = ("compositional", "fd_ref", "val_loss")
"""`hwnas.metrics.evaluate.Metric`, spelled out: importing it imports torch (tests check the two agree)."""
PROMPT_SPLITS = ("heldout", "val", "train")
"""`hwnas.data.shapes.Split`, spelled out likewise."""
threads_option = click.option("--threads", type=click.IntRange(min=1),
                              help="torch CPU threads (default: torch's choice).")
torch_device_option = click.option("--device", "device", default="cpu", show_default=True,
                                   help="torch device, e.g. cuda.")


@main.group()
def space() -> None:
    """Inspect the search space of an experiment: presets, sizes, random members."""


@space.command("show")
@experiment_option()
@preset_or_config_options
@json_option
@user_errors
def space_show(experiment: str, preset: str | None, config: str | None, as_json: bool) -> None:
    """Parameters, FLOPs per denoising step and bytes of one sub-DiT (pure counts, no model)."""
    from hwnas.cost import summary

    sp = load_experiment(experiment)
    info: dict[str, Any] = summary(one_config(sp, preset=preset, config=config), sp)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"experiment      {sp.name}  ({experiment})\n"
               f"sub-DiT         {info['describe']}  id {info['config_id']}\n"
               f"params          {info['params'] / 1e6:,.2f} M\n"
               f"FLOPs / step    {info['flops_per_step'] / 1e9:,.2f} GFLOP  (1 image, no CFG; multiply-add = 2)\n"
               f"weights fp16    {info['weight_bytes_fp16'] / 2**20:,.1f} MiB\n"
               f"weights int4    {info['weight_bytes_int4'] / 2**20:,.1f} MiB  (no scales)\n"
               f"tokens          {info['tokens_outer']} (Down/Up), {info['tokens_middle']} (Middle)")


@space.command("sample")
@experiment_option()
@click.option("--n", "n", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--out", "out", type=click.Path(file_okay=False), help="Write each sample as <id>.json here.")
@user_errors
def space_sample(experiment: str, n: int, seed: int, out: str | None) -> None:
    """Uniform random sub-DiTs of the space, as JSON lines (or files with --out)."""
    sp, rng = load_experiment(experiment), random.Random(seed)
    for cfg in (sp.sample(rng) for _ in range(n)):
        if out:
            atomic_write_json(Path(out) / f"{cfg.id}.json", cfg.to_dict())
        click.echo(cfg.to_json())


@main.command()
@experiment_option()
@click.option("--steps", type=click.IntRange(min=1), help="Override [train] steps.")
@click.option("--batch-size", "batch_size", type=click.IntRange(min=1), help="Override [train] batch_size.")
@click.option("--out", "out", default="runs/train", show_default=True, type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True,
              help="Continue the run in --out where it stopped (a larger --steps extends it).")
@threads_option
@click.option("--standalone", "standalone", default=None,
              help="Train this one sub-DiT from scratch instead of the supernet (a --config value).")
@click.option("--vae", "vae", type=click.Path(file_okay=False),
              help="diffusers VAE folder (overrides the experiment's [vae] path).")
@click.option("--max-wall-s", "max_wall_s", type=click.FloatRange(min=1.0),
              help="Stop (with a checkpoint) after this many seconds of training in total; --resume continues.")
@click.option("--cache-dir", "cache_dir", type=click.Path(file_okay=False),
              help="Keep the encoded training set here, shared by runs of the same data and VAE.")
@click.option("--stop-at", "stop_at", type=click.IntRange(min=1),
              help="Stop (with a checkpoint) at this step of the --steps schedule; --resume continues.")
@click.option("--init-from", "init_from", type=click.Path(file_okay=False),
              help="Start from this supernet checkpoint's weights (same model; fresh optimizer and schedule).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train(experiment: str, steps: int | None, batch_size: int | None, out: str, resume: bool,
          threads: int | None, standalone: str | None, vae: str | None, max_wall_s: float | None,
          cache_dir: str | None, stop_at: int | None, init_from: str | None, quiet: bool) -> None:
    """Train the elastic supernet (flow matching; the largest + sampled sub-DiTs every step).

    Runs under torchrun too: `torchrun --nproc-per-node 2 -m hwnas.cli train ...`.
    """
    import torch

    from hwnas.paths import repo_path
    from hwnas.train import train as run_training

    if threads:
        torch.set_num_threads(threads)
    alone = resolve_config(load_experiment(experiment), standalone) if standalone is not None else None
    if not resume and (Path(out) / "train_state.pt").exists():
        raise click.UsageError(f"{out} already holds a run; pass --resume or choose another --out")
    summary = run_training(repo_path(experiment), out=out, steps=steps, resume=resume, progress=not quiet,
                           overrides={"batch_size": batch_size}, standalone=alone, vae=vae,
                           max_wall_s=max_wall_s, cache_dir=cache_dir, init_from=init_from,
                           stop_at=stop_at)
    click.echo(json.dumps(summary))


@main.group()
def vae() -> None:
    """The latent autoencoder of a latent experiment: train one here, or check a diffusers folder."""


@vae.command("train")
@experiment_option(LATENT_EXPERIMENT, "Its dataset, resolution, latent channels and downsampling set the "
                                      "autoencoder's shape.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="New VAE folder.")
@click.option("--steps", default=1500, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", "batch_size", default=32, show_default=True, type=click.IntRange(min=1))
@threads_option
@torch_device_option
@user_errors
def vae_train(experiment: str, out: str, steps: int, batch_size: int, threads: int | None, device: str) -> None:
    """Train a small diffusers AutoencoderKL on the experiment's data; print its reconstruction quality."""
    import torch

    from hwnas.model.vae import train_autoencoder_for

    sp = load_experiment(experiment)
    if threads:
        torch.set_num_threads(threads)
    summary = train_autoencoder_for(sp, out=out, steps=steps, batch_size=batch_size, device=device)
    click.echo(json.dumps({k: v for k, v in summary.items() if k != "log"}))


@vae.command("eval")
@click.argument("folder", type=click.Path(file_okay=False))
@experiment_option(LATENT_EXPERIMENT)
@click.option("--n", "n", default=200, show_default=True, type=click.IntRange(min=1))
@user_errors
def vae_eval(folder: str, experiment: str, n: int) -> None:
    """PSNR and the compositional checker's accuracy on reconstructions of validation images."""
    from hwnas.model.vae import evaluate_autoencoder, load_autoencoder

    sp = load_experiment(experiment)
    ae = load_autoencoder(folder, channels=sp.latent_channels, downsample=sp.latent_downsample)
    quality = evaluate_autoencoder(ae, dataset=sp.dataset, resolution=sp.resolution, n=n)
    click.echo(json.dumps({"vae": ae.describe(), **quality}))


@main.group()
def reference() -> None:
    """fd_ref's reference classifier: train one for a checkpoint (eval --metric fd_ref needs it)."""


@reference.command("train")
@experiment_option(LATENT_EXPERIMENT, "Its dataset and resolution (the pixel images the classifier sees).")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="The checkpoint folder; the classifier goes to OUT/fd_ref (replaced).")
@click.option("--steps", default=5000, show_default=True, type=click.IntRange(min=1))
@click.option("--size", default=60000, show_default=True, type=click.IntRange(min=128), help="Training images.")
@click.option("--seed", default=0, show_default=True, type=int)
@threads_option
@user_errors
def reference_train(experiment: str, out: str, steps: int, size: int, seed: int, threads: int | None) -> None:
    """Train the reference classifier on the experiment's data; print its exact match on 1000 val images
    (on shapes: which (colour, shape) pairs, how many objects and their relation; see hwnas/metrics/fd_ref.py)."""
    import torch

    from hwnas.metrics.fd_ref import train_reference

    sp = load_experiment(experiment)
    if threads:
        torch.set_num_threads(threads)
    summary = train_reference(sp.dataset, resolution=sp.resolution, out=out, steps=steps, size=size, seed=seed)
    click.echo(json.dumps({"out": out, "dataset": sp.dataset, "resolution": sp.resolution, **summary}))


@main.command()
@checkpoint_option
@config_option()
@click.option("--prompt", "prompts", multiple=True, required=True, help="Repeat for several prompts.")
@click.option("--n", "n", default=4, show_default=True, type=click.IntRange(min=1), help="Images per prompt.")
@click.option("--steps", default=28, show_default=True, type=click.IntRange(min=1))
@click.option("--cfg-scale", "cfg_scale", default=4.0, show_default=True, type=float)
@click.option("--solver", type=click.Choice(["euler", "heun"]), default="euler", show_default=True)
@shift_option
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("-o", "--output", "output", default="grid.png", show_default=True, type=click.Path(dir_okay=False))
@user_errors
def sample(checkpoint: str | None, config: str, prompts: tuple[str, ...], n: int, steps: int,
           cfg_scale: float, solver: Solver, shift: float, seed: int, output: str) -> None:
    """Generate an image grid from one sub-DiT of a trained supernet."""
    from hwnas.train import generate, save_grid

    if Path(output).suffix.lower() not in IMAGE_SUFFIXES:
        raise click.UsageError(f"-o {output}: an image file is written; end the name in one of "
                               f"{', '.join(IMAGE_SUFFIXES)}")
    net = load_supernet(checkpoint)
    cfg = resolve_config(net.space, config)
    batch = [p for p in prompts for _ in range(n)]
    images = generate(net, batch, cfg, steps=steps, cfg_scale=cfg_scale, solver=solver, seed=seed, shift=shift)
    save_grid(images, output, ncol=n, labels=batch)
    click.echo(f"wrote {output} ({len(batch)} images, sub-DiT {cfg.describe()}, {steps} {solver} steps, "
               f"CFG {cfg_scale}" + (f", time shift {shift})" if shift != 1.0 else ")"))


@main.command("eval")
@checkpoint_option
@config_option()
@click.option("--metric", type=click.Choice(METRICS), default="compositional", show_default=True)
@click.option("--steps", default=28, show_default=True, type=click.IntRange(min=1))
@click.option("--cfg-scale", "cfg_scale", default=4.0, show_default=True, type=float)
@shift_option
@click.option("--n", "n", default=200, show_default=True, type=click.IntRange(min=2))
@click.option("--split", type=click.Choice(PROMPT_SPLITS), default="heldout", show_default=True,
              help="prompt split of the compositional checker (train: has the model learned its prompts?)")
@click.option("--seed", default=0, show_default=True, type=int, help="seeds the noise and the prompts drawn")
@torch_device_option
@json_option
@user_errors
def eval_cmd(checkpoint: str | None, config: str, metric: Metric, steps: int, cfg_scale: float, shift: float,
             n: int, split: Split, seed: int, device: str, as_json: bool) -> None:
    """Quality of one sub-DiT: compositional accuracy, fd_ref or validation loss."""
    from hwnas.metrics.evaluate import evaluate

    net = load_supernet(checkpoint)
    try:
        net.to(device)
    except (RuntimeError, AssertionError) as exc:
        raise click.UsageError(f"--device {device}: {str(exc).splitlines()[0]}") from None
    result = evaluate(net, resolve_config(net.space, config), metric=metric, n=n, steps=steps,
                      cfg_scale=cfg_scale, seed=seed, checkpoint=checkpoint, split=split, shift=shift)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{metric} = {result['value']:.4f}  ({result['source']})")
    for cat, acc in result.get("per_category", {}).items():
        click.echo(f"  {cat:<14} {acc:.3f}")
    if "failures" in result:
        failed = ", ".join(f"{kind} {count}" for kind, count in result["failures"].items())
        read = result["shapes_read"]
        click.echo(f"  failed prompts by first unmet requirement: {failed}; shapes read in "
                   + ("no detected object" if read is None else f"{read:.0%} of detected objects"))
