from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_space import tiny_space  # tests/ is on sys.path via the root conftest

from hwnas.model.attention import (
    ElasticCrossAttention,
    ElasticSelfAttention,
    apply_rope,
    blockwise_attention,
    bna_dense_mask,
    cross_attention,
    expand_kv_heads,
    grid_positions,
    rope_angles,
)
from hwnas.space import SearchSpace, StageChoices


def _tiny_space(*, blocks: int = 8) -> SearchSpace:
    """16x16 RGB, patch 2 -> 8x8 = 64 tokens; hidden 32 = 4 heads of 8, 2 KV heads."""
    return tiny_space(
        "tiny-attn", bna_blocks=blocks,
        down=StageChoices(width=(0.5, 0.75, 1.0), depth=(1,), ffn_ratio=(2,), attn=("assa", "bna", "global"),
                          radius=(1, 2), preset_ffn_ratio=2),
        middle=StageChoices(width=(0.5, 1.0), depth=(1,), ffn_ratio=(2,), attn=("full",), radius=(),
                            preset_ffn_ratio=2))


def _brute_force_mask(tokens: int, blocks: int, radius: int) -> torch.Tensor:
    per_block = tokens // blocks
    mask = torch.zeros(tokens, tokens, dtype=torch.bool)
    for i in range(tokens):
        for j in range(tokens):
            mask[i, j] = abs(i // per_block - j // per_block) <= radius
    return mask


@pytest.mark.parametrize(("tokens", "blocks", "radius"), [(64, 8, 1), (64, 8, 2), (64, 8, 7), (16, 16, 1), (48, 4, 3)])
def test_bna_mask_matches_brute_force(tokens: int, blocks: int, radius: int) -> None:
    assert torch.equal(bna_dense_mask(tokens, blocks, radius), _brute_force_mask(tokens, blocks, radius))


@pytest.mark.parametrize(("blocks", "radius", "kv_heads"), [(8, 1, 2), (8, 2, 1), (4, 3, 4), (16, 1, 2)])
def test_blockwise_attention_equals_masked_dense_attention(blocks: int, radius: int, kv_heads: int) -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 4, 64, 8)
    k, v = torch.randn(2, kv_heads, 64, 8), torch.randn(2, kv_heads, 64, 8)
    expected = F.scaled_dot_product_attention(q, expand_kv_heads(k, 4), expand_kv_heads(v, 4),
                                              attn_mask=_brute_force_mask(64, blocks, radius))
    torch.testing.assert_close(blockwise_attention(q, k, v, blocks=blocks, radius=radius), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("heads", "kv_heads", "expected"), [(4, 2, [0, 0, 1, 1]), (3, 2, [0, 0, 1]),
                                                               (1, 2, [0]), (2, 2, [0, 1])])
def test_expand_kv_heads_maps_query_head_i_to_kv_head_i_kv_over_h(heads: int, kv_heads: int,
                                                                  expected: list[int]) -> None:
    x = torch.arange(kv_heads, dtype=torch.float32).view(1, kv_heads, 1, 1)
    assert expand_kv_heads(x, heads).flatten().tolist() == expected


def test_rope_scores_depend_only_on_relative_position() -> None:
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(qpos: tuple[float, float], kpos: tuple[float, float]) -> torch.Tensor:
        qc, qs = rope_angles(torch.tensor([qpos[0]]), torch.tensor([qpos[1]]), 8)
        kc, ks = rope_angles(torch.tensor([kpos[0]]), torch.tensor([kpos[1]]), 8)
        return (apply_rope(q, qc, qs) * apply_rope(k, kc, ks)).sum()

    torch.testing.assert_close(score((1, 2), (3, 5)), score((4, 0), (6, 3)))
    assert not torch.allclose(score((1, 2), (3, 5)), score((1, 2), (5, 3)))  # rows and columns differ
    rows, cols = grid_positions(2, cell=2)
    assert rows.tolist() == [0.5, 0.5, 2.5, 2.5] and cols.tolist() == [0.5, 2.5, 0.5, 2.5]


def _randomized_attention(space: SearchSpace) -> ElasticSelfAttention:
    torch.manual_seed(1)
    attn = ElasticSelfAttention(space, sparse=True)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    return attn


@pytest.mark.parametrize("heads", [4, 3, 2])
def test_assa_gated_local_with_full_window_equals_dense_attention(heads: int) -> None:
    space = _tiny_space()
    attn = _randomized_attention(space)
    with torch.no_grad():
        attn.gate.bias.fill_(-1e4)  # type: ignore[union-attr]  # sigmoid -> 0: local branch only
    x = torch.randn(2, 64, heads * 8)
    kv = space.kv_heads_for(heads)
    common = dict(heads=heads, kv_heads=kv, side=8)
    assa = attn(x, attn="assa", radius=space.bna_blocks - 1, **common)
    torch.testing.assert_close(assa, attn(x, attn="full", radius=0, **common), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(attn(x, attn="bna", radius=space.bna_blocks - 1, **common), assa, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        attn.gate.bias.fill_(1e4)  # type: ignore[union-attr]  # sigmoid -> 1: global branch only
    torch.testing.assert_close(attn(x, attn="assa", radius=1, **common), attn(x, attn="global", radius=0, **common),
                               rtol=1e-5, atol=1e-5)


def test_assa_mixes_both_branches_per_head() -> None:
    space = _tiny_space()
    attn = _randomized_attention(space)
    x = torch.randn(1, 64, 32)
    common = dict(heads=4, kv_heads=2, side=8)
    out = {k: attn(x, attn=k, radius=r, **common) for k, r in [("assa", 1), ("bna", 1), ("global", 0)]}
    assert not torch.allclose(out["assa"], out["bna"]) and not torch.allclose(out["assa"], out["global"])


def test_global_branch_sees_only_compressed_keys() -> None:
    """Keys and values are compressed from 64 tokens to 16; queries stay at 64."""
    space = _tiny_space()
    attn = _randomized_attention(space)
    seen: list[tuple[int, ...]] = []
    conv = attn.compress_k
    hook = conv.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))  # type: ignore[union-attr]
    out = attn(torch.randn(2, 64, 24), heads=3, kv_heads=1, attn="global", radius=0, side=8)
    hook.remove()
    assert seen == [(2, 8, 4, 4)] and out.shape == (2, 64, 24)


def test_sparse_kinds_need_a_sparse_module() -> None:
    attn = ElasticSelfAttention(_tiny_space(), sparse=False)
    assert attn.gate is None and attn.compress_k is None
    with pytest.raises(ValueError, match="sparse"):
        attn(torch.randn(1, 64, 32), heads=4, kv_heads=2, attn="assa", radius=1, side=8)


def test_cross_attention_ignores_masked_tokens_and_zeroes_empty_rows() -> None:
    torch.manual_seed(0)
    space = _tiny_space()
    cross = ElasticCrossAttention(space)
    x, text = torch.randn(2, 64, 24), torch.randn(2, 5, 12)
    mask = torch.tensor([[True, True, False, True, False], [False] * 5])
    out = cross(x, text, mask, heads=3)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], cross.o.bias[:24].expand(64, 24))  # no valid key: output bias only
    text2 = text.clone()
    text2[0, [2, 4]] = 100.0
    torch.testing.assert_close(cross(x, text2, mask, heads=3)[0], out[0])


def test_cross_attention_function_matches_reference() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 6, 24), torch.randn(1, 4, 16), torch.randn(1, 4, 16)
    mask = torch.tensor([[True, False, True, True]])
    out = cross_attention(q, k, v, mask, heads=3, q_norm=lambda z: z, k_norm=lambda z: z)
    ref = []
    for i in range(3):  # query head i reads KV head (i * 2) // 3
        j = (i * 2) // 3
        s = q[0, :, i * 8:(i + 1) * 8] @ k[0, :, j * 8:(j + 1) * 8].T / 8**0.5
        s = s.masked_fill(~mask[0], float("-inf")).softmax(-1)
        ref.append(s @ v[0, :, j * 8:(j + 1) * 8])
    torch.testing.assert_close(out[0], torch.cat(ref, -1), rtol=1e-5, atol=1e-5)
