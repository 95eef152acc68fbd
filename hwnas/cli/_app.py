"""The `hwnas` click group and the one rule for errors: a user mistake ends in one line on stderr
and exit code 2, never a traceback."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from hwnas import __version__
from hwnas.latency.predict import MissingKernelError
from hwnas.logs import quiet_native_chatter
from hwnas.paths import display_path

F = TypeVar("F", bound=Callable[..., Any])


class _OneLineErrors(click.Group):
    """The `hwnas` group: every user error (click's own, `UsageError`, an OSError such as a read-only
    directory) ends in exactly one line on stderr and exit code 2, never a traceback."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        """Run the command line; `standalone_mode` is ignored: this group always handles its errors."""
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.NoArgsIsHelpError as exc:  # `hwnas` or `hwnas lut` alone: the help
            click.echo(exc.format_message())
            sys.exit(0)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            click.echo(f"Error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:
            click.echo(f"Error: {one_line(os_error(exc))}", err=True)
            sys.exit(2)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
        return rv


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def os_error(exc: OSError) -> str:
    """An OSError in one line: `reports/x: Permission denied`."""
    where = display_path(exc.filename) if exc.filename else ""
    return f"{where}: {exc.strerror or exc}" if where else str(exc.strerror or exc)


def user_errors(command: F) -> F:
    """Report the library's refusals (ValueError, a missing file, a kernel missing from a table) as
    usage errors: one line, exit 2."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ValueError, FileNotFoundError, MissingKernelError) as exc:
            raise click.UsageError(os_error(exc) if isinstance(exc, OSError) and exc.filename else str(exc)) from None

    return run  # type: ignore[return-value]  # functools.wraps loses F's signature in the stubs


def _warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  line: str | None = None) -> str:
    """Warnings (e.g. a host table timed on another CPU) as one line, without the source location
    Python adds."""
    return f"warning: {message}\n"


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
      hwnas reference train                         fd_ref's reference classifier
      hwnas devices / predict / lut build|validate  device profiles and latency tables
      hwnas search / report / runs                  Optuna search, its report, the runs so far
      hwnas export / distill / quantize / compress  distillation, int4, export; close the loop
    """
    warnings.formatwarning = _warning_line
    quiet_native_chatter()
