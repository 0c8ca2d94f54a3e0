"""Reference losses of count-based models, so a reader sees whether a trained model has learned more
than word counts: a unigram and a bigram model of the training split, scored on the held-out split.

Both are estimated from the train tokens only and scored as mean next-token cross-entropy (nats per
token) over every held-out transition, the quantity `eval_loss` measures (that averages over the
held-out batches a run evaluates; the references use the whole held-out split).

- unigram: add-one (Laplace) smoothed token frequencies over the full vocabulary;
- bigram: interpolated Kneser-Ney with one absolute discount (0.75, Chen & Goodman's usual value),
  backing off to the continuation unigram, itself mixed with a uniform floor for unseen tokens.

Hand-written with numpy rather than taken from a library: NLTK's `lm` would add a heavy dependency
and is orders of magnitude slower on a million tokens, and the formulas fit in a screenful.
On a corpus larger than `REFERENCE_TRAIN_TOKENS` the models are estimated from its first that many
train tokens (counting pairs of billions of tokens would need tens of GB), which the result says.
Computed once per corpus and cached by its content id (`COMPOSERLITE_CACHE/references/`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from composerlite.data.corpus import cache_root

REFERENCES_VERSION = 1  # bump when a formula changes, to recompute cached values
REFERENCE_TRAIN_TOKENS = 1 << 25  # ~33.5M: a few seconds and under 2 GB of counting
KNESER_NEY_DISCOUNT = 0.75


@dataclass(frozen=True)
class ReferenceLosses:
    unigram: float  # nats/token on the held-out split
    bigram: float
    eval_transitions: int  # held-out next-token predictions scored
    train_tokens: int  # train tokens the models were estimated from


def unigram_loss(train: np.ndarray, heldout: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy of add-one smoothed unigram frequencies, scored on heldout[1:] (the targets)."""
    counts = np.bincount(train.astype(np.int64), minlength=vocab_size).astype(np.float64)
    probabilities = (counts + 1.0) / (counts.sum() + vocab_size)
    return float(-np.log(probabilities[heldout[1:].astype(np.int64)]).mean())


def bigram_loss(train: np.ndarray, heldout: np.ndarray, vocab_size: int,
                discount: float = KNESER_NEY_DISCOUNT) -> float:
    """Cross-entropy of an interpolated Kneser-Ney bigram model on heldout's transitions.

    P(w | v) = max(c(v,w) - D, 0) / c(v) + D * N1+(v,.) / c(v) * P_cont(w)   for seen contexts v,
    P(w | v) = P_cont(w)                                                       for unseen v,
    P_cont(w) = (1 - e) * N1+(.,w) / N1+(.,.) + e / V,  with e = 1 / (N1+(.,.) + 1) for unseen w.
    """
    previous, following = train[:-1].astype(np.int64), train[1:].astype(np.int64)
    pair_keys, pair_counts = np.unique(previous * vocab_size + following, return_counts=True)
    context_counts = np.bincount(previous, minlength=vocab_size).astype(np.float64)
    distinct_followers = np.bincount(pair_keys // vocab_size, minlength=vocab_size).astype(np.float64)
    distinct_preceders = np.bincount(pair_keys % vocab_size, minlength=vocab_size).astype(np.float64)
    floor = 1.0 / (len(pair_keys) + 1)
    continuation = (1 - floor) * distinct_preceders / len(pair_keys) + floor / vocab_size

    context, target = heldout[:-1].astype(np.int64), heldout[1:].astype(np.int64)
    index = np.searchsorted(pair_keys, context * vocab_size + target)
    index = np.minimum(index, len(pair_keys) - 1)
    pair = np.where(pair_keys[index] == context * vocab_size + target, pair_counts[index], 0).astype(np.float64)
    seen = context_counts[context] > 0
    total = np.where(seen, context_counts[context], 1.0)
    discounted = np.maximum(pair - discount, 0.0) / total
    backoff_weight = discount * distinct_followers[context] / total
    probability = np.where(seen, discounted + backoff_weight * continuation[target], continuation[target])
    return float(-np.log(probability).mean())


def compute_references(train: np.ndarray, heldout: np.ndarray, vocab_size: int) -> ReferenceLosses:
    if len(heldout) < 2 or len(train) < 2:
        raise ValueError("reference losses need at least two train and two held-out tokens")
    return ReferenceLosses(unigram_loss(train, heldout, vocab_size), bigram_loss(train, heldout, vocab_size),
                           eval_transitions=len(heldout) - 1, train_tokens=len(train))


def reference_losses(corpus, vocab_size: int) -> ReferenceLosses:
    """The corpus's references (`composerlite.data.Corpus`), from the cache when computed before
    (else computed, from at most `REFERENCE_TRAIN_TOKENS` train tokens, and cached)."""
    path = cache_root() / "references" / f"{corpus.id}.json"
    key = {"version": REFERENCES_VERSION, "vocab_size": vocab_size, "train_tokens": REFERENCE_TRAIN_TOKENS}
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return ReferenceLosses(**stored["losses"])
    losses = compute_references(corpus.train.read(0, REFERENCE_TRAIN_TOKENS), corpus.eval.read(), vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:  # published whole by the rename: a reader never sees half
        json.dump({"key": key, "losses": asdict(losses)}, file)
    os.replace(temporary, path)
    return losses
