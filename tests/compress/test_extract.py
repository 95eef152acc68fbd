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
