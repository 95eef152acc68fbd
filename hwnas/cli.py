"""The `hwnas` command line: thin click commands over the library.

Each command parses its options, loads the experiment / profile into dataclasses, calls one
library function and prints or writes the result. User mistakes end in one line on stderr and
exit code 2 (`click.UsageError`), never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from hwnas import __version__
from hwnas.space import PRESET_WIDTHS, SearchSpace, SubnetConfig, load_config, load_space

DEFAULT_EXPERIMENT = "experiments/shapes-32.toml"
REPO_ROOT = Path(__file__).resolve().parents[1]


def _repo_path(path: str) -> Path:
    """`path` as given if it exists, else relative to the hwnas checkout (for the shipped files)."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    shipped = REPO_ROOT / given
    return shipped if shipped.exists() else given


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
    Start here:
      hwnas space show --preset small          sizes of a sub-DiT (params, FLOPs)
      hwnas space sample --n 3                 random sub-DiTs of the search space
    """


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
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / f"{cfg.id}.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        click.echo(cfg.to_json())


if __name__ == "__main__":
    main()
