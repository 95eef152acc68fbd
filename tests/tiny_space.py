"""Tiny search spaces shared by the tests of several stages (the root conftest puts tests/ on sys.path):
`TINY_EXPERIMENT`, a 16x16 shapes experiment whose supernet trains a step in well under a second, and
`tiny_space`, the builder of the in-memory spaces of the model and cost tests.
"""

from __future__ import annotations

from typing import Any

from hwnas.space import SearchSpace, StageChoices

TINY_MODEL: dict[str, Any] = dict(
    dataset="shapes", resolution=16, latent_downsample=1, latent_channels=3, patch_size=2, hidden_size=32,
    head_dim=8, kv_heads=2, time_dim=16, text_len=5, text_dim=12, bna_blocks=8, kv_compress=2)
"""16x16 RGB, patch 2 -> 8x8 = 64 Down/Up tokens in 8 BNA blocks; hidden 32 = 4 heads of 8, 2 KV heads."""


def tiny_space(name: str, *, down: StageChoices, middle: StageChoices, up: StageChoices | None = None,
               **model: Any) -> SearchSpace:
    """A `TINY_MODEL` space with these stage choices (Up as Down unless given); `model` overrides."""
    return SearchSpace(name=name, stages={"down": down, "middle": middle, "up": up or down}, **{**TINY_MODEL, **model})


TINY_EXPERIMENT = """
[experiment]
name = "tiny-16"
dataset = "shapes"

[model]
resolution = 16
latent_downsample = 1
latent_channels = 3
patch_size = 4
hidden_size = 16
head_dim = 4
kv_heads = 2
time_dim = 16
text_len = 12
text_dim = 16
bna_blocks = 4
kv_compress = 2

[space.down]
width = [0.5, 1.0]
depth = [1, 2]
ffn_ratio = [2, 4]
attn = ["assa", "bna", "global"]
radius = [1]
preset_ffn_ratio = 4

[space.middle]
width = [0.5, 1.0]
depth = [1, 2]
ffn_ratio = [2, 3]
attn = ["full"]
preset_ffn_ratio = 3

[space.up]
width = [0.5, 1.0]
depth = [2, 3]
ffn_ratio = [2, 4]
attn = ["assa", "bna", "global"]
radius = [1]
preset_ffn_ratio = 4

[train]
steps = 4
batch_size = 8
lr = 3e-3
warmup_steps = 2
dataset_size = 64
checkpoint_every = 2
text_layers = 1
"""
