"""Data pipeline: GPT-2 tokenizer, data sources, cached tokenized corpora and batch streams."""

import importlib

from composerlite.data.errors import DataError

# Imported on first use: the pipeline imports numpy, tiktoken and torch, which the command line's
# usage checks (and its `except DataError`) do not need.
_LAZY = {
    "Corpus": "composerlite.data.corpus",
    "prepare_corpus": "composerlite.data.corpus",
    "BatchStream": "composerlite.data.loader",
    "GPT2Tokenizer": "composerlite.data.tokenizer",
    "load_tokenizer": "composerlite.data.tokenizer",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BatchStream", "Corpus", "DataError", "GPT2Tokenizer", "load_tokenizer", "prepare_corpus"]
