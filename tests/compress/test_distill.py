from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from hwnas.compress import DistillConfig, distill, from_supernet, load_subdit, terms
from hwnas.train import Supernet

FAST = DistillConfig(steps=2, batch_size=2, critic_updates=2, kd_teacher_steps=2, checkpoint_every=1, lr=1e-3)


def _weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_distillation_changes_the_student_and_resumes_exactly(tiny_net: Supernet, tmp_path: Path) -> None:
    cfg = tiny_net.space.smallest()
    student = from_supernet(tiny_net, cfg)
    before = _weights(student.dit).clone()
    summary = distill(tiny_net, student, out=tmp_path / "a", dc=FAST, progress=False)
    assert summary["dit_evals_per_image"] == FAST.student_steps and summary["terms"] == ["dmd", "kd", "feat"]
    assert not torch.allclose(_weights(student.dit), before)
    saved = load_subdit(tmp_path / "a")
    assert torch.equal(_weights(saved.dit), _weights(student.dit))

    first = from_supernet(tiny_net, cfg)
    distill(tiny_net, first, out=tmp_path / "b", dc=DistillConfig(**{**FAST.__dict__, "steps": 1}), progress=False)
    resumed = from_supernet(tiny_net, cfg)  # fresh weights: everything must come from the state file
    with pytest.raises(ValueError, match="other settings"):
        distill(tiny_net, resumed, out=tmp_path / "b", dc=terms("kd", FAST), resume=True, progress=False)
    distill(tiny_net, resumed, out=tmp_path / "b", dc=FAST, resume=True, progress=False)
    assert torch.allclose(_weights(resumed.dit), _weights(student.dit), atol=1e-6)


@pytest.mark.parametrize("mode,present,absent", [
    ("dmd", {"dmd", "critic"}, {"kd", "feat"}),
    ("kd", {"kd", "feat"}, {"dmd", "critic"}),
    ("kdmd", {"dmd", "critic", "kd", "feat"}, set()),
])
def test_each_term_switches(tiny_net: Supernet, tmp_path: Path, mode: str, present: set, absent: set) -> None:
    dc = terms(mode, DistillConfig(**{**FAST.__dict__, "steps": 1}))  # type: ignore[arg-type]
    distill(tiny_net, from_supernet(tiny_net, tiny_net.space.smallest()), out=tmp_path, dc=dc, progress=False)
    with (tmp_path / "distill_log.csv").open() as fh:
        row = next(csv.DictReader(fh))
    keys = {k for k, v in row.items() if v != ""}
    assert present <= keys and not absent & keys


def test_all_terms_off_is_refused() -> None:
    with pytest.raises(ValueError, match="all loss terms"):
        DistillConfig(dmd_weight=0, kd_weight=0, feat_weight=0)


@pytest.mark.parametrize("beta1", [-0.1, 1.0])
def test_beta1_outside_unit_interval_is_refused(beta1: float) -> None:
    with pytest.raises(ValueError, match="beta1"):
        DistillConfig(beta1=beta1)


def test_cli_passes_the_teacher_guidance_and_refuses_a_bad_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    base = [sys.executable, "-m", "hwnas.cli", "distill", "--checkpoint", str(tiny_checkpoint), "--config", "smallest",
            "--steps", "1", "--batch-size", "2", "--critic-updates", "1", "--kd-teacher-steps", "1", "--quiet"]
    ok = subprocess.run([*base, "--out", str(tmp_path / "a"), "--cfg-scale", "2", "--beta1", "0.9"],
                        capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    settings = json.loads((tmp_path / "a" / "model.json").read_text())["distill"]["distill"]
    assert settings["cfg_scale"] == 2.0 and settings["beta1"] == 0.9
    bad = subprocess.run([*base, "--out", str(tmp_path / "b"), "--cfg-scale", "0.5"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert bad.returncode == 2 and "cfg-scale" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "b").exists()
