"""Options and loaders shared by the `hwnas` commands. Choices and defaults come from the library
(`PRECISIONS`, `GUIDANCE`, `SAMPLERS`, the settings dataclasses), never from copies here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from hwnas.latency import GUIDANCE, PRECISIONS, DeviceProfile, load_profile
from hwnas.paths import repo_path
from hwnas.space import NAMED_CONFIGS, PRESET_WIDTHS, SearchSpace, SubnetConfig, load_space, resolve_config

if TYPE_CHECKING:
    from hwnas.train import Supernet

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_EXPERIMENT = "experiments/shapes-32.toml"
"""The proxy experiment the quality commands default to (that of the shipped supernet)."""
LATENT_EXPERIMENT = "experiments/shapes-latent.toml"
"""The latent proxy experiment: the default of the `vae` commands."""
LATENCY_EXPERIMENT = "experiments/snapgenpp-1024.toml"
"""Default experiment of the latency commands, and the space the paper's anchor point is solved on."""
PROFILE_DIR = "device_profiles"
TABLE_DIR = "latency_tables"
CONFIG_HELP = f"{'|'.join(NAMED_CONFIGS)}, the id of one of those, config JSON or a SubnetConfig JSON file."


def _decorate(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def experiment_option(default: str = DEFAULT_EXPERIMENT,
                      help: str = "Experiment TOML (its search space).") -> Callable[[F], F]:
    return click.option("--experiment", "experiment", default=default, show_default=True, help=help)


profile_option = click.option("--profiles", "profiles", default=PROFILE_DIR, show_default=True,
                              type=click.Path(file_okay=False), help="Directory of device profile TOML files.")
table_option = click.option("--tables", "tables", default=TABLE_DIR, show_default=True,
                            type=click.Path(file_okay=False),
                            help="Directory of latency tables (<device>/<experiment>.csv).")
device_option = click.option("--device", required=True, help="Device profile name (see `hwnas devices`).")
checkpoint_option = click.option("--checkpoint", type=click.Path(),
                                 help="Supernet checkpoint dir (default: the shipped proxy).")
steps_option = click.option("--steps", default=4, show_default=True, type=click.IntRange(min=1),
                            help="Denoising steps.")
precision_option = click.option("--precision", type=click.Choice(PRECISIONS),
                                help="Default: the device's default precision.")
guidance_option = click.option(
    "--guidance", type=click.Choice(GUIDANCE), default="distilled", show_default=True,
    help="cfg: two denoiser passes per step; distilled (guidance-distilled, e.g. K-DMD) or none: one.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
shift_option = click.option(
    "--shift", default=1.0, show_default=True, type=click.FloatRange(min=0.0, min_open=True),
    help="Sampler time shift t' = s t / (1 + (s - 1) t): s > 1 spends more steps near noise.")
preset_or_config_options = _decorate(
    click.option("--preset", type=click.Choice(sorted(PRESET_WIDTHS)), help="One of SnapGen++'s presets."),
    click.option("--config", "config", help=CONFIG_HELP))


def config_option(default: str | None = "small") -> Callable[[F], F]:
    return click.option("--config", "config", default=default, show_default=default is not None, help=CONFIG_HELP)


def confidence_option(help: str) -> Callable[[F], F]:
    return click.option("--confidence", default=0.9, show_default=True,
                        type=click.FloatRange(0, 1, min_open=True, max_open=True), help=help)


def load_experiment(path: str) -> SearchSpace:
    """The search space of an experiment TOML (shipped ones found from any working directory)."""
    return load_space(repo_path(path))


def one_config(space: SearchSpace, *, preset: str | None, config: str | None) -> SubnetConfig:
    """The sub-DiT of `--preset NAME` or `--config TEXT` (exactly one), checked against `space`."""
    if (preset is None) == (config is None):
        raise click.UsageError("give exactly one of --preset NAME or --config NAME|FILE.json")
    text = preset if preset is not None else config
    assert text is not None
    return resolve_config(space, text)


def load_device(name: str, profiles: str) -> DeviceProfile:
    return load_profile(name, profile_dir=repo_path(profiles))


def load_supernet(checkpoint: str | None, vae: str | None = None) -> Supernet:
    from hwnas.train import load_supernet as load

    return load(checkpoint, vae=vae)
