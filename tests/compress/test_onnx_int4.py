from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from hwnas.compress import (
    QuantSpec,
    check_parity,
    dequantized_copy,
    export_int4_onnx,
    quantize_model,
)
from hwnas.compress.quant import layer_sensitivity, mixed_bits
from hwnas.model import example_inputs, export_onnx, extract_subnet
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


@pytest.mark.parametrize("group", [None, 8])
def test_palettized_onnx_decodes_the_packed_palettes(tiny_net: Supernet, tmp_path: Path, group: int | None) -> None:
    """k-means weights run in onnxruntime from their 4-bit codes: parity with the dequantized
    PyTorch model, and the file's weights shrink by what the codes save."""
    space = tiny_net.space
    static = extract_subnet(tiny_net.dit, space.largest()).eval()
    spec = QuantSpec("kmeans", 4, group)
    inputs = example_inputs(space, batch=2)
    bits = mixed_bits(static, spec, layer_sensitivity(static, spec, lambda m: m(*inputs)), extra_bits=1.0)
    q = quantize_model(static, spec, bits=bits)
    assert 8 in q.bits.values() and 4 in q.bits.values()
    info = export_int4_onnx(static, q, tmp_path / "k.onnx")
    assert info["palettized"] == len(q.packed) and info["matmulnbits"] == 0
    parity = check_parity(tmp_path / "k.onnx", dequantized_copy(static, q))
    assert parity["max_abs_diff"] < 1e-5 * max(1.0, parity["ref_abs_mean"])
    export_onnx(static, tmp_path / "fp32.onnx")
    quant_params = sum(pw.shape[0] * pw.shape[1] for pw in q.packed.values())
    saved = quant_params * 4 - sum(pw.nbytes for pw in q.packed.values())  # fp32 bytes the codes save
    shared_and_shapes = 256 * 2 * 8 + 64 * len(q.packed)  # the nibble table, per-layer shapes and counts
    stored = {name: sum(len(t.raw_data) for t in onnx.load(str(tmp_path / name)).graph.initializer)
              for name in ("fp32.onnx", "k.onnx")}
    assert 0 <= stored["k.onnx"] - (stored["fp32.onnx"] - saved) <= shared_and_shapes


def test_fit_runs_matmulnbits_and_palettes_side_by_side(tiny_net: Supernet, tmp_path: Path) -> None:
    """fit quantizes the tiny space's 64- and 256-wide inputs with rtn and the rest with palettes;
    one ONNX model runs both, equal to the dequantized PyTorch model."""
    static = extract_subnet(tiny_net.dit, tiny_net.space.largest()).eval()
    q = quantize_model(static, QuantSpec("fit", 4, 128, False))
    methods = {name: pw.spec.method for name, pw in q.packed.items()}
    assert {pw.shape[1] for pw in q.packed.values() if pw.spec.method == "rtn"} == {64, 256}
    info = export_int4_onnx(static, q, tmp_path / "fit.onnx", accuracy_level=0)
    assert info["matmulnbits"] == list(methods.values()).count("rtn") > 0
    assert info["palettized"] == list(methods.values()).count("kmeans") > 0
    assert q.summary()["layers_kmeans"] == info["palettized"]
    parity = check_parity(tmp_path / "fit.onnx", dequantized_copy(static, q))
    assert parity["max_abs_diff"] < 1e-4 * max(1.0, parity["ref_abs_mean"])


def test_side_uint8_tensors_are_decoded_in_the_graph(tiny_net: Supernet, tmp_path: Path) -> None:
    """With side_bits 8 the file stores biases, norms and adaLN tables as uint8 (smaller) and still
    equals the dequantized PyTorch model, whose side parameters sit on the same grids."""
    static = extract_subnet(tiny_net.dit, tiny_net.space.largest()).eval()
    q16 = quantize_model(static, QuantSpec("rtn", 4, 16, False, 16))
    q8 = quantize_model(static, QuantSpec("rtn", 4, 16, False, 8))
    wide = export_int4_onnx(static, q16, tmp_path / "side16.onnx", accuracy_level=0)
    small = export_int4_onnx(static, q8, tmp_path / "side8.onnx", accuracy_level=0)
    assert wide["side_uint8"] == 0 < small["side_uint8"]
    assert small["file_bytes"] < wide["file_bytes"]
    deq = dequantized_copy(static, q8)
    parity = check_parity(tmp_path / "side8.onnx", deq)
    assert parity["max_abs_diff"] < 1e-4 * max(1.0, parity["ref_abs_mean"])
    off = check_parity(tmp_path / "side8.onnx", dequantized_copy(static, q16))
    assert off["max_abs_diff"] > parity["max_abs_diff"]  # the grid is not fp16: the check can fail
