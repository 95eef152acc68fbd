from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hwnas.model.ops import (
    ElasticConv2d,
    ElasticConvTranspose2d,
    ElasticLinear,
    PerWidthLayerNorm,
    PerWidthTable,
    timestep_features,
    to_grid,
    to_tokens,
    unpatchify,
)


@pytest.mark.parametrize(("n_in", "n_out"), [(16, 24), (1, 1), (7, 24), (16, 3)])
def test_elastic_linear_equals_linear_of_sliced_weights(n_in: int, n_out: int) -> None:
    torch.manual_seed(0)
    lin = ElasticLinear(16, 24)
    torch.nn.init.normal_(lin.bias)
    x = torch.randn(2, 5, n_in)
    expected = F.linear(x, lin.weight[:n_out, :n_in], lin.bias[:n_out])
    torch.testing.assert_close(lin(x, n_in, n_out), expected, rtol=0, atol=0)


def test_elastic_linear_chunks_slice_every_chunk() -> None:
    torch.manual_seed(0)
    lin = ElasticLinear(8, 10, chunks=6)
    torch.nn.init.normal_(lin.bias)
    x = torch.randn(3, 8)
    w, b = lin.weight.view(6, 10, 8), lin.bias.view(6, 10)
    expected = torch.stack([F.linear(x[:, :5], w[i, :4, :5], b[i, :4]) for i in range(6)], dim=1)  # (3, 6, 4)
    torch.testing.assert_close(lin(x[:, :5], 5, 4).view(3, 6, 4), expected)


def test_elastic_linear_concatenated_input_slices_each_part() -> None:
    torch.manual_seed(0)
    lin = ElasticLinear((16, 16), 16)  # long-skip fusion: weight (Dm, 2 Dm)
    a, b = torch.randn(2, 4, 8), torch.randn(2, 4, 12)
    w = torch.cat([lin.weight[:8, :8], lin.weight[:8, 16:28]], dim=1)
    expected = F.linear(torch.cat([a, b], -1), w, lin.bias[:8])
    torch.testing.assert_close(lin(torch.cat([a, b], -1), (8, 12), 8), expected)


def test_elastic_linear_rejects_oversized_slices() -> None:
    lin = ElasticLinear(8, 8)
    with pytest.raises(ValueError, match="exceeds"):
        lin(torch.randn(1, 8), 8, 9)
    with pytest.raises(ValueError, match="do not fit"):
        lin.sliced(9, 8)


def test_elastic_convs_equal_convs_of_sliced_weights() -> None:
    torch.manual_seed(0)
    conv, deconv = ElasticConv2d(16, 12, 2), ElasticConvTranspose2d(16, 12, 2)
    x = torch.randn(2, 6, 8, 8)
    torch.testing.assert_close(conv(x, 6, 5), F.conv2d(x, conv.weight[:5, :6], conv.bias[:5], stride=2))
    torch.testing.assert_close(deconv(x, 6, 5),
                               F.conv_transpose2d(x, deconv.weight[:6, :5], deconv.bias[:5], stride=2))
    assert conv(x, 6, 5).shape == (2, 5, 4, 4) and deconv(x, 6, 5).shape == (2, 5, 16, 16)


def test_per_width_parameters_are_separate() -> None:
    table, norm = PerWidthTable((8, 16), rows=6), PerWidthLayerNorm((8, 16))
    assert table(8).shape == (6, 8) and table(16).shape == (6, 16)
    assert table(8).data_ptr() != table(16).data_ptr()
    x = torch.randn(3, 8)
    (table(8).sum() + norm(x, 8).pow(2).sum()).backward()
    assert table.tables["d16"].grad is None
    assert norm.norm(16).weight.grad is None and norm.norm(8).weight.grad is not None
    with pytest.raises(ValueError, match="hidden size 12"):
        table(12)


def test_timestep_features_shape_and_endpoints() -> None:
    f = timestep_features(torch.tensor([0.0, 0.5, 1.0]), 256)
    assert f.shape == (3, 256)
    torch.testing.assert_close(f[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    assert not torch.allclose(f[1], f[2])


def test_grid_tokens_and_unpatchify_are_inverse_layouts() -> None:
    x = torch.randn(2, 5, 4, 4)
    torch.testing.assert_close(to_grid(to_tokens(x), 4), x)
    # patchify in DiT's (p, q, c) token order, then unpatchify
    img = torch.randn(2, 3, 8, 8)
    tokens = img.reshape(2, 3, 4, 2, 4, 2).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 12)
    torch.testing.assert_close(unpatchify(tokens, channels=3, patch=2, side=4), img)
