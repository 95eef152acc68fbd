"""Writing and hashing files: atomic writes with ordinary permissions, SHA-256 digests.

Every writer here writes a temporary file beside the target, flushes it to disk and moves it into
place with `os.replace`, so a reader sees the old file or the new one, never a part, and a killed
writer leaves the previous file intact. The temporary file is created with mode 0o644 less the
umask, as `open()` would create the target (`tempfile.mkstemp` would give 0o600), and its name
ends with the target's suffix, so writers that pick a format by extension (matplotlib, TVM's
`export_library`) write the right one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

FILE_MODE = 0o666
"""Mode of written files before the umask applies (what `open(path, "w")` gives)."""


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp)` to fill a temporary file beside `path`, then move it into place.

    For libraries that write to a path (`safetensors.torch.save_file`, `torch.save`, `savefig`).
    Creates missing parent directories; returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` as UTF-8, line endings as given."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any, *, sort_keys: bool = False) -> Path:
    """Write `data` as indented JSON with a final newline."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def atomic_write_csv(
    path: str | Path, rows: Sequence[Mapping[str, Any]], *, fieldnames: Sequence[str] | None = None
) -> Path:
    """Write `rows` under a header (`fieldnames`, default the first row's keys); `\\r\\n` line ends,
    as `csv.writer` writes them."""

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(fieldnames or rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def _new_temp(path: Path) -> Path:
    """Create an empty, new temporary file beside `path` (mode `FILE_MODE` less the umask)."""
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            return tmp
        except FileExistsError:
            continue
