from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hwnas.cli import main
from hwnas.compress import load_subdit, resolve_pick
from hwnas.model import example_inputs
from hwnas.train import Supernet


def _fake_run(run: Path, net: Supernet) -> list:
    picks = [net.space.smallest(), net.space.largest(), net.space.preset("small")]
    run.mkdir()
    with (run / "pareto.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["config_id", "latency_ms", "config_json"])
        writer.writeheader()
        for cfg in picks:
            writer.writerow({"config_id": cfg.id, "latency_ms": 1.0, "config_json": cfg.to_json()})
    (run / "best.json").write_text(json.dumps({"config": picks[2].to_dict(), "config_id": picks[2].id,
                                               "latency_ms": 1.0, "device": "host", "experiment": "tiny-16",
                                               "steps": 4, "precision": "fp32"}))
    return picks


def test_resolve_pick(tiny_net: Supernet, tmp_path: Path) -> None:
    picks = _fake_run(tmp_path / "run", tiny_net)
    assert resolve_pick(tmp_path / "run", "best") == picks[2]
    assert [resolve_pick(tmp_path / "run", i) for i in range(3)] == picks
    with pytest.raises(ValueError, match="0..2"):
        resolve_pick(tmp_path / "run", 3)
    with pytest.raises(ValueError, match="not found"):
        resolve_pick(tmp_path / "nothing", "best")


def test_export_from_a_run_dir(tiny_checkpoint: Path, tiny_net: Supernet, tmp_path: Path) -> None:
    picks = _fake_run(tmp_path / "run", tiny_net)
    out = tmp_path / "sub"
    res = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "--run", str(tmp_path / "run"),
                                    "--pick", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["config_id"] == picks[1].id
    sub = load_subdit(out)
    assert sub.cfg == picks[1]
    from hwnas.train import load_supernet

    net = load_supernet(tiny_checkpoint)
    x, t, text, mask = example_inputs(net.space, batch=2)
    with torch.no_grad():
        assert torch.allclose(sub.dit(x, t, text, mask), net.dit(x, t, text, mask, picks[1]), atol=1e-5)
        assert torch.equal(sub.encode(["a red circle"])[0], net.encode(["a red circle"])[0])
    bad = CliRunner().invoke(main, ["export", "--checkpoint", str(tiny_checkpoint), "--run", str(tmp_path / "run"),
                                    "--pick", "9", "--out", str(out)])
    assert bad.exit_code == 2 and "0..2" in bad.output


def test_a_run_brings_its_own_checkpoint_and_refuses_another(tiny_checkpoint: Path, tiny_net: Supernet,
                                                             tmp_path: Path) -> None:
    from hwnas.io import checkpoint_sha256

    picks = _fake_run(tmp_path / "run", tiny_net)
    (tmp_path / "run" / "settings.json").write_text(json.dumps({
        "checkpoint": str(tiny_checkpoint), "identity": {"checkpoint_sha256": checkpoint_sha256(tiny_checkpoint)}}))
    out = tmp_path / "sub"
    res = CliRunner().invoke(main, ["export", "--run", str(tmp_path / "run"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert load_subdit(out).cfg == picks[2] and str(tiny_checkpoint) in load_subdit(out).meta["source"]

    other = tmp_path / "other"
    other.mkdir()
    for f in tiny_checkpoint.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    (other / "supernet.json").write_text((other / "supernet.json").read_text() + "\n")
    for command in (["export", "--out", str(tmp_path / "o")], ["distill", "--out", str(tmp_path / "d")],
                    ["compress", "--out", str(tmp_path / "c")]):
        bad = CliRunner().invoke(main, [*command, "--checkpoint", str(other), "--run", str(tmp_path / "run")])
        assert bad.exit_code == 2, bad.output
        assert f"searched with checkpoint {tiny_checkpoint}" in bad.stderr and "drop --checkpoint" in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / name).exists() for name in ("o", "d", "c"))


def _copy_checkpoint(src: Path, dst: Path, *, changed: bool = False) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    if changed:
        (dst / "supernet.json").write_text((dst / "supernet.json").read_text() + "\n")
    return dst


@pytest.mark.parametrize(("settings", "given", "want"), [
    (None, None, None),  # no settings.json: resolve_pick says what is missing
    (None, "OTHER", "OTHER"),
    ({}, "OTHER", "OTHER"),  # a run that records no checkpoint
    ({"checkpoint": None, "identity": None}, None, None),
    ({"checkpoint": "CKPT", "identity": None}, None, "CKPT"),  # no hash recorded: nothing to check
    ({"checkpoint": "CKPT", "identity": {"checkpoint_sha256": "SHA"}}, None, "CKPT"),
    ({"checkpoint": "CKPT", "identity": {"checkpoint_sha256": "SHA"}}, "COPY", "COPY"),  # same content
    ({"checkpoint": "CKPT", "identity": {"checkpoint_sha256": "SHA"}}, "CKPT/supernet.safetensors",
     "CKPT/supernet.safetensors"),  # a file of it
    ({"checkpoint": "CKPT", "identity": {"checkpoint_sha256": "SHA"}}, "OTHER", "drop --checkpoint"),
    ({"checkpoint": "OTHER", "identity": {"checkpoint_sha256": "SHA"}}, None, "has changed since"),
    ({"checkpoint": "GONE", "identity": {"checkpoint_sha256": "SHA"}}, None, "is not here"),
    ({"checkpoint": "CKPT", "identity": {"checkpoint_sha256": "SHA"}}, "GONE", "GONE"),  # load_supernet refuses it
    ("not json", None, "not valid JSON"),
    ([1, 2], None, "not a JSON object"),
])
def test_run_checkpoint(tiny_checkpoint: Path, tmp_path: Path, settings: object, given: str | None,
                        want: str | None) -> None:
    from hwnas.compress import run_checkpoint
    from hwnas.io import checkpoint_sha256

    names = {"CKPT": str(tiny_checkpoint), "SHA": checkpoint_sha256(tiny_checkpoint), "GONE": str(tmp_path / "gone"),
             "COPY": str(_copy_checkpoint(tiny_checkpoint, tmp_path / "copy")),
             "OTHER": str(_copy_checkpoint(tiny_checkpoint, tmp_path / "other", changed=True))}

    def fill(value: object) -> object:
        if isinstance(value, str):
            return next((value.replace(k, v) for k, v in names.items() if value.startswith(k)), value)
        return {k: fill(v) for k, v in value.items()} if isinstance(value, dict) else value

    run = tmp_path / "run"
    run.mkdir()
    if settings is not None:
        (run / "settings.json").write_text(settings if isinstance(settings, str) else json.dumps(fill(settings)))
    given_path = fill(given)
    assert given_path is None or isinstance(given_path, str)
    if want is not None and " " in want:
        with pytest.raises(ValueError, match=want):
            run_checkpoint(run, given_path)
    else:
        assert run_checkpoint(run, given_path) == fill(want)


def test_a_recorded_relative_checkpoint_is_the_checkouts_from_any_directory(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from hwnas.compress import run_checkpoint
    from hwnas.io import checkpoint_sha256
    from hwnas.paths import REPO_ROOT

    shipped = REPO_ROOT / "checkpoints" / "shapes-32"
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "settings.json").write_text(json.dumps({
        "checkpoint": "checkpoints/shapes-32", "identity": {"checkpoint_sha256": checkpoint_sha256(shipped)}}))
    decoy = tmp_path / "checkpoints" / "shapes-32"  # what the name means from here, with other content
    decoy.parent.mkdir()
    _copy_checkpoint(shipped, decoy, changed=True)
    monkeypatch.chdir(tmp_path)
    assert run_checkpoint("run", None) == str(shipped)
    monkeypatch.chdir(REPO_ROOT)
    assert run_checkpoint(tmp_path / "run", None) == "checkpoints/shapes-32"
