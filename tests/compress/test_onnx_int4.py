from __future__ import annotations

from pathlib import Path

import pytest

from hwnas.compress import (
    QuantSpec,
    check_parity,
    dequantized_copy,
    export_int4_onnx,
    quantize_model,
)
from hwnas.compress.quant import layer_sensitivity, mixed_bits
from hwnas.model import example_inputs, extract_subnet
from hwnas.train import Supernet


@pytest.mark.parametrize("symmetric", [True, False])
def test_matmulnbits_matches_dequantized_pytorch(tiny_net: Supernet, tmp_path: Path, symmetric: bool) -> None:
    space = tiny_net.space
    static = extract_subnet(tiny_net.dit, space.largest()).eval()
    spec = QuantSpec("rtn", 4, 16, symmetric)
    inputs = example_inputs(space, batch=2)
    bits = mixed_bits(static, spec, layer_sensitivity(static, spec, lambda m: m(*inputs)), extra_bits=1.0)
    q = quantize_model(static, spec, bits=bits)
    assert 8 in q.bits.values()
    deq = dequantized_copy(static, q)
    exact = export_int4_onnx(static, q, tmp_path / "exact.onnx", accuracy_level=0)  # fp32 compute
    assert exact["matmulnbits"] == len(q.packed)
    parity = check_parity(tmp_path / "exact.onnx", deq)
    assert parity["max_abs_diff"] < 1e-4 * max(1.0, parity["ref_abs_mean"])
    export_int4_onnx(static, q, tmp_path / "fast.onnx")  # accuracy_level 4: int8 activations
    fast = check_parity(tmp_path / "fast.onnx", deq)
    assert fast["mean_abs_diff"] < 0.05 * fast["ref_abs_mean"]


def test_kmeans_is_refused_for_the_runtime(tiny_net: Supernet, tmp_path: Path) -> None:
    static = extract_subnet(tiny_net.dit, tiny_net.space.smallest()).eval()
    q = quantize_model(static, QuantSpec("kmeans", 4, None))
    with pytest.raises(ValueError, match="rtn"):
        export_int4_onnx(static, q, tmp_path / "k.onnx")
