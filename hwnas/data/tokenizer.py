"""A word-level tokenizer for the built-in datasets' short captions.

Words are lowercase runs of letters and digits (punctuation is dropped). Ids: PAD_ID = 0,
BOS_ID = 1, UNK_ID = 2, then the vocabulary from 3. Every encoded row starts with BOS, so no row is
all padding and the empty caption (classifier-free guidance's null prompt) encodes to BOS alone.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hwnas.io import atomic_write_text

PAD_ID, BOS_ID, UNK_ID = 0, 1, 2
SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<unk>")
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """"A red circle, left of..." -> ["a", "red", "circle", "left", "of"]."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Tokenizer:
    """`vocab`: the words, id = position + 3. Build with `from_texts`, persist with `save`/`load`."""

    vocab: tuple[str, ...]
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)  # word -> id, set by __post_init__

    def __post_init__(self) -> None:
        dup = sorted(w for w, n in Counter(self.vocab).items() if n > 1)
        if dup:
            raise ValueError(f"vocab has duplicate words: {dup}")
        bad = [w for w in self.vocab if not _WORD.fullmatch(w)]
        if bad:
            raise ValueError(f"vocab words are lowercase letters/digits, got {bad[:5]!r}")
        object.__setattr__(self, "_ids", {w: i + len(SPECIALS) for i, w in enumerate(self.vocab)})

    @classmethod
    def from_texts(
        cls, texts: Iterable[str], *, max_vocab: int | None = None, min_count: int = 1
    ) -> Tokenizer:
        """Vocabulary of `texts`, most frequent first, ties alphabetical (so the order does not
        depend on the order of texts); at most `max_vocab` words seen at least `min_count` times."""
        counts = Counter(w for t in texts for w in words(t))
        ranked = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(tuple(ranked[:max_vocab] if max_vocab is not None else ranked))

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included (the embedding table size)."""
        return len(self.vocab) + len(SPECIALS)

    def encode(self, texts: Sequence[str] | str, max_len: int = 16) -> torch.Tensor:
        """(B, max_len) int64: BOS, word ids (unknown words UNK_ID), then PAD_ID; truncated to
        max_len. A single string is a batch of one."""
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len must be a positive integer, got {max_len!r}")
        out = torch.full((len(texts), max_len), PAD_ID, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [BOS_ID] + [self._ids.get(w, UNK_ID) for w in words(text)]
            out[row, : min(len(ids), max_len)] = torch.tensor(ids[:max_len])
        return out

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """(B, L) ids -> B texts; PAD and BOS dropped, UNK shown as "<unk>"."""
        rows = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        texts = []
        for row in rows:
            bad = [i for i in row if not 0 <= i < self.vocab_size]
            if bad:
                raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {bad[:5]}")
            toks = [self.vocab[i - len(SPECIALS)] if i >= len(SPECIALS) else SPECIALS[i] for i in row]
            texts.append(" ".join(t for t in toks if t not in ("<pad>", "<bos>")))
        return texts

    def to_dict(self) -> dict[str, list[str]]:
        return {"specials": list(SPECIALS), "vocab": list(self.vocab)}

    @classmethod
    def from_dict(cls, data: Any) -> Tokenizer:
        ok = isinstance(data, dict) and data.get("specials") == list(SPECIALS)
        if not ok or not isinstance(data.get("vocab"), list):
            want = f"{{'specials': {list(SPECIALS)}, 'vocab': [...]}}"
            raise ValueError(f"a tokenizer is {want}, got {str(data)[:80]!r}")
        return cls(tuple(data["vocab"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
