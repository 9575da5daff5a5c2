"""Tokenizers for language prompts.

* ``builtin`` (our own presets): a deterministic word-level tokenizer that needs no files —
  ids 0 pad, 1 eos, 2 bos, 3 unk, integers 0..255 and −1 get their own ids (so pi0.5's
  discretised state is exact), every other word is hashed (crc32) into the rest of the vocab.
* a local tokenizer for real checkpoints: a folder or file with ``tokenizer.json`` (needs the
  ``tokenizers`` package) or ``tokenizer.model`` (needs ``sentencepiece``), or a Hub id found in
  the Hugging Face cache (``hub.resolve``); the error says which file, cache or package is missing.

Every tokenizer returns right-padded (B, max_length) ids and a bool mask, like lerobot's
``TokenizerProcessorStep(padding="max_length", padding_side="right", truncation=True)``.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

PAD, EOS, BOS, UNK = 0, 1, 2, 3
_NUM_BASE = 4  # ids 4..259: integers 0..255; 260: "-1"
_MINUS_ONE = _NUM_BASE + 256
_WORD_BASE = _MINUS_ONE + 1
_WORD = re.compile(r"-?\d+|\w+|[^\w\s]|\n")


class Tokenizer(Protocol):
    vocab_size: int

    def __call__(self, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]: ...


def _pad(ids: list[list[int]], max_length: int) -> tuple[Tensor, Tensor]:
    out = torch.zeros(len(ids), max_length, dtype=torch.long)
    mask = torch.zeros(len(ids), max_length, dtype=torch.bool)
    for i, seq in enumerate(ids):
        seq = seq[:max_length]
        out[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = True
    return out, mask


class BuiltinTokenizer:
    """Word-level, hash-bucketed, file-free. Good enough for short robot instructions."""

    def __init__(self, vocab_size: int) -> None:
        if vocab_size < _WORD_BASE + 16:
            raise ValueError(f"the built-in tokenizer needs vocab_size >= {_WORD_BASE + 16}, got {vocab_size}")
        self.vocab_size = vocab_size

    def token_id(self, word: str) -> int:
        if word.isdigit() and int(word) < 256:
            return _NUM_BASE + int(word)
        if word == "-1":
            return _MINUS_ONE
        return _WORD_BASE + zlib.crc32(word.lower().encode()) % (self.vocab_size - _WORD_BASE)

    def __call__(self, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
        return _pad([[BOS] + [self.token_id(w) for w in _WORD.findall(t)] for t in texts], max_length)


class HFTokenizer:
    """A local ``tokenizer.json`` through the ``tokenizers`` package (PaliGemma's is one)."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError:
            raise ImportError(f"{path} needs the `tokenizers` package: pip install tokenizers") from None
        self.tok = _Tok.from_file(str(path))
        self.vocab_size = self.tok.get_vocab_size()

    def __call__(self, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
        return _pad([enc.ids for enc in self.tok.encode_batch(texts)], max_length)


class SentencePieceTokenizer:
    """A local ``tokenizer.model`` (PaliGemma/Gemma's sentencepiece model), bos prepended as HF does."""

    def __init__(self, path: Path) -> None:
        try:
            import sentencepiece as spm
        except ImportError:
            raise ImportError(f"{path} needs the `sentencepiece` package: pip install sentencepiece") from None
        self.sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = self.sp.get_piece_size()

    def __call__(self, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
        return _pad([[self.sp.bos_id()] + self.sp.encode(t) for t in texts], max_length)


def load_tokenizer(spec: str, vocab_size: int) -> Tokenizer:
    """``"builtin"``, a local path (folder with tokenizer.json / tokenizer.model, or the file) or a
    Hub id (``google/paligemma-3b-pt-224``) in the local Hugging Face cache."""
    if spec == "builtin":
        return BuiltinTokenizer(vocab_size)
    from .hub import resolve

    path = resolve(spec, what="tokenizer")
    candidates = [path] if path.is_file() else [path / "tokenizer.json", path / "tokenizer.model"]
    for c in candidates:
        if c.is_file():
            return HFTokenizer(c) if c.suffix == ".json" else SentencePieceTokenizer(c)
    raise FileNotFoundError(
        f"tokenizer {spec!r} not found: expected tokenizer.json or tokenizer.model at {path}. Real pi0/pi0.5 "
        "checkpoints need PaliGemma's tokenizer (google/paligemma-3b-pt-224): fill the Hugging Face cache with "
        "`hf download google/paligemma-3b-pt-224` or copy it to a local folder and pass tokenizer=<folder>; "
        "use tokenizer='builtin' for our own presets."
    )
