"""Text encoders: the `TextEncoder` interface the DiT's cross-attention reads, and a small
built-in transformer encoder trained jointly on the built-in datasets.

The DiT only sees `(emb (B, L, Ct), mask (B, L))`, so any encoder plugs in by implementing
`encode`. For example a frozen CLIP or T5 from `transformers`, projected to the experiment's
`text_dim` (not a dependency of hwnas; shown for illustration):

    class HFTextEncoder(TextEncoder):
        def __init__(self, name: str, *, dim: int, max_len: int) -> None:
            super().__init__()
            self.backbone = transformers.AutoModel.from_pretrained(name).get_encoder()  # T5
            self.backbone.requires_grad_(False)
            self.proj = nn.Linear(self.backbone.config.d_model, dim)
            self.dim, self.max_len = dim, max_len

        def encode(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mask = token_ids != self.backbone.config.pad_token_id  # (B, L)
            hidden = self.backbone(input_ids=token_ids, attention_mask=mask).last_hidden_state
            return self.proj(hidden), mask  # (B, L, dim), (B, L)

Token ids then come from that model's own tokenizer, padded or cut to `max_len`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from hwnas.model.attention import merge_heads, split_heads

PAD_ID = 0


class TextEncoder(nn.Module, ABC):
    """Maps token ids `(B, L)` to embeddings `(B, L, dim)` and a validity mask `(B, L)` (True =
    real token). Subclasses set `dim` (the experiment's `text_dim`) and `max_len`."""

    dim: int
    max_len: int

    @abstractmethod
    def encode(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """token_ids `(B, L)` int64 -> (embeddings `(B, L, dim)`, mask `(B, L)` bool)."""

    def forward(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(token_ids)


class _EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer: self-attention with a key padding mask, GELU MLP."""

    def __init__(self, dim: int, *, heads: int, ffn_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn_ratio * dim), nn.GELU(), nn.Linear(ffn_ratio * dim, dim))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        """x `(B, L, dim)`, key_mask `(B, 1, 1, L)` bool with at least one True per row."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # (B, L, dim) each
        out = F.scaled_dot_product_attention(split_heads(q, self.heads), split_heads(k, self.heads),
                                             split_heads(v, self.heads), attn_mask=key_mask)  # (B, h, L, hd)
        x = x + self.proj(merge_heads(out))
        return x + self.mlp(self.norm2(x))  # (B, L, dim)


class BuiltinTextEncoder(TextEncoder):
    """Token embedding + learned positions + `layers` pre-norm transformer layers + LayerNorm.

    Token id 0 is padding: it is masked as a key inside the encoder and reported invalid in the
    returned mask. An all-padding row (the unconditional prompt of classifier-free guidance)
    gets an all-False mask; the DiT's cross-attention then contributes no attention output.
    """

    def __init__(self, vocab_size: int, dim: int, *, layers: int = 2, heads: int = 4, max_len: int = 16,
                 ffn_ratio: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.dim, self.max_len, self.vocab_size = dim, max_len, vocab_size
        self.token = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.position = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        self.layers = nn.ModuleList([_EncoderLayer(dim, heads=heads, ffn_ratio=ffn_ratio) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.token.weight, std=0.02)
        with torch.no_grad():
            self.token.weight[PAD_ID].zero_()

    def encode(self, token_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if token_ids.ndim != 2 or token_ids.shape[1] > self.max_len:
            raise ValueError(f"token_ids must be (B, L <= {self.max_len}), got {tuple(token_ids.shape)}")
        mask = token_ids != PAD_ID  # (B, L)
        x = self.token(token_ids) + self.position[: token_ids.shape[1]]  # (B, L, dim)
        key_mask = (mask | ~mask.any(dim=-1, keepdim=True))[:, None, None, :]  # all-pad rows: see all
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.norm(x), mask  # (B, L, dim), (B, L)
