from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hwnas.data.shapes import ShapesDataset
from hwnas.data.tokenizer import BOS_ID, PAD_ID, UNK_ID, Tokenizer, words


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_texts(ShapesDataset("train", size=1).captions)


def test_vocabulary_is_deterministic() -> None:
    texts = ["a red circle", "two blue squares", "a red square"]
    a, b = Tokenizer.from_texts(texts), Tokenizer.from_texts(texts[::-1])
    assert a == b and a.vocab[:2] == ("a", "red")  # most frequent first
    assert a.vocab_size == len(a.vocab) + 3
    assert Tokenizer.from_texts(texts, max_vocab=2).vocab == ("a", "red")
    assert Tokenizer.from_texts(texts, min_count=2).vocab == ("a", "red")  # "square" != "squares"


def test_round_trip_bos_and_padding(tok: Tokenizer) -> None:
    texts = ["a red circle left of a blue square", "three cyan triangles", ""]
    ids = tok.encode(texts, 12)
    assert ids.shape == (3, 12) and ids.dtype == torch.long
    assert (ids[:, 0] == BOS_ID).all()
    assert ids[2].tolist() == [BOS_ID] + [PAD_ID] * 11  # the null prompt
    assert ids[1, 4:].eq(PAD_ID).all() and ids[1, 1:4].ge(3).all()
    assert tok.decode(ids) == texts


@pytest.mark.parametrize(
    "text, max_len, expected",
    [
        ("a red circle", 2, "a"),  # truncated after BOS
        ("a purple circle", 8, "a <unk> circle"),
        ("A Red, circle!", 8, "a red circle"),
    ],
)
def test_encode_edge_cases(tok: Tokenizer, text: str, max_len: int, expected: str) -> None:
    ids = tok.encode([text], max_len)
    assert ids.shape == (1, max_len) and tok.decode(ids) == [expected]


def test_unknown_and_single_string(tok: Tokenizer) -> None:
    assert tok.encode("a zebra", 4).tolist() == [[BOS_ID, tok.encode("a", 2)[0, 1].item(), UNK_ID, PAD_ID]]


def test_save_load(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "tok.json"
    tok.save(path)
    assert Tokenizer.load(path) == tok
    path.write_text('{"vocab": ["a"]}')
    with pytest.raises(ValueError, match="specials"):
        Tokenizer.load(path)


@pytest.mark.parametrize("vocab", [("a", "a"), ("Red",), ("two words",)])
def test_bad_vocab(vocab: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        Tokenizer(vocab)


def test_bad_max_len(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="max_len"):
        tok.encode(["a"], 0)


def test_words() -> None:
    assert words("A red-circle, left of...") == ["a", "red", "circle", "left", "of"]


def test_dict_round_trip_and_bad_ids(tok: Tokenizer) -> None:
    assert Tokenizer.from_dict(tok.to_dict()) == tok
    with pytest.raises(ValueError, match="token ids"):
        tok.decode([[1, tok.vocab_size]])
