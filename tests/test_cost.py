from __future__ import annotations

import random
from pathlib import Path

import pytest
from tiny_space import tiny_space  # tests/ is on sys.path via the root conftest

from hwnas.cost import (
    activation_bytes,
    count_params,
    flops_per_step,
    local_key_pairs,
    op_flops,
    ops,
    weight_bytes,
)
from hwnas.space import SearchSpace, StageChoices, StageConfig, SubnetConfig, load_space

ROOT = Path(__file__).resolve().parents[1]


def _tiny_space() -> SearchSpace:
    """8x8 single-channel images, patch 2 -> 16 tokens (4 BNA blocks of 4), Middle 4 tokens."""
    return tiny_space(
        "tiny", resolution=8, latent_channels=1, hidden_size=8, head_dim=4, kv_heads=1, time_dim=4, text_len=2,
        text_dim=4, bna_blocks=4,
        down=StageChoices(width=(0.5, 1.0), depth=(1, 2), ffn_ratio=(2,), attn=("assa", "bna", "global"),
                          radius=(1,), preset_ffn_ratio=2),
        middle=StageChoices(width=(0.5, 1.0), depth=(1, 2), ffn_ratio=(2,), attn=("full",), radius=(),
                            preset_ffn_ratio=2))


def _tiny_cfg() -> SubnetConfig:
    return SubnetConfig(
        down=StageConfig(width=1.0, depth=1, ffn_ratio=2, attn="assa", radius=1),
        middle=StageConfig(width=0.5, depth=1, ffn_ratio=2, attn="full"),
        up=StageConfig(width=1.0, depth=1, ffn_ratio=2, attn="bna", radius=1),
    )


def test_hand_counted_flops_of_a_tiny_config() -> None:
    """Every multiply-add of the tiny config counted by hand (2 FLOPs each).

    Down block (16 tokens, D=8, 2 heads of 4, 1 KV head, FFN 2, ASSA r=1, 4 blocks, KV 2x2 conv):
    q,o 4096 + k,v 2048 + KV convs 1024 + gate 512 + attention 4*(64 global + 160 local pairs)*4*2
    = 7168 + cross q,o 4096, k,v 128, attention 1024 + FFN 8192 = 28288.
    Middle block (4 tokens, D=4, 1 head): 512 + 256 + 256 + 128 + 128 + 512 = 1792.
    Up block (BNA r=1, long skip of width 8): skip 4096 + 6144 + 5120 + 5248 + 8192 = 28800.
    Patch embed 1024, time MLP 2080, modulation 384 + 192 + 384 + 128, down/upsample 1024 each,
    final 1024.
    """
    space, cfg = _tiny_space(), _tiny_cfg()
    by_kind = {op.kind: op_flops(op) for op in ops(cfg, space)}
    assert by_kind["down_block"] == 28288
    assert by_kind["middle_block"] == 1792
    assert by_kind["up_block"] == 28800
    assert flops_per_step(cfg, space) == 66144


def test_hand_counted_params_of_a_tiny_config() -> None:
    """Down block 930, Middle block 300, Up block 912 (with its skip linear), rest 2088."""
    assert count_params(_tiny_cfg(), _tiny_space()) == 4230


@pytest.mark.parametrize(
    ("tokens", "blocks", "radius", "pairs"),
    [(16, 4, 1, 160), (16, 4, 3, 256), (16, 4, 0, 64), (256, 16, 1, 256 * 16 * 3 - 2 * 16 * 16)],
)
def test_local_key_pairs(tokens: int, blocks: int, radius: int, pairs: int) -> None:
    assert local_key_pairs(tokens, blocks, radius) == pairs


def test_paper_sizes_within_ten_percent() -> None:
    """SnapGen++: 1x / 0.5x / 0.375x widths give 1.6B / 0.4B / 0.3B parameters."""
    space = load_space(ROOT / "experiments/snapgenpp-1024.toml")
    for name, published in (("full", 1.6e9), ("small", 0.4e9), ("tiny", 0.3e9)):
        params = count_params(space.preset(name), space)
        assert abs(params / published - 1) < 0.10, (name, params)


@pytest.mark.parametrize("experiment", ["snapgenpp-1024", "shapes-32"])
def test_counts_are_monotone_in_depth_and_width(experiment: str) -> None:
    space = load_space(ROOT / f"experiments/{experiment}.toml")
    rng = random.Random(0)
    for _ in range(50):
        cfg = space.sample(rng)
        for stage in ("down", "middle", "up"):
            s = cfg.stage(stage)
            deeper = [d for d in space.stages[stage].depth if d > s.depth]
            if deeper:
                bigger = SubnetConfig(**{**{n: cfg.stage(n) for n in ("down", "middle", "up")},
                                         stage: StageConfig(s.width, deeper[0], s.ffn_ratio, s.attn, s.radius)})
                assert flops_per_step(bigger, space) > flops_per_step(cfg, space)
                assert count_params(bigger, space) > count_params(cfg, space)
    assert flops_per_step(space.smallest(), space) < flops_per_step(space.preset("tiny"), space)
    assert flops_per_step(space.preset("full"), space) < flops_per_step(space.largest(), space)


def test_bytes_scale_with_precision() -> None:
    space, cfg = _tiny_space(), _tiny_cfg()
    assert weight_bytes(cfg, space, bits=16) == 2 * 4230
    assert weight_bytes(cfg, space, bits=4) == 4230 // 2
    assert activation_bytes(cfg, space, bytes_per_element=4) == 2 * activation_bytes(cfg, space)


def test_sparse_attention_is_cheaper_at_deployment_scale() -> None:
    """At 4096 tokens ASSA (4x-compressed global + 3/16 local keys) saves > 40% of dense attention."""
    space = load_space(ROOT / "experiments/snapgenpp-1024.toml")
    cfg = space.preset("small")
    block = next(op for op in ops(cfg, space) if op.kind == "down_block")
    from dataclasses import replace

    dense = replace(block, attn="full", bna_blocks=0, kv_compress=0, radius=0)
    dense_attention = 2 * 2 * block.tokens**2 * block.head_dim * block.heads
    assert op_flops(dense) - op_flops(block) > 0.4 * dense_attention
