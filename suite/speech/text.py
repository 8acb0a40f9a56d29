"""Transcripts for CTC: one normalisation, a character vocabulary, and greedy decoding.

The vocabulary is what Hugging Face's ``Wav2Vec2CTCTokenizer`` expects: one token per character, a word
delimiter ``|`` in place of spaces, and ``<pad>`` at id 0 doubling as the CTC blank (HF's ``Wav2Vec2ForCTC``
uses ``pad_token_id`` as the blank). ``to_dict`` is a plain token list in id order plus the names of the
special tokens, so the torch-free runtime can decode with nothing else. Nothing here imports torch.
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BLANK, DELIMITER, UNK = "<pad>", "|", "<unk>"
KEPT = "abcdefghijklmnopqrstuvwxyz0123456789'"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_WORD_BREAKS = re.compile(r"[\s\-\u2010-\u2015_/]+")  # hyphens and dashes split words: "twenty-one" -> "twenty one"
_DROPPED = re.compile(f"[^{re.escape(KEPT)} ]")


def normalize(text: str) -> str:
    """The transcript as the model learns it: lower-case ``a-z``, ``0-9``, ``'`` and single spaces.

    Accents are removed (``café`` -> ``cafe``), typographic apostrophes become ``'``, hyphens, dashes,
    underscores and slashes separate words, and every other character (punctuation, other scripts) is
    dropped. A transcript with nothing left is empty and its clip is skipped by the data scan.
    """
    text = unicodedata.normalize("NFKD", text).lower().translate(_APOSTROPHES)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = _DROPPED.sub("", _WORD_BREAKS.sub(" ", text))
    return " ".join(text.split())


def ctc_min_frames(tokens: Sequence) -> int:
    """Frames CTC needs for a label: one per token plus a blank between equal neighbours (``ll`` needs 3).

    ``tokens``: token ids, or a normalised transcript (its characters map one to one onto tokens).
    """
    return len(tokens) + sum(1 for a, b in zip(tokens, tokens[1:]) if a == b)


@dataclass(frozen=True)
class Vocab:
    """Character tokens in id order; ``tokens[0]`` is the blank (also the padding token)."""

    tokens: tuple[str, ...]
    blank: str = BLANK
    delimiter: str = DELIMITER
    unk: str = UNK
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        if len(set(tokens)) != len(tokens) or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError(f"vocabulary tokens must be distinct non-empty strings, got {list(tokens)[:20]}")
        missing = [t for t in (self.blank, self.delimiter, self.unk) if t not in tokens]
        if missing:
            raise ValueError(f"vocabulary lacks the special token(s) {missing}")
        if tokens[0] != self.blank:
            raise ValueError(f"the blank {self.blank!r} must be token 0 (CTC blank = pad id), got {tokens[0]!r}")
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(tokens)})

    @classmethod
    def build(cls, texts: Iterable[str]) -> Vocab:
        """``<pad>``, ``<unk>``, then every character of the normalised texts, sorted (space as ``|``)."""
        chars = {c for text in texts for c in normalize(text)}
        chars.discard(" ")
        return cls((BLANK, UNK, *sorted(chars), DELIMITER))

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def blank_id(self) -> int:
        return 0

    @property
    def delimiter_id(self) -> int:
        return self._index[self.delimiter]

    @property
    def unk_id(self) -> int:
        return self._index[self.unk]

    @staticmethod
    def normalize(text: str) -> str:
        return normalize(text)

    def encode(self, text: str) -> list[int]:
        """Token ids of the normalised text; characters the vocabulary lacks become ``<unk>``."""
        unk = self.unk_id
        return [self._index.get(self.delimiter if c == " " else c, unk) for c in normalize(text)]

    def decode_ids(self, ids: Iterable[int]) -> str:
        """Tokens to text: ``|`` becomes a space; blanks, ``<unk>`` and label padding (negative ids) are dropped.

        Repeats are kept: collapsing them is CTC decoding (``greedy_decode``), not detokenising.
        """
        out = []
        for i in ids:
            i = int(i)
            if i < 0 or i == self.blank_id or i == self.unk_id:
                continue
            if i >= len(self.tokens):
                raise ValueError(f"token id {i} is outside the vocabulary of {len(self.tokens)} tokens")
            out.append(" " if i == self.delimiter_id else self.tokens[i])
        return " ".join("".join(out).split())

    def greedy_decode(self, logits_or_ids: Any, lengths: Sequence[int] | None = None) -> list[str]:
        """Best-path CTC decoding of a batch: argmax per frame, collapse repeats, drop blanks.

        ``logits_or_ids``: [B, T, V] scores (torch or numpy) or [B, T] frame ids; ``lengths``: valid frames per
        row, so frames decoded from padding are ignored.
        """
        values = logits_or_ids.detach().cpu().numpy() if hasattr(logits_or_ids, "detach") else logits_or_ids
        values = np.asarray(values)
        ids = values.argmax(-1) if values.ndim == 3 else values
        if ids.ndim != 2:
            raise ValueError(f"expected [batch, frames, vocab] scores or [batch, frames] ids, got shape {values.shape}")
        texts = []
        for b, row in enumerate(ids):
            row = row[: int(lengths[b])] if lengths is not None else row
            keep = np.ones(len(row), dtype=bool)
            keep[1:] = row[1:] != row[:-1]
            texts.append(self.decode_ids(row[keep]))
        return texts

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: the tokens in id order and the special tokens' names (model.json's ``vocab``)."""
        return {"tokens": list(self.tokens), "blank": self.blank, "delimiter": self.delimiter, "unk": self.unk}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Vocab:
        return cls(tuple(spec["tokens"]), spec.get("blank", BLANK), spec.get("delimiter", DELIMITER),
                   spec.get("unk", UNK))
