"""Data pipeline: GPT-2 tokenizer, data sources, cached tokenized corpora and batch streams."""

from composerlite.data.corpus import Corpus, prepare_corpus
from composerlite.data.errors import DataError
from composerlite.data.loader import BatchStream
from composerlite.data.tokenizer import GPT2Tokenizer, load_tokenizer

__all__ = ["BatchStream", "Corpus", "DataError", "GPT2Tokenizer", "load_tokenizer", "prepare_corpus"]
