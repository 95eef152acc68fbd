from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hwnas.metrics.val_loss import make_val_set, val_loss
from hwnas.train import generate, load_supernet, train
from hwnas.train.checkpoint import TRAIN_STATE, WEIGHTS


def test_training_reduces_validation_loss(tiny_experiment: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_experiment, out=out, steps=1, progress=False, overrides={"ema_decay": 0.0})
    net = load_supernet(out)
    val = make_val_set(net, n=32, seed=1)
    cfg = net.space.largest()
    before = val_loss(net, cfg, val)
    out2 = tmp_path / "run2"
    train(tiny_experiment, out=out2, steps=60, progress=False,
          overrides={"ema_decay": 0.0, "checkpoint_every": 60})
    after = val_loss(load_supernet(out2), cfg, make_val_set(load_supernet(out2), n=32, seed=1))
    assert after < 0.8 * before, (before, after)


def test_resume_with_other_settings_is_refused(tiny_experiment: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_experiment, out=out, steps=2, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        train(tiny_experiment, out=out, steps=2, resume=True, progress=False, overrides={"lr": 1e-4})
    with pytest.raises(ValueError, match="shorten"):
        train(tiny_experiment, out=out, steps=1, resume=True, progress=False)


def test_resume_with_more_steps_extends_the_run(tiny_experiment: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_experiment, out=out, steps=2, progress=False)
    summary = train(tiny_experiment, out=out, steps=4, resume=True, progress=False)
    assert summary["steps"] == 4
    meta = json.loads((out / "supernet.json").read_text())
    assert meta["step"] == 4 and meta["schedule"] == [2, 4]
    assert meta["command"].endswith("--steps 4 --out " + str(out) + " --resume")
    assert [int(row["step"]) for row in csv.DictReader((out / "train_log.csv").open())] == [1, 2, 3, 4]


def test_resume_after_kill_matches_straight_run(tiny_experiment: Path, tmp_path: Path) -> None:
    """SIGKILL right after the step-2 checkpoint of a 4-step run, rerun with --resume: the
    final weights equal those of an uninterrupted run, bit for bit."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(tiny_experiment, out=straight, progress=False)
    code = (
        "import os, signal\n"
        "from hwnas.train import loop\n"
        "orig = loop._checkpoint\n"
        "def stop(out, net, ema, params, opt, run, step, *rest):\n"
        "    orig(out, net, ema, params, opt, run, step, *rest)\n"
        "    if step == 2:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "loop._checkpoint = stop\n"
        f"loop.train({str(tiny_experiment)!r}, out={str(killed)!r}, progress=False)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # one thread, as this process
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert json.loads((killed / "supernet.json").read_text())["step"] == 2
    train(tiny_experiment, out=killed, resume=True, progress=False)
    a, b = load_file(str(straight / WEIGHTS)), load_file(str(killed / WEIGHTS))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa = torch.load(straight / TRAIN_STATE, weights_only=True)
    sb = torch.load(killed / TRAIN_STATE, weights_only=True)
    for key in sa["dit"]:
        assert torch.equal(sa["dit"][key], sb["dit"][key]), key


def test_checkpoint_round_trip_and_sampler(tiny_experiment: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_experiment, out=out, steps=2, progress=False)
    net = load_supernet(out)
    again = load_supernet(out)
    cfg = net.space.preset("small")
    prompts = ["a red circle", "two blue squares", "a green triangle left of a red circle"]
    img1 = generate(net, prompts, cfg, steps=3, seed=5)
    img2 = generate(again, prompts, cfg, steps=3, seed=5)
    assert img1.shape == (3, 3, 16, 16)
    assert torch.equal(img1, img2)
    assert img1.min() >= -1 and img1.max() <= 1
    assert not torch.equal(img1, generate(net, prompts, cfg, steps=3, seed=6))
    # A different batch size does not change an image: noise depends on (seed, index) only.
    assert torch.allclose(generate(net, prompts, cfg, steps=3, seed=5, batch_size=1), img1, atol=1e-5)
    # SDEdit: from init images at a small start time the sample stays near them, and is seeded.
    init = img1.flip(0)
    near = generate(net, prompts, cfg, steps=1, seed=5, init=init, start=0.01)
    assert (near - init).abs().max() < 0.2
    assert torch.equal(near, generate(net, prompts, cfg, steps=1, seed=5, init=init, start=0.01))
    with pytest.raises(ValueError, match="init images for"):
        generate(net, prompts, cfg, init=init[:2], start=0.5)
    with pytest.raises(ValueError, match="needs init images"):
        generate(net, prompts, cfg, start=0.5)


def test_corrupt_checkpoint_is_a_clear_error(tiny_experiment: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_experiment, out=out, steps=2, progress=False)
    (out / WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt checkpoint"):
        load_supernet(out)
    with pytest.raises(ValueError, match="not found"):
        load_supernet(tmp_path / "nothing")


def test_ddp_two_cpu_processes_keep_weights_identical(tiny_experiment: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "hwnas.cli", "train", "--experiment", str(tiny_experiment), "--out", str(out), "--quiet",
           "--steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 2
    assert all(s["ranks_identical"] for s in summaries)
    assert json.loads((out / "supernet.json").read_text())["step"] == 3


def test_stop_at_is_the_start_of_the_longer_schedule(tiny_experiment: Path, tmp_path: Path) -> None:
    """--stop-at 2 of a 4-step run checkpoints at step 2 on the 4-step learning-rate schedule,
    and --resume finishes it bit for bit like an uninterrupted run."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(tiny_experiment, out=straight, steps=4, progress=False)
    assert train(tiny_experiment, out=stopped, steps=4, stop_at=2, progress=False)["steps"] == 2
    assert json.loads((stopped / "supernet.json").read_text())["schedule"] == [4]
    train(tiny_experiment, out=stopped, steps=4, resume=True, progress=False)
    a, b = load_file(str(straight / WEIGHTS)), load_file(str(stopped / WEIGHTS))
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_init_from_starts_at_the_parents_weights(tiny_experiment: Path, tmp_path: Path) -> None:
    parent, child = tmp_path / "parent", tmp_path / "child"
    train(tiny_experiment, out=parent, steps=3, progress=False)
    train(tiny_experiment, out=child, steps=2, stop_at=1, init_from=parent, progress=False,
          overrides={"batch_size": 4, "lr": 1e-9, "warmup_steps": 1})
    meta = json.loads((child / "supernet.json").read_text())
    assert meta["step"] == 1 and meta["init_from"]["step"] == 3 and meta["init_from"]["path"] == str(parent)
    assert meta["samples"] == 4 + 3 * json.loads((parent / "supernet.json").read_text())["train"]["batch_size"]
    assert f"--init-from {parent}" in meta["command"]
    # with a learning rate of 1e-9 one step leaves the parent's (EMA) weights in place
    a, b = load_file(str(parent / WEIGHTS)), load_file(str(child / WEIGHTS))
    assert all(torch.allclose(a[key], b[key], atol=1e-6) for key in a)
    # the resumed child keeps its lineage without being told again; a different parent is refused
    train(tiny_experiment, out=child, steps=2, resume=True, progress=False,
          overrides={"batch_size": 4, "lr": 1e-9, "warmup_steps": 1})
    assert json.loads((child / "supernet.json").read_text())["init_from"]["step"] == 3
    with pytest.raises(ValueError, match="did not start from"):
        train(tiny_experiment, out=child, steps=3, resume=True, init_from=tmp_path / "other", progress=False,
              overrides={"batch_size": 4, "lr": 1e-9, "warmup_steps": 1})


def test_init_from_another_model_is_refused(tiny_experiment: Path, tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    train(tiny_experiment, out=parent, steps=1, progress=False)
    wider = tmp_path / "wider.toml"
    wider.write_text(tiny_experiment.read_text().replace("hidden_size = 16", "hidden_size = 24"))
    assert wider.read_text() != tiny_experiment.read_text()
    with pytest.raises(ValueError, match=r"\[model\] differ"):
        train(wider, out=tmp_path / "child", steps=1, init_from=parent, progress=False)
    assert not (tmp_path / "child" / WEIGHTS).exists()
    with pytest.raises(ValueError, match="not found"):
        train(tiny_experiment, out=tmp_path / "child", steps=1, init_from=tmp_path / "none", progress=False)
