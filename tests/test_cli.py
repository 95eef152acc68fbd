from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from hwnas import __version__
from hwnas.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = str(ROOT / "experiments/snapgenpp-1024.toml")


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_help_and_version() -> None:
    code, out = _run("--help")
    assert code == 0 and "space" in out
    code, out = _run("--version")
    assert code == 0 and __version__ in out


def test_space_show_json_presets_and_file(tmp_path: Path) -> None:
    sizes = {}
    for preset in ("tiny", "small", "full"):
        code, out = _run("space", "show", "--experiment", DEPLOY, "--preset", preset, "--json")
        assert code == 0, out
        info = json.loads(out)
        assert info["params"] > 0 and info["flops_per_step"] > 0
        sizes[preset] = info["params"]
    assert sizes["tiny"] < sizes["small"] < sizes["full"]
    path = tmp_path / "small.json"
    path.write_text(json.dumps(info["config"]))
    code, out = _run("space", "show", "--experiment", DEPLOY, "--config", str(path), "--json")
    assert code == 0 and json.loads(out)["params"] == sizes["full"]


def test_space_show_user_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"down": {}}')
    for args in (
        ["space", "show", "--experiment", DEPLOY],  # neither preset nor config
        ["space", "show", "--experiment", DEPLOY, "--config", str(bad)],
        ["space", "show", "--experiment", str(tmp_path / "missing.toml"), "--preset", "small"],
    ):
        code, out = _run(*args)
        assert code == 2, (args, out)
        assert "Traceback" not in out


def test_space_sample_is_seeded(tmp_path: Path) -> None:
    code, first = _run("space", "sample", "--n", "3", "--seed", "4", "--out", str(tmp_path))
    assert code == 0
    _, second = _run("space", "sample", "--n", "3", "--seed", "4")
    assert first == second
    assert len(list(tmp_path.glob("*.json"))) == 3
