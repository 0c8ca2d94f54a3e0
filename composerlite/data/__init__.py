"""Data pipeline: GPT-2 tokenizer, streamed sources, prepared corpora (token shards plus a manifest,
local or at an fsspec URL) and batch streams that read them a block at a time."""

from composerlite.data.errors import DataError
from composerlite.lazy import lazy_attributes

# Imported on first use: the pipeline imports numpy, tiktoken and torch, which the command line's
# usage checks (and its `except DataError`) do not need.
_LAZY = {
    "Corpus": "composerlite.data.corpus",
    "open_corpus": "composerlite.data.corpus",
    "prepare_corpus": "composerlite.data.corpus",
    "BatchStream": "composerlite.data.loader",
    "GPT2Tokenizer": "composerlite.data.tokenizer",
    "load_tokenizer": "composerlite.data.tokenizer",
}
__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["BatchStream", "Corpus", "DataError", "GPT2Tokenizer", "load_tokenizer", "open_corpus", "prepare_corpus"]
