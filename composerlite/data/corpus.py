"""Tokenize a source once into flat uint16 token files (train + held-out eval), cached on disk.

Later runs on unchanged data memory-map the cache instead of re-tokenizing. The eval split is chosen
by document with a fixed seed, so runs with different training seeds evaluate on the same text.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from composerlite.data.errors import DataError
from composerlite.data.sources import Source, resolve_source
from composerlite.data.tokenizer import GPT2Tokenizer, load_tokenizer

# Bump when the cache layout or the packing/splitting rules change, to invalidate old caches.
CACHE_FORMAT_VERSION = 1
EVAL_SPLIT_SEED = 20240101
# Documents tokenized per encode_batch call: keeps Python int lists (≈30 bytes/token) bounded.
TOKENIZE_CHUNK_DOCUMENTS = 2048
TRAIN_FILE, EVAL_FILE, META_FILE = "train.npy", "eval.npy", "meta.json"


@dataclass
class Corpus:
    name: str
    train_tokens: np.ndarray  # 1-D uint16, memory-mapped
    eval_tokens: np.ndarray  # 1-D uint16, memory-mapped
    n_documents: int
    source_description: str
    cache_path: Path  # folder holding train.npy, eval.npy and meta.json


def prepare_corpus(
    spec: str | None, cache_dir: str | Path | None = None, eval_fraction: float = 0.02
) -> Corpus:
    """Tokenized train/eval tokens for `spec` (see `composerlite.data.sources`), built once and cached."""
    if not 0 <= eval_fraction < 1:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    source = resolve_source(spec)
    tokenizer = load_tokenizer()
    cache_key = hashlib.sha256(
        json.dumps([CACHE_FORMAT_VERSION, tokenizer.identity, source.identity(), eval_fraction]).encode()
    ).hexdigest()[:20]
    cache_path = _cache_root(cache_dir) / f"{_slug(source.name)}-{cache_key}"
    if not (cache_path / META_FILE).exists():
        _build_cache(source, tokenizer, eval_fraction, cache_path)
    meta = json.loads((cache_path / META_FILE).read_text())
    return Corpus(
        name=source.name,
        train_tokens=np.load(cache_path / TRAIN_FILE, mmap_mode="r"),
        eval_tokens=np.load(cache_path / EVAL_FILE, mmap_mode="r"),
        n_documents=meta["n_documents"],
        source_description=source.description,
        cache_path=cache_path,
    )


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("COMPOSERLITE_CACHE") or Path.home() / ".cache" / "composerlite"
    return Path(cache_dir).expanduser()


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name)[:60]


def _build_cache(source: Source, tokenizer: GPT2Tokenizer, eval_fraction: float, cache_path: Path) -> None:
    """Tokenize `source` and publish the cache folder atomically: readers see all of it or none."""
    documents = source.documents()
    if not documents:
        raise DataError(f"no text found in {source.description}")
    train_tokens, eval_tokens = _split_and_pack(documents, tokenizer, eval_fraction)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_path.parent, prefix=f".{cache_path.name}."))
    try:
        np.save(staging / TRAIN_FILE, train_tokens)
        np.save(staging / EVAL_FILE, eval_tokens)
        meta = {
            "n_documents": len(documents),
            "eval_fraction": eval_fraction,
            "n_train_tokens": len(train_tokens),
            "n_eval_tokens": len(eval_tokens),
            "tokenizer": tokenizer.identity,
            "source": source.description,
        }
        (staging / META_FILE).write_text(json.dumps(meta, indent=1))
        try:
            os.replace(staging, cache_path)
        except OSError:
            if not (cache_path / META_FILE).exists():
                raise  # not just a concurrent process that published the same cache first
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _split_and_pack(
    documents: list[str], tokenizer: GPT2Tokenizer, eval_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Train and eval token streams, each document followed by end-of-text.

    Eval documents are picked with a fixed seed (at least one when there are two or more documents);
    a single document is split by tokens instead: its last `eval_fraction` goes to eval.
    """
    is_eval = _eval_document_mask(len(documents), eval_fraction)
    train_parts, eval_parts = [], []
    for start in range(0, len(documents), TOKENIZE_CHUNK_DOCUMENTS):
        chunk = tokenizer.encode_batch(documents[start : start + TOKENIZE_CHUNK_DOCUMENTS])
        for document_eval, tokens in zip(is_eval[start:], chunk):
            tokens.append(tokenizer.eot_token)
            (eval_parts if document_eval else train_parts).append(np.array(tokens, dtype=np.uint16))
    train_tokens = np.concatenate(train_parts) if train_parts else np.empty(0, np.uint16)
    eval_tokens = np.concatenate(eval_parts) if eval_parts else np.empty(0, np.uint16)
    if len(documents) == 1 and eval_fraction > 0:
        n_train = len(train_tokens) - min(math.ceil(eval_fraction * len(train_tokens)), len(train_tokens) - 1)
        train_tokens, eval_tokens = train_tokens[:n_train], train_tokens[n_train:]
    return train_tokens, eval_tokens


def _eval_document_mask(n_documents: int, eval_fraction: float) -> np.ndarray:
    """Which documents are held out; depends only on the document count, never on a training seed."""
    n_eval = 0
    if n_documents >= 2 and eval_fraction > 0:
        n_eval = min(max(1, round(eval_fraction * n_documents)), n_documents - 1)
    is_eval = np.zeros(n_documents, dtype=bool)
    is_eval[np.random.default_rng(EVAL_SPLIT_SEED).permutation(n_documents)[:n_eval]] = True
    return is_eval
