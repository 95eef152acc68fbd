"""Checkpoints with NaN or infinite weights are refused at load; `hwnas eval` refuses a NaN result."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from hwnas.cli import main
from hwnas.train.checkpoint import WEIGHTS, load_weights, save_weights

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "checkpoints" / "shapes-32"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_weights_are_refused_naming_file_and_first_tensor(tmp_path: Path, bad: float) -> None:
    tensors = {"a.weight": torch.zeros(3), "b.weight": torch.tensor([1.0, bad, bad]), "c.weight": torch.full((2,), bad),
               "steps": torch.tensor([1, 2])}
    save_weights(tmp_path, tensors, {"step": 1})
    with pytest.raises(ValueError) as err:
        load_weights(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / WEIGHTS}: tensor 'b.weight' has 2 non-finite value(s) of 3")


def test_finite_weights_load(tmp_path: Path) -> None:
    save_weights(tmp_path, {"w": torch.ones(2)}, {"step": 1})
    tensors, meta = load_weights(tmp_path)
    assert torch.equal(tensors["w"], torch.ones(2)) and meta == {"step": 1}


def _poisoned_copy(tmp_path: Path) -> tuple[Path, str]:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(SHIPPED, ckpt, ignore=shutil.ignore_patterns("*.csv"))
    tensors = load_file(str(ckpt / WEIGHTS))
    name = sorted(k for k in tensors if k.startswith("dit."))[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = math.nan
    save_file(tensors, str(ckpt / WEIGHTS), metadata={"format": "pt"})
    return ckpt, name


def test_load_supernet_and_eval_refuse_a_nan_checkpoint(tmp_path: Path) -> None:
    from hwnas.train import load_supernet

    ckpt, name = _poisoned_copy(tmp_path)
    with pytest.raises(ValueError, match=f"tensor {name!r} has 1 non-finite"):
        load_supernet(ckpt)
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(ckpt), "--metric", "val_loss", "--n", "2"])
    assert res.exit_code == 2 and f"tensor {name!r}" in res.output and "Traceback" not in res.output


def test_eval_exits_non_zero_on_a_nan_result(monkeypatch: pytest.MonkeyPatch) -> None:
    from hwnas.metrics import evaluate as evaluate_mod

    monkeypatch.setattr(evaluate_mod, "val_loss", lambda *a, **k: math.nan)  # what a diverged checkpoint gives
    res = CliRunner().invoke(main, ["eval", "--checkpoint", str(ROOT / "checkpoints" / "shapes-32"),  # not the default
                                    "--metric", "val_loss", "--n", "2", "--json"])
    assert res.exit_code == 2 and "val_loss of" in res.output and "not a number" in res.output
    assert '"value"' not in res.output  # no JSON result printed
