from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hwnas.compress.quant import (
    QuantSpec,
    block_size,
    dequantized_copy,
    finetune_biases_norms,
    layer_sensitivity,
    mixed_bits,
    pack,
    quantize_kmeans,
    quantize_model,
    quantize_rtn,
    quantize_weight,
    round_side,
    side_bytes,
    side_parameters,
    unpack,
)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape", [(48, 256), (16, 24), (8, 96)])
def test_rtn_error_is_bounded_by_the_step(group: int, symmetric: bool, shape: tuple[int, int]) -> None:
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    pw = quantize_rtn(w, QuantSpec("rtn", 4, group, symmetric))
    err = (pw.dequantize() - w).abs()  # (N, K)
    n, k = shape
    step = torch.from_numpy(pw.scales.astype(np.float32)).abs().repeat_interleave(pw.block, dim=1)[:, :k]
    assert torch.all(err <= step * 1.001)  # one level at worst (the clipped top code)
    assert float((err / step).mean()) < 0.3  # round-to-nearest: about a quarter step on average
    assert pw.codes.dtype == np.uint8 and pw.codes.shape == (n, -(-k // pw.block), pw.block // 2)


def test_symmetric_keeps_the_largest_weight_exact() -> None:
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    deq = quantize_rtn(w, QuantSpec("rtn", 4, 32, True)).dequantize()
    idx = w.abs().argmax(dim=1)
    assert torch.allclose(deq[torch.arange(4), idx], w[torch.arange(4), idx].half().float(), atol=1e-6)


@pytest.mark.parametrize("k,group,expected",
                         [(32, 128, 32), (96, 128, 32), (256, 128, 128), (24, 128, 32), (64, 16, 16)])
def test_block_size(k: int, group: int, expected: int) -> None:
    assert block_size(k, group) == expected


@pytest.mark.parametrize("length", [2, 7, 64])
def test_pack_round_trip(length: int) -> None:
    codes = np.random.default_rng(0).integers(0, 16, size=(3, length)).astype(np.uint8)
    packed = pack(codes, 4)
    assert packed.shape == (3, (length + 1) // 2)
    assert np.array_equal(unpack(packed, 4)[:, :length], codes)
    assert np.array_equal(unpack(pack(codes * 16, 8), 8), codes * 16)


def test_rtn_bytes_and_packed_codes() -> None:
    w = torch.randn(64, 64)
    pw = quantize_rtn(w, QuantSpec("rtn", 4, 32, True))
    assert pw.nbytes == 64 * 64 // 2 + 64 * 2 * 2  # codes + one fp16 scale per 32 weights
    assert pw.bits_per_weight == pytest.approx(4.5)
    asym = quantize_rtn(w, QuantSpec("rtn", 4, 32, False))
    assert asym.nbytes == pw.nbytes + 64 * 2 // 2  # + 4-bit zero points


@pytest.mark.parametrize("group", [None, 8])
def test_kmeans_of_few_distinct_values_keeps_them_exactly(group: int | None) -> None:
    """A zero-initialised layer (or rows of it) has fewer distinct values than levels."""
    w = torch.zeros(16, 24)
    w[8:, :3] = 0.5  # the second group of 8 rows: two distinct values; the first: one
    pw = quantize_kmeans(w, QuantSpec("kmeans", 4, group))
    assert torch.equal(pw.dequantize(), w)
    assert pw.palette.shape == (16 // (group or 16), 16)


@pytest.mark.parametrize("group", [None, 8])
def test_kmeans_has_exactly_16_levels(group: int | None) -> None:
    w = torch.randn(32, 40, generator=torch.Generator().manual_seed(3))
    pw = quantize_kmeans(w, QuantSpec("kmeans", 4, group))
    deq = pw.dequantize()
    rows = 32 if group is None else group
    for r0 in range(0, 32, rows):
        assert len(torch.unique(deq[r0:r0 + rows])) == 16
    assert pw.palette.shape == (32 // rows, 16)
    assert float((deq - w).abs().mean()) < 0.15
    assert np.array_equal(pw.unpacked_codes().max(), 15)


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 32))


def test_mixed_precision_average_bits() -> None:
    model = _mlp()
    spec = QuantSpec("rtn", 4, 32, True)
    x = torch.randn(16, 64)
    sens = layer_sensitivity(model, spec, lambda m: m(x))
    assert set(sens) == {"0", "2", "4"} and all(v > 0 for v in sens.values())
    base = quantize_model(model, spec)
    bits = mixed_bits(model, spec, sens, extra_bits=0.5)
    mixed = quantize_model(model, spec, bits=bits)
    assert 8 in bits.values() and 4 in bits.values()
    assert base.avg_bits < mixed.avg_bits <= base.avg_bits + 0.5 + 1e-9
    lin = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    assert mixed.avg_bits == pytest.approx(8 * sum(p.nbytes for p in mixed.packed.values()) / lin)
    assert mixed.bytes_fp16 == 2 * sum(p.numel() for p in model.parameters())
    assert mixed.avg_bits_all > mixed.avg_bits  # biases counted as stored: uint8 codes and their grid


def test_dequantized_copy_uses_the_packed_weights_and_finetune_moves_only_biases() -> None:
    model = _mlp()
    q = quantize_model(model, QuantSpec("rtn", 4, 32, False))
    qm = dequantized_copy(model, q)
    assert torch.equal(qm[0].weight, q.packed["0"].dequantize())
    weight = qm[2].weight.clone()
    bias = qm[2].bias.clone()
    losses = finetune_biases_norms(qm, model,
                                   lambda i: (torch.randn(16, 64, generator=torch.Generator().manual_seed(i)),),
                                   steps=30, lr=1e-3, side_bits=q.side_bits)
    assert torch.equal(qm[2].weight, weight) and not torch.equal(qm[2].bias, bias)
    assert losses[-1] < losses[0]


def test_side_uint8_grid_bounds_error_and_accounting() -> None:
    model = _mlp()
    with torch.no_grad():
        model[0].bias.copy_(torch.linspace(-3, 5, model[0].bias.numel()) ** 3)
    side = side_parameters(model)
    assert set(side) == {"0.bias", "2.bias", "4.bias"}
    b = side["0.bias"].detach().clone()
    r = b.clone()
    round_side(r, 8)
    step = float(b.max() - b.min()) / 255
    assert (r - b).abs().max() <= step / 2 + 1e-6 and r.min() == b.min()
    assert len(torch.unique(r)) <= 256 and not torch.equal(r, b.half().float())
    again = r.clone()
    round_side(again, 8)  # what is stored rounds to itself (to fp32 ulps of the grid)
    assert torch.allclose(again, r, rtol=0, atol=1e-5 * step)
    q16 = quantize_model(model, QuantSpec("rtn", 4, 32, False, 16))
    q8 = quantize_model(model, QuantSpec("rtn", 4, 32, False, 8))
    sizes = [p.numel() for p in side.values()]
    assert q16.bytes - q8.bytes == sum(2 * n - side_bytes(n, 8) for n in sizes) > 0
    assert q8.avg_bits == q16.avg_bits and q8.avg_bits_all < q16.avg_bits_all and q8.summary()["side_bits"] == 8
    assert side_bytes(8, 8) == 16 and side_bytes(9, 8) == 17  # 8 values or fewer stay fp16
    deq = dequantized_copy(model, q8)
    expected = b.clone()
    round_side(expected, 8)
    assert torch.equal(deq[0].bias, expected)


def test_finetune_trains_through_the_uint8_grid() -> None:
    model = _mlp()
    q = quantize_model(model, QuantSpec("rtn", 4, 32, False, 8))
    qm = dequantized_copy(model, q)
    losses = finetune_biases_norms(qm, model,
                                   lambda i: (torch.randn(16, 64, generator=torch.Generator().manual_seed(i)),),
                                   steps=30, lr=1e-3, side_bits=8)
    assert losses[-1] < losses[0]
    for p in side_parameters(qm).values():
        stored = p.detach().clone()
        round_side(stored, 8)
        assert torch.allclose(stored, p, rtol=0, atol=1e-6) and len(torch.unique(p)) <= 256


def test_patch_convs_are_matmuls_over_patches() -> None:
    """Conv2d / ConvTranspose2d with kernel = stride are quantized in their matmul form; the K and
    N orders are those of ONNX SpaceToDepth / DepthToSpace (DCR), and the form round-trips."""
    from hwnas.compress.quant import matmul_weight, set_matmul_weight, weight_layers

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 2, stride=2), nn.ConvTranspose2d(5, 4, 2, stride=2),
                          nn.Conv2d(4, 4, 3, padding=1), nn.Linear(8, 8))
    assert set(weight_layers(model)) == {"0", "1", "3"}  # the 3x3 padded conv is not a patch matmul
    x = torch.randn(2, 3, 8, 8)
    conv, up = model[0], model[1]
    # Conv2d: patches in (kh, kw, C) order (SpaceToDepth), then x @ W^T.
    patches = x.reshape(2, 3, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 4, 4, 12)
    want = conv(x).permute(0, 2, 3, 1)
    assert torch.allclose(patches @ matmul_weight(conv).T + conv.bias, want, atol=1e-5)
    # ConvTranspose2d: outputs in (kh, kw, O) order (DepthToSpace DCR).
    y = conv(x)
    mm = y.permute(0, 2, 3, 1) @ matmul_weight(up).T  # (B, H, W, 2*2*4)
    d2s = mm.reshape(2, 4, 4, 2, 2, 4).permute(0, 5, 1, 3, 2, 4).reshape(2, 4, 8, 8) + up.bias.view(1, 4, 1, 1)
    assert torch.allclose(d2s, up(y), atol=1e-5)
    for m in (conv, up):
        before = m.weight.detach().clone()
        set_matmul_weight(m, matmul_weight(m).detach().clone())
        assert torch.equal(m.weight, before)
    q = quantize_model(model, QuantSpec("rtn", 4, 16, True))
    assert set(q.packed) == {"0", "1", "3"} and q.packed["0"].shape == (5, 12) and q.packed["1"].shape == (16, 5)


@pytest.mark.parametrize(("k", "group", "want"), [
    (64, 128, QuantSpec("rtn", 4, 128, False)),  # one 64-wide block: 0.31 bit of scale and zero point
    (256, 128, QuantSpec("rtn", 4, 128, False)),
    (24, 128, QuantSpec("kmeans", 4, 48)),  # rtn would pad 24 -> 32; two palettes of 16 fp16 entries: 0.22 bit
    (48, 128, QuantSpec("kmeans", 4, 24)),  # 16-wide blocks fit, but cost 1.25 bits of scales and zero points
    (256, 32, QuantSpec("kmeans", 4, 4)),  # a group below 64 caps every block below it: palettes
    (8, 128, QuantSpec("kmeans", 4, None)),  # 128 rows needed, the tensor has fewer: one palette
])
def test_fit_takes_rtn_where_blocks_fill_and_palettes_elsewhere(k: int, group: int, want: QuantSpec) -> None:
    from hwnas.compress.quant import FIT_PALETTE_BITS, fit_spec

    spec = fit_spec(QuantSpec("fit", 4, group, False), (96, k))
    assert spec == want
    pw = quantize_weight(torch.randn(96, k), QuantSpec("fit", 4, group, False))
    assert pw.spec == spec
    if spec.method == "kmeans":  # a tensor too small for one palette at that cost still gets one
        assert pw.palette is not None and len(pw.palette) == 96 // (spec.group or 96)
        assert spec.group is None or pw.palette.size * 16 / (96 * k) <= FIT_PALETTE_BITS
