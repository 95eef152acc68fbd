from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny_space import tiny_space  # tests/ is on sys.path via the root conftest
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from hwnas.cost import count_params, flops_per_step, local_key_pairs
from hwnas.model import (
    BuiltinTextEncoder,
    ElasticDiT,
    StaticDiT,
    TextEncoder,
    extract_subnet,
)
from hwnas.space import (
    STAGES,
    SearchSpace,
    StageChoices,
    StageConfig,
    SubnetConfig,
    load_space,
)

ROOT = Path(__file__).resolve().parents[2]
_CPU_SDPA = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _sdpa_flops(q: list[int], k: list[int], v: list[int], *args: object, **kwargs: object) -> int:
    return sdpa_flop_count(q, k, v)  # dense: 2 * (QK^T + AV) multiply-adds



def _tiny_space() -> SearchSpace:
    """16x16 RGB, patch 2 -> 64 Down/Up tokens (8 BNA blocks), Middle 16 tokens; hidden 32 (4 heads of 8,
    2 KV heads; width 0.75 -> 3 heads with 1 self-attention KV head). Up is deeper than Down, so some Up
    blocks have no long skip."""
    outer = dict(ffn_ratio=(2, 3), attn=("assa", "bna", "global"), radius=(1, 2), preset_ffn_ratio=2)
    return tiny_space(
        "tiny-dit",
        down=StageChoices(width=(0.5, 0.75, 1.0), depth=(1, 2), **outer),  # type: ignore[arg-type]
        middle=StageChoices(width=(0.5, 1.0), depth=(1, 2), ffn_ratio=(2, 3), attn=("full",), radius=(),
                            preset_ffn_ratio=3),
        up=StageChoices(width=(0.5, 0.75, 1.0), depth=(1, 2, 3), **outer))  # type: ignore[arg-type]


def _random_supernet(space: SearchSpace, *, seed: int = 0) -> ElasticDiT:
    """A supernet with every parameter random (the default adaLN-Zero init outputs zeros)."""
    torch.manual_seed(seed)
    net = ElasticDiT(space).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


def _inputs(space: SearchSpace, batch: int = 2, *, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    side = space.latent_size
    x = torch.randn(batch, space.latent_channels, side, side, generator=gen)
    t = torch.rand(batch, generator=gen)
    text = torch.randn(batch, space.text_len, space.text_dim, generator=gen)
    mask = torch.rand(batch, space.text_len, generator=gen) < 0.6
    mask[0, 0] = True
    mask[-1] = False  # an unconditional (all-padding) prompt
    return x, t, text, mask


def _configs(space: SearchSpace) -> list[SubnetConfig]:
    rng = random.Random(0)
    return [space.largest(), space.smallest()] + [space.sample(rng) for _ in range(10)]


@pytest.fixture(scope="module")
def tiny() -> tuple[SearchSpace, ElasticDiT]:
    space = _tiny_space()
    return space, _random_supernet(space)


_UP_BLOCK_0_STATE = """\
mod_table.tables.d16 (6, 16)
mod_table.tables.d24 (6, 24)
mod_table.tables.d32 (6, 32)
skip.weight (32, 64)
skip.bias (32,)
attn.q.weight (32, 32)
attn.q.bias (32,)
attn.k.weight (16, 32)
attn.k.bias (16,)
attn.v.weight (16, 32)
attn.v.bias (16,)
attn.o.weight (32, 32)
attn.o.bias (32,)
attn.q_norm.weight (8,)
attn.q_norm.bias (8,)
attn.k_norm.weight (8,)
attn.k_norm.bias (8,)
attn.compress_k.weight (16, 16, 2, 2)
attn.compress_k.bias (16,)
attn.compress_v.weight (16, 16, 2, 2)
attn.compress_v.bias (16,)
attn.gate.weight (4, 32)
attn.gate.bias (4,)
cross_norm.norms.d16.weight (16,)
cross_norm.norms.d16.bias (16,)
cross_norm.norms.d24.weight (24,)
cross_norm.norms.d24.bias (24,)
cross_norm.norms.d32.weight (32,)
cross_norm.norms.d32.bias (32,)
cross.q.weight (32, 32)
cross.q.bias (32,)
cross.k.weight (16, 12)
cross.k.bias (16,)
cross.v.weight (16, 12)
cross.v.bias (16,)
cross.o.weight (32, 32)
cross.o.bias (32,)
cross.q_norm.weight (8,)
cross.q_norm.bias (8,)
cross.k_norm.weight (8,)
cross.k_norm.bias (8,)
ffn_in.weight (96, 32)
ffn_in.bias (96,)
ffn_out.weight (32, 96)
ffn_out.bias (32,)
"""


def test_supernet_state_dict_keys_and_shapes_are_pinned(tiny: tuple[SearchSpace, ElasticDiT]) -> None:
    """Trained supernet checkpoints load by these keys and shapes: a refactor must not change them.
    One Up block (with its long-skip fusion) is spelled out; the whole state is pinned by a hash
    of its sorted `key shape` lines."""
    _, net = tiny
    state = net.state_dict()
    block = "".join(f"{k.removeprefix('up_blocks.0.')} {tuple(v.shape)}\n" for k, v in state.items()
                    if k.startswith("up_blocks.0."))
    assert block == _UP_BLOCK_0_STATE
    lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sorted(state.items()))
    assert len(state) == 310
    expected = "247a38b6d1909f54ee048ffe892c9cd4ef6c17b0214557d9ef5f5286d69a6a3a"
    assert hashlib.sha256(lines.encode()).hexdigest() == expected


def test_extracted_subnets_equal_supernet_and_cost_model(tiny: tuple[SearchSpace, ElasticDiT]) -> None:
    space, net = tiny
    x, t, text, mask = _inputs(space)
    for cfg in _configs(space):
        static = extract_subnet(net, cfg)
        with torch.no_grad():
            v = net(x, t, text, mask, cfg)
            v_static = static(x, t, text, mask)
        assert v.shape == x.shape and torch.isfinite(v).all() and v.abs().mean() > 1e-2, cfg.describe()
        assert (v - v_static).abs().max() < 1e-5, cfg.describe()
        assert sum(p.numel() for p in static.parameters()) == count_params(cfg, space), cfg.describe()
        assert static.cfg == cfg and static.space is space


@pytest.mark.parametrize(("channels", "patch"), [(4, 1), (1, 4)])
def test_any_latent_channels_and_patch_size(channels: int, patch: int) -> None:
    """A 16x16x4 latent with patch 1 (256 tokens) and a 1-channel latent with patch 4 (16 tokens)."""
    space = replace(_tiny_space(), latent_channels=channels, patch_size=patch, bna_blocks=4)
    net = _random_supernet(space)
    x, t, text, mask = _inputs(space)
    for cfg in _configs(space)[:4]:
        static = extract_subnet(net, cfg)
        with torch.no_grad():
            v = net(x, t, text, mask, cfg)
            assert v.shape == x.shape and (v - static(x, t, text, mask)).abs().max() < 1e-5, cfg.describe()
        assert sum(p.numel() for p in static.parameters()) == count_params(cfg, space), cfg.describe()


def test_extracted_subnet_owns_trainable_tensors() -> None:
    """A student cut out of a frozen teacher trains on its own copies; the layout is `StaticDiT`'s."""
    space = _tiny_space()
    net = _random_supernet(space).requires_grad_(False)
    cfg = space.sample(random.Random(7))
    static = extract_subnet(net, cfg)
    storages = {p.untyped_storage().data_ptr() for p in net.parameters()}
    assert all(p.requires_grad and p.untyped_storage().data_ptr() not in storages for p in static.parameters())
    fresh = StaticDiT(space, cfg).state_dict()
    assert {k: v.shape for k, v in static.state_dict().items()} == {k: v.shape for k, v in fresh.items()}


def test_largest_subnet_is_the_dense_model(tiny: tuple[SearchSpace, ElasticDiT]) -> None:
    """The largest sub-DiT uses every stored weight: the supernet's parameters are exactly its
    parameters plus the per-width tables/norms of the other widths."""
    space, net = tiny
    cfg = space.largest()
    other_widths = 0
    for stage in STAGES:
        per_width = 6 + 2  # block modulation table (6, D) and cross-attention LayerNorm (2, D)
        dims = [space.dim(w) for w in space.stages[stage].width if w != cfg.stage(stage).width]
        other_widths += space.max_depth(stage) * per_width * sum(dims)
        if stage == "up":
            other_widths += 2 * sum(dims)  # final (shift, scale) tables
    total = sum(p.numel() for p in net.parameters())
    assert total == count_params(cfg, space) + other_widths
    static = extract_subnet(net, cfg)
    x, t, text, mask = _inputs(space)
    with torch.no_grad():
        torch.testing.assert_close(static(x, t, text, mask), net(x, t, text, mask, cfg), rtol=0, atol=1e-5)


@pytest.mark.parametrize("experiment", ["shapes-32", "snapgenpp-1024"])
def test_param_count_matches_cost_model_on_both_experiments(experiment: str) -> None:
    """Built on the meta device: the deployment supernet (billions of parameters) is never allocated."""
    space = load_space(ROOT / "experiments" / f"{experiment}.toml")
    rng = random.Random(1)
    configs = [space.largest(), space.smallest(), *space.presets().values()] + [space.sample(rng) for _ in range(4)]
    with torch.device("meta"):
        net = ElasticDiT(space)
    for cfg in configs:
        static = extract_subnet(net, cfg)
        assert sum(p.numel() for p in static.parameters()) == count_params(cfg, space), cfg.describe()


def test_features_are_the_final_layer_input(tiny: tuple[SearchSpace, ElasticDiT]) -> None:
    space, net = tiny
    cfg = space.sample(random.Random(3))
    x, t, text, mask = _inputs(space)
    with torch.no_grad():
        v, feats = net(x, t, text, mask, cfg, features=True)
        v_static, feats_static = extract_subnet(net, cfg)(x, t, text, mask, features=True)
    assert feats.shape == (2, space.tokens_outer, space.dim(cfg.up.width))
    torch.testing.assert_close(v, net(x, t, text, mask, cfg))
    torch.testing.assert_close(feats_static, feats, rtol=0, atol=1e-5)


def test_depth_elasticity_runs_only_leading_blocks(tiny: tuple[SearchSpace, ElasticDiT]) -> None:
    space, _ = tiny
    net = _random_supernet(space, seed=5).train()
    cfg = SubnetConfig(down=StageConfig(0.5, 1, 2, "bna", 1), middle=StageConfig(1.0, 1, 3, "full"),
                       up=StageConfig(0.75, 2, 2, "global"))
    net(*_inputs(space), cfg).square().mean().backward()
    assert net.down_blocks[1].ffn_in.weight.grad is None and net.middle_blocks[1].attn.q.weight.grad is None
    assert net.up_blocks[2].skip is None or net.up_blocks[2].skip.weight.grad is None
    assert net.up_blocks[1].ffn_in.weight.grad is not None
    assert net.up_blocks[0].skip.weight.grad is not None  # type: ignore[union-attr]  # fuses Down block 0
    assert net.up_blocks[1].skip.weight.grad is None  # type: ignore[union-attr]  # Down has depth 1: no skip
    # only the active width's per-width parameters get gradients; gate unused for bna/global
    assert net.down_blocks[0].mod_table.tables["d16"].grad is not None
    assert net.down_blocks[0].mod_table.tables["d32"].grad is None
    assert net.down_blocks[0].attn.gate.weight.grad is None  # type: ignore[union-attr]
    assert net.up_blocks[0].attn.compress_k.weight.grad is not None  # type: ignore[union-attr]


def test_default_init_is_adaln_zero(tiny: tuple[SearchSpace, ElasticDiT]) -> None:
    space, _ = tiny
    torch.manual_seed(0)
    with torch.no_grad():
        v = ElasticDiT(space)(*_inputs(space), space.largest())
    assert torch.equal(v, torch.zeros_like(v))


def test_invalid_config_and_inputs_raise(tiny: tuple[SearchSpace, ElasticDiT]) -> None:
    space, net = tiny
    x, t, text, mask = _inputs(space)
    bad = replace(space.largest(), middle=StageConfig(0.625, 1, 2, "full"))
    with pytest.raises(ValueError, match="middle.width"):
        net(x, t, text, mask, bad)
    with pytest.raises(ValueError, match="x must be"):
        net(x[:, :2], t, text, mask, space.largest())
    with pytest.raises(ValueError, match="text_mask"):
        net(x, t, text, mask.float(), space.largest())


@pytest.mark.parametrize(("down", "up"), [(StageConfig(0.75, 2, 3, "global"), StageConfig(1.0, 3, 2, "global")),
                                          (StageConfig(0.5, 1, 2, "bna", 2), StageConfig(0.75, 2, 3, "assa", 1))])
def test_flops_match_cost_model(tiny: tuple[SearchSpace, ElasticDiT], down: StageConfig, up: StageConfig) -> None:
    """FlopCounterMode counts matmuls, convs and SDPA as dense (L x S) products; `hwnas.cost`
    counts the same ops, so they agree exactly, except that FlopCounterMode also counts the
    masked (clipped) window slots of the edge blocks in BNA, which we add to the cost model's
    figure. FlopCounterMode's table lacks the CPU SDPA kernel
    (`_scaled_dot_product_flash_attention_for_cpu`, torch 2.13), so we give it the dense formula
    it uses for the GPU kernels."""
    space, net = tiny
    cfg = SubnetConfig(down=down, middle=StageConfig(0.5, 2, 2, "full"), up=up)
    counter = FlopCounterMode(display=False, custom_mapping={_CPU_SDPA: _sdpa_flops})
    with counter, torch.no_grad():
        extract_subnet(net, cfg)(*_inputs(space, batch=1))
    masked_slot_flops = 0
    for s in (cfg.down, cfg.up):
        if s.has_local:
            n, blocks = space.tokens_outer, space.bna_blocks
            slots = (n // blocks) ** 2 * blocks * (2 * s.radius + 1) - local_key_pairs(n, blocks, s.radius)
            masked_slot_flops += s.depth * 4 * slots * space.dim(s.width)
    assert counter.get_total_flops() == flops_per_step(cfg, space) + masked_slot_flops


def test_builtin_text_encoder_masks_padding() -> None:
    torch.manual_seed(0)
    enc = BuiltinTextEncoder(20, dim=12, layers=2, heads=3, max_len=5)
    assert isinstance(enc, TextEncoder)
    ids = torch.tensor([[3, 7, 2, 0, 0], [0, 0, 0, 0, 0]])
    emb, mask = enc.encode(ids)
    assert emb.shape == (2, 5, 12) and mask.tolist() == [[True] * 3 + [False] * 2, [False] * 5]
    assert torch.isfinite(emb).all()
    ids2 = ids.clone()
    ids2[0, 3:] = 0  # unchanged padding -> unchanged valid embeddings
    torch.testing.assert_close(enc.encode(ids2)[0][0, :3], emb[0, :3])
    with pytest.raises(ValueError, match="token_ids"):
        enc.encode(torch.zeros(1, 6, dtype=torch.long))


def test_text_encoder_output_drives_the_dit(tiny: tuple[SearchSpace, ElasticDiT]) -> None:
    space, net = tiny
    enc = BuiltinTextEncoder(20, dim=space.text_dim, heads=3, max_len=space.text_len)
    emb, mask = enc.encode(torch.tensor([[4, 5, 6, 0, 0], [9, 0, 0, 0, 0]]))
    x, t, _, _ = _inputs(space)
    with torch.no_grad():
        v = net(x, t, emb, mask, space.smallest())
    assert v.shape == x.shape and not torch.allclose(v[0], net(x, t, emb.flip(0), mask.flip(0), space.smallest())[0])


def test_static_model_is_plain_pytorch(tiny: tuple[SearchSpace, ElasticDiT]) -> None:
    space, net = tiny
    static = extract_subnet(net, space.smallest())
    assert isinstance(static, StaticDiT)
    kinds = {type(m).__module__.split(".")[0] for m in static.modules()}
    assert kinds <= {"torch", "hwnas"}
    assert not any("Elastic" in type(m).__name__ or "PerWidth" in type(m).__name__ for m in static.modules())
