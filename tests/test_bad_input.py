"""User mistakes across the CLI: each ends in exit code 2, exactly one line on stderr, no traceback,
and leaves every file that existed unchanged. In-process (CliRunner); `{tmp}` is a scratch folder
holding the files below, `{ckpt}` the shipped shapes-32 proxy (never the default checkpoint)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from hwnas.cli import main

ROOT = Path(__file__).resolve().parents[1]
CKPT = str(ROOT / "checkpoints" / "shapes-32")
SHAPES = str(ROOT / "experiments" / "shapes-32.toml")
HOST = ["search", "--device", "host", "--budget", "50s", "--experiment", SHAPES, "--checkpoint", CKPT, "--trials", "2"]

CASES: dict[str, list[str]] = {
    # space
    "space show without a sub-DiT": ["space", "show", "--experiment", SHAPES],
    "space show unknown preset": ["space", "show", "--experiment", SHAPES, "--preset", "huge"],
    "space show missing experiment": ["space", "show", "--experiment", "{tmp}/missing.toml", "--preset", "small"],
    "space show misspelt table": ["space", "show", "--experiment", "{tmp}/trian.toml", "--preset", "small"],
    "space show config with a missing stage": ["space", "show", "--experiment", SHAPES, "--config", "{tmp}/bad.json"],
    "space show config not JSON": ["space", "show", "--experiment", SHAPES, "--config", "{tmp}/notes.txt"],
    "space sample n 0": ["space", "sample", "--n", "0"],
    "space sample out is a file": ["space", "sample", "--out", "{tmp}/notes.txt"],
    "unknown command": ["serach"],
    "unknown option": ["space", "show", "--stpes", "4"],
    # sample / eval
    "sample to a .txt": ["sample", "--checkpoint", CKPT, "--prompt", "a red circle", "-o", "{tmp}/x.txt"],
    "sample without a prompt": ["sample", "--checkpoint", CKPT],
    "sample missing checkpoint": ["sample", "--checkpoint", "{tmp}/no-ckpt", "--prompt", "x"],
    "sample steps 0": ["sample", "--checkpoint", CKPT, "--prompt", "x", "--steps", "0"],
    "sample unknown config": ["sample", "--checkpoint", CKPT, "--prompt", "x", "--config", "{tmp}/none.json"],
    "sample into a file's folder": ["sample", "--checkpoint", CKPT, "--prompt", "x", "--steps", "1", "--n", "1",
                                    "-o", "{tmp}/notes.txt/grid.png"],
    "eval unknown metric": ["eval", "--checkpoint", CKPT, "--metric", "fid"],
    "eval n 1": ["eval", "--checkpoint", CKPT, "--n", "1"],
    "eval shift 0": ["eval", "--checkpoint", CKPT, "--shift", "0"],
    "sample shift negative": ["sample", "--checkpoint", CKPT, "--prompt", "x", "--shift", "-1"],
    "eval missing checkpoint": ["eval", "--checkpoint", "{tmp}/no-ckpt"],
    "eval config outside the space": ["eval", "--checkpoint", CKPT, "--config", "{tmp}/bad.json"],
    # search
    "search unknown device": ["search", "--device", "pixel9", "--budget", "1.8s"],
    "search device with a path": ["search", "--device", "../../x", "--budget", "1.8s"],
    "search ambiguous bare budget": ["search", "--device", "pixel8", "--budget", "1800"],
    "search negative budget": ["search", "--device", "pixel8", "--budget", "-1s"],
    "search budget in words": ["search", "--device", "pixel8", "--budget", "fast"],
    "search infeasible budget": ["search", "--device", "pixel8", "--budget", "1ms"],
    "search trials 0": ["search", "--device", "pixel8", "--budget", "1.8s", "--trials", "0"],
    "search confidence 1.5": ["search", "--device", "pixel8", "--budget", "1.8s", "--confidence", "1.5"],
    "search timeout 0": ["search", "--device", "pixel8", "--budget", "1.8s", "--timeout", "0"],
    "search force without out": ["search", "--device", "pixel8", "--budget", "1.8s", "--force"],
    "search missing experiment": ["search", "--device", "pixel8", "--budget", "1.8s", "--experiment",
                                  "{tmp}/missing.toml"],
    "search unknown sampler": ["search", "--device", "pixel8", "--budget", "1.8s", "--sampler", "cmaes"],
    "search unknown start": ["search", "--device", "pixel8", "--budget", "1.8s", "--start", "warm"],
    "search bad screen": ["search", "--device", "pixel8", "--budget", "1.8s", "--screen", "16x0"],
    "search unknown quality": ["search", "--device", "pixel8", "--budget", "1.8s", "--quality", "fid"],
    "search truncated study.db": [*HOST, "--out", "{tmp}/truncated-run"],
    "search storage of an unknown kind": [*HOST, "--storage", "nosuchdb://user:S3cret@host/db", "--out", "{tmp}/r1"],
    "search unreachable postgres": [*HOST, "--storage", "postgresql+psycopg2://user:S3cret@127.0.0.1:1/db",
                                    "--out", "{tmp}/r2"],
    "search storage under a file": [*HOST, "--storage", "sqlite:///{tmp}/notes.txt/study.db", "--out", "{tmp}/r3"],
    "search out under a file": [*HOST, "--out", "{tmp}/notes.txt/run"],
    "search out into another search": [*HOST, "--out", "{tmp}/other-run"],
    # report
    "report missing folder": ["report", "{tmp}/missing"],
    "report not a run": ["report", "{tmp}"],
    "report on a file": ["report", "{tmp}/notes.txt"],
    "report unreadable best.json": ["report", "{tmp}/broken-run"],
    # devices, predict, lut
    "devices show unknown": ["devices", "show", "pixel9"],
    "devices add with a path": ["devices", "add", "../x", "--target", '{"kind": "llvm"}', "--description", "x",
                                "--profiles", "{tmp}/profiles"],
    "predict unknown preset": ["predict", "--device", "pixel8", "--preset", "huge"],
    "predict unknown device": ["predict", "--device", "pixel9", "--preset", "small"],
    "predict steps 0": ["predict", "--device", "pixel8", "--preset", "small", "--steps", "0"],
    "predict preset and config": ["predict", "--device", "pixel8", "--preset", "small", "--config", "{tmp}/bad.json"],
    "lut build unknown device": ["lut", "build", "--device", "pixel9", "--estimate"],
    "lut build misspelt experiment": ["lut", "build", "--device", "pixel8", "--experiment", "{tmp}/trian.toml",
                                      "--estimate"],
    "lut build tables under a file": ["lut", "build", "--device", "pixel8", "--experiment", SHAPES, "--estimate",
                                      "--tables", "{tmp}/notes.txt/tables"],
    "lut build cache and no cache": ["lut", "build", "--device", "host", "--experiment", SHAPES, "--cache",
                                     "{tmp}/kernels", "--no-cache", "--tables", "{tmp}/tables"],
    "lut build cache under a file": ["lut", "build", "--device", "host", "--experiment", SHAPES, "--cache",
                                     "{tmp}/notes.txt/kernels", "--tables", "{tmp}/tables"],
    "lut build estimate with a cache": ["lut", "build", "--device", "pixel8", "--experiment", SHAPES, "--estimate",
                                        "--cache", "{tmp}/kernels", "--tables", "{tmp}/tables"],
    # export, quantize, compress
    "export into a file's folder": ["export", "--checkpoint", CKPT, "--config", "small", "--out", "{tmp}/notes.txt/m"],
    "export from a missing run": ["export", "--checkpoint", CKPT, "--run", "{tmp}/missing", "--out", "{tmp}/m"],
    "export pick out of range": ["export", "--checkpoint", CKPT, "--run", "{tmp}/broken-run", "--pick", "7",
                                 "--out", "{tmp}/m"],
    "export unknown format": ["export", "--checkpoint", CKPT, "--config", "small", "--out", "{tmp}/m",
                              "--format", "onnx,tflite"],
    "quantize unknown method": ["quantize", "--checkpoint", CKPT, "--method", "gptq"],
    "quantize group 0": ["quantize", "--checkpoint", CKPT, "--group", "0"],
    "compress from a missing run": ["compress", "--checkpoint", CKPT, "--run", "{tmp}/missing"],
    "compress a missing student": ["compress", "--checkpoint", CKPT, "--config", "small", "--student", "{tmp}/missing",
                                   "--out", "{tmp}/c"],
    "compress a student, distilling again": ["compress", "--checkpoint", CKPT, "--config", "small", "--student",
                                             "{tmp}/missing", "--mode", "dmd", "--out", "{tmp}/c"],
}


def _scratch(tmp: Path) -> None:
    (tmp / "notes.txt").write_text("not a folder\n")
    (tmp / "bad.json").write_text('{"down": {}}')
    (tmp / "trian.toml").write_text(Path(SHAPES).read_text() + "\n[trian]\nsteps = 3\n")
    (tmp / "truncated-run").mkdir()
    (tmp / "truncated-run" / "study.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 40)
    other = tmp / "other-run"
    other.mkdir()
    (other / "settings.json").write_text(json.dumps({"identity": {"identity_hash": "0123456789abcdef",
                                                                  "device": "pixel8"}}))
    (other / "trials.csv").write_text("trial\n0\n")
    broken = tmp / "broken-run"
    broken.mkdir()
    for name in ("settings.json", "trials.csv", "pareto.csv"):
        (broken / name).write_text("{}\n" if name.endswith(".json") else "trial\n")
    (broken / "best.json").write_text("{not json")
    (tmp / "profiles").mkdir()


def _hashes(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args", list(CASES.values()), ids=list(CASES))
def test_user_mistake_is_one_line_exit_2_and_changes_nothing(args: list[str], tmp_path: Path) -> None:
    _scratch(tmp_path)
    watched = (tmp_path, ROOT / "latency_tables", ROOT / "device_profiles", ROOT / "checkpoints" / "shapes-32")
    before = _hashes(*watched)
    result = CliRunner().invoke(main, [a.replace("{tmp}", str(tmp_path)) for a in args])
    err = result.stderr
    assert result.exit_code == 2, (result.exit_code, result.output[-2000:], repr(result.exception))
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error: "), err
    assert "Traceback" not in result.output and "S3cret" not in result.output
    after = _hashes(*watched)
    assert {k: v for k, v in after.items() if k in before} == before
