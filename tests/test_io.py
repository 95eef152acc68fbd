from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hwnas.io import (
    atomic_directory,
    atomic_write,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    sha256_bytes,
    sha256_file,
)


@pytest.fixture
def umask() -> Iterator[None]:
    """The caller's umask back after the test."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_files_get_ordinary_permissions(tmp_path: Path, umask: None, mask: int, mode: int) -> None:
    """0o644 less the umask, as `open()` would give, for every writer (not mkstemp's 0o600)."""
    os.umask(mask)
    paths = [atomic_write_text(tmp_path / "a.txt", "x"), atomic_write_bytes(tmp_path / "b.bin", b"x"),
             atomic_write_json(tmp_path / "c.json", {}), atomic_write_csv(tmp_path / "d.csv", [{"a": 1}]),
             atomic_write(tmp_path / "e.pt", lambda tmp: tmp.write_bytes(b"x"))]
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [mode] * len(paths)


def test_contents_round_trip(tmp_path: Path) -> None:
    data = {"b": [1, 2.5, None], "a": "ü"}
    assert json.loads(atomic_write_json(tmp_path / "x" / "d.json", data).read_text()) == data  # parent created
    assert atomic_write_json(tmp_path / "s.json", data, sort_keys=True).read_text().index('"a"') < 10
    assert atomic_write_text(tmp_path / "t.txt", "a\r\nb\n").read_bytes() == b"a\r\nb\n"
    rows = [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    with atomic_write_csv(tmp_path / "log.csv", rows).open(newline="") as fh:
        assert list(csv.DictReader(fh)) == [{"step": "1", "loss": "0.5"}, {"step": "2", "loss": "0.25"}]
    with atomic_write_csv(tmp_path / "cols.csv", rows, fieldnames=["loss", "step"]).open(newline="") as fh:
        assert next(csv.reader(fh)) == ["loss", "step"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "table.csv", "old\n")

    def half(tmp: Path) -> None:
        tmp.write_text("new, but not fin")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["table.csv"]


def test_temporary_keeps_the_suffix(tmp_path: Path) -> None:
    """Writers that choose a format by extension (savefig, export_library) see the target's."""
    seen: list[Path] = []
    atomic_write(tmp_path / "plot.png", lambda tmp: seen.append(tmp) or tmp.write_bytes(b"png"))
    assert seen[0].parent == tmp_path and seen[0].suffix == ".png" and seen[0].name.startswith(".plot.")


def test_sha256(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # several read chunks
    path = atomic_write_bytes(tmp_path / "w.bin", data)
    assert sha256_file(path) == sha256_bytes(data) == hashlib.sha256(data).hexdigest()


def test_atomic_directory_replaces_a_folder_whole(tmp_path: Path) -> None:
    def fill(files: dict[str, str]) -> Callable[[Path], None]:
        def write(tmp: Path) -> None:
            for name, text in files.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                (tmp / name).write_text(text)
        return write

    out = atomic_directory(tmp_path / "coreml", fill({"a.txt": "1", "pkg/b.bin": "2"}))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a.txt", "pkg", "pkg/b.bin"]
    atomic_directory(out, fill({"c.txt": "3"}))
    assert [p.name for p in out.iterdir()] == ["c.txt"] and os.listdir(tmp_path) == ["coreml"]


def test_a_failed_directory_keeps_the_old_one_and_leaves_no_temporary(tmp_path: Path) -> None:
    out = atomic_directory(tmp_path / "executorch", lambda tmp: (tmp / "model.pte").write_text("old"))

    def half(tmp: Path) -> None:
        (tmp / "model.pte").write_text("new, but not fin")
        raise RuntimeError("lowering failed")

    with pytest.raises(RuntimeError, match="lowering failed"):
        atomic_directory(out, half)
    assert (out / "model.pte").read_text() == "old" and os.listdir(tmp_path) == ["executorch"]
    with pytest.raises(RuntimeError):
        atomic_directory(tmp_path / "new", half)
    assert os.listdir(tmp_path) == ["executorch"]


def test_atomic_directory_gives_files_ordinary_permissions(tmp_path: Path, umask: None) -> None:
    def fill(tmp: Path) -> None:
        (tmp / "weights").mkdir(mode=0o700)  # as coremltools writes an .mlpackage
        (tmp / "weights" / "private.bin").write_bytes(b"x")
        (tmp / "weights" / "private.bin").chmod(0o600)

    out = atomic_directory(tmp_path / "pkg", fill)
    assert stat.S_IMODE((out / "weights").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "weights" / "private.bin").stat().st_mode) == 0o644
