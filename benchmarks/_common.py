"""What every benchmark script shares: its parser with `--json OUT` and `--seed`, the JSON write and
the summary line.

A benchmark prints a table, then one line starting `summary:` with ratios of things measured side by
side in the same run (these machines are shared and noisy: ratios hold where absolute times drift).
Only `--json OUT` makes it write its results, atomically (`hwnas.io.atomic_write_json`); without it
nothing under reports/ is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from hwnas.io import atomic_write_json
from hwnas.logs import quiet_native_chatter


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A bad flag: one line on stderr, exit code 2 (argparse's own adds the usage block)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose --help shows the script's docstring as written (what it measures, usage); a bad
    flag ends in one line and exit code 2. Also drops the import warnings about native code hwnas
    never calls (`hwnas.logs`)."""
    quiet_native_chatter()
    return _Parser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_json(ap: argparse.ArgumentParser, *, what: str = "the results") -> None:
    """`--json OUT` (dest `json_out`), no default: without it the results are only printed."""
    ap.add_argument("--json", dest="json_out", metavar="OUT", type=_json_path, default=None,
                    help=f"write {what} to OUT as JSON (default: print only, write nothing)")


def add_seed(ap: argparse.ArgumentParser, *, controls: str) -> None:
    """`--seed` (default 0); `controls` says what the seed draws, for --help."""
    ap.add_argument("--seed", type=int, default=0, help=f"seeds {controls} (default: %(default)s)")


def write_json(path: Path | None, data: Any) -> None:
    """Write `data` to `path` atomically (nothing when `path` is None); says so on stderr, so that the
    summary stays the last line on stdout."""
    if path is None:
        return
    atomic_write_json(path, data)
    print(f"wrote {path}", file=sys.stderr)


def print_summary(parts: Iterable[str]) -> None:
    """The last line of a benchmark: `summary: part; part; ...`."""
    print("summary: " + "; ".join(parts), flush=True)


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_ints(text: str) -> list[int]:
    """An argparse type: comma-separated integers >= 1 (`1,2,4`)."""
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers, e.g. 1,2,4") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
    return values


@contextlib.contextmanager
def user_input() -> Iterator[None]:
    """Around the loading of what the user named (experiment, device, checkpoint, run, config): a missing
    file or a refused value ends in one line on stderr and exit code 2, not a traceback."""
    try:
        yield
    except (OSError, ValueError) as exc:
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"{Path(sys.argv[0]).name}: error: {message or type(exc).__name__}", file=sys.stderr)
        raise SystemExit(2) from None


def _json_path(text: str) -> Path:
    """An output path that a JSON file can go to (checked before the run, not after an hour of it)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    if path.suffix != ".json":
        raise argparse.ArgumentTypeError(f"{text!r}: give a file name ending in .json")
    return path
