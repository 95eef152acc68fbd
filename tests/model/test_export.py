from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_space import tiny_space  # tests/ is on sys.path via the root conftest

from hwnas.model import (
    ElasticDiT,
    example_inputs,
    export_onnx,
    extract_subnet,
    run_onnx,
)
from hwnas.space import SearchSpace, StageChoices, StageConfig, SubnetConfig


def _tiny_space() -> SearchSpace:
    """16x16 RGB, patch 2 -> 64 tokens in 8 BNA blocks; hidden 32 = 4 heads of 8, 2 KV heads."""
    return tiny_space(
        "tiny-export",
        down=StageChoices(width=(0.75, 1.0), depth=(1,), ffn_ratio=(2,), attn=("assa", "bna", "global"),
                          radius=(1,), preset_ffn_ratio=2),
        middle=StageChoices(width=(0.5, 1.0), depth=(1,), ffn_ratio=(2,), attn=("full",), radius=(),
                            preset_ffn_ratio=2))


@pytest.fixture(scope="module")
def static() -> torch.nn.Module:
    space = _tiny_space()
    torch.manual_seed(0)
    net = ElasticDiT(space)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    cfg = SubnetConfig(down=StageConfig(0.75, 1, 2, "assa", 1), middle=StageConfig(0.5, 1, 2, "full"),
                       up=StageConfig(1.0, 1, 2, "bna", 1))
    return extract_subnet(net, cfg).eval()


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_matches_torch(static: torch.nn.Module, tmp_path: Path, dynamo: bool) -> None:
    path = export_onnx(static, tmp_path / "subdit.onnx", batch=2, dynamo=dynamo)
    inputs = example_inputs(static.space, batch=2, seed=3)
    with torch.no_grad():
        expected = static(*inputs).numpy()
    got = run_onnx(path, inputs)
    assert got.shape == expected.shape == (2, 3, 16, 16)
    assert np.abs(got - expected).max() < 1e-4
    named = run_onnx(path, dict(zip(("x", "t", "text", "text_mask"), inputs)))
    np.testing.assert_array_equal(named, got)
    assert static.training is False


def test_run_onnx_rejects_wrong_inputs(static: torch.nn.Module, tmp_path: Path) -> None:
    path = export_onnx(static, tmp_path / "subdit.onnx")
    inputs = example_inputs(static.space)
    with pytest.raises(ValueError, match="expected 4 inputs"):
        run_onnx(path, inputs[:3])
    with pytest.raises(ValueError, match="takes inputs"):
        run_onnx(path, {"x": inputs[0]})
