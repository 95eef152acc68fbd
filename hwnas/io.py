"""Writing and hashing files: atomic writes with ordinary permissions, SHA-256 digests.

Every writer here writes a temporary file beside the target, flushes it to disk and moves it into
place with `os.replace`, so a reader sees the old file or the new one, never a part, and a killed
writer leaves the previous file intact. The temporary file is created with mode 0o644 less the
umask, as `open()` would create the target (`tempfile.mkstemp` would give 0o600), and its name
ends with the target's suffix, so writers that pick a format by extension (matplotlib, TVM's
`export_library`) write the right one. `atomic_directory` does the same for a folder of files.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import shutil
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


def atomic_directory(path: str | Path, fill: Callable[[Path], object]) -> Path:
    """Call `fill(tmp)` to fill a new temporary directory beside `path`, then move it into place.

    For artefacts that are folders (a Core ML `.mlpackage`, an export with its notes). If `fill`
    raises, the temporary directory is removed and an existing `path` is left as it was; otherwise
    an existing `path` is replaced (it is moved aside first, so a crash between the two renames
    leaves both, never a mix). Its files and folders get the permissions `open()` and `mkdir()` would
    give them (coremltools creates some with 0o600 / 0o700). Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _new_temp_dir(path), None
    try:
        fill(tmp)
        mask = os.umask(0)
        os.umask(mask)
        for item in sorted(tmp.rglob("*")):
            if item.is_dir():
                os.chmod(item, 0o777 & ~mask)
            elif item.is_file():
                os.chmod(item, FILE_MODE & ~mask)
                fd = os.open(item, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        old = _new_temp_dir(path) if path.exists() else None
        if old is not None:
            os.replace(path, old)  # onto the empty directory just made
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
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


def sha256_files(paths: Sequence[Path]) -> str:
    """Hex SHA-256 over several files, each as its name, a NUL and its bytes, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def checkpoint_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a checkpoint: its directory's `.safetensors` and `.json` files by name (given a
    file of it, its directory's, as loading takes them). What a search run records as
    `checkpoint_sha256`."""
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    files = folder.iterdir() if folder.is_dir() else ()
    return sha256_files(sorted(p for p in files if p.suffix in (".safetensors", ".json") and p.is_file()))


def sha256_file(path: str | Path, *, chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's contents, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def _new_temp_dir(path: Path) -> Path:
    """Create an empty, new directory beside `path` (mode 0o777 less the umask)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _new_temp(path: Path) -> Path:
    """Create an empty, new temporary file beside `path` (mode `FILE_MODE` less the umask)."""
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            return tmp
        except FileExistsError:
            continue
