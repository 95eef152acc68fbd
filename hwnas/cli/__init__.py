"""The `hwnas` command line: thin click commands over the library, one module per pipeline stage.

Each command parses its options, loads the experiment / profile into dataclasses, calls one
library function and prints (text, or `--json`) what it returns. User mistakes end in one line on
stderr and exit code 2, never a traceback (`_app`). Shared options and defaults: `_options`.

    quality.py    space, train, vae, sample, eval
    latency.py    devices, predict, lut build|calibrate|validate
    search.py     search, report, runs
    compress.py   export, distill, quantize, compress
"""

from __future__ import annotations

from hwnas.cli import compress, latency, quality, search  # noqa: F401  (each registers its commands)
from hwnas.cli._app import main
from hwnas.cli._options import DEFAULT_EXPERIMENT, LATENCY_EXPERIMENT, LATENT_EXPERIMENT

__all__ = ["DEFAULT_EXPERIMENT", "LATENCY_EXPERIMENT", "LATENT_EXPERIMENT", "main"]
