"""The trained proxy supernet as one object: elastic DiT + text encoder + tokenizer + space.

`load_supernet()` without a path loads the proxy checkpoint that ships with hwnas
(`checkpoints/shapes-32/`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hwnas.data import Tokenizer
from hwnas.model import BuiltinTextEncoder, ElasticDiT
from hwnas.paths import REPO_ROOT
from hwnas.space import SearchSpace, SubnetConfig, parse_space
from hwnas.train.checkpoint import load_weights, prefixed, unprefixed
from hwnas.train.flow import guided_velocity

DEFAULT_CHECKPOINT = REPO_ROOT / "checkpoints" / "shapes-32"


@dataclass
class Supernet:
    space: SearchSpace
    dit: ElasticDiT
    text: BuiltinTextEncoder
    tokenizer: Tokenizer
    meta: dict[str, Any] = field(default_factory=dict)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> text embeddings (B, L, Ct) and mask (B, L), on the text encoder's device."""
        ids = self.tokenizer.encode(captions, max_len=self.space.text_len)
        return self.text.encode(ids.to(next(self.text.parameters()).device))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**prefixed("dit", self.dit.state_dict()), **prefixed("text", self.text.state_dict())}

    def eval(self) -> Supernet:
        self.dit.eval()
        self.text.eval()
        return self

    @torch.no_grad()
    def velocity(self, x: torch.Tensor, t: torch.Tensor, cfg: SubnetConfig, *, emb: torch.Tensor,
                 mask: torch.Tensor, null: tuple[torch.Tensor, torch.Tensor] | None = None,
                 cfg_scale: float = 1.0) -> torch.Tensor:
        """v(x, t) of sub-DiT `cfg`; with `null` text and `cfg_scale` != 1, classifier-free guided."""
        return guided_velocity(lambda *inputs: self.dit(*inputs, cfg), x, t, emb=emb, mask=mask, null=null,
                               cfg_scale=cfg_scale)


def build_supernet(space: SearchSpace, tokenizer: Tokenizer, *, text_layers: int) -> Supernet:
    dit = ElasticDiT(space)
    text = BuiltinTextEncoder(tokenizer.vocab_size, dim=space.text_dim, layers=text_layers,
                              max_len=space.text_len)
    return Supernet(space=space, dit=dit, text=text, tokenizer=tokenizer)


def load_supernet(path: str | Path | None = None) -> Supernet:
    """Load a checkpoint directory written by `hwnas train` (default: the shipped proxy)."""
    directory = Path(path) if path is not None else DEFAULT_CHECKPOINT
    tensors, meta = load_weights(directory)
    try:
        space = parse_space(meta["experiment_toml"], source=f"{directory} (stored experiment)")
        tokenizer = Tokenizer.from_dict(meta["tokenizer"])
        net = build_supernet(space, tokenizer, text_layers=int(meta["train"]["text_layers"]))
        net.dit.load_state_dict(unprefixed("dit", tensors))
        net.text.load_state_dict(unprefixed("text", tensors))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{directory}: checkpoint does not match this hwnas version ({exc})") from None
    net.meta = meta
    return net.eval()
