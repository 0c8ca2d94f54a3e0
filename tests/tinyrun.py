"""Helpers for the algorithm and plugin tests: a gpt2-tiny Trainer on random tokens, in fp32.

Random tokens, not a tokenized corpus: these tests check mechanics (events, surgery, checkpoints,
composition), and skipping the tokenizer keeps each tiny run well under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from composerlite.core.logger import Logger
from composerlite.data import BatchStream
from composerlite.models import build_model
from composerlite.observe.loggers import JSONLinesLogger
from composerlite.run.loop import Trainer, seed_everything

VOCAB = 50257

# Options that keep a CPU test run cheap without changing what is being tested (which algorithms
# compose, that state resumes): inductor's CPU compile takes tens of seconds per run, Dynamo's
# eager backend traces the same graph in a few.
CHEAP_ON_CPU = {"compile": {"backend": "eager"}}


def tokens(n: int = 4096, seed: int = 0, vocab_size: int = VOCAB) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, n).astype(np.uint16)


def tiny_trainer(run_dir: Path, algorithms=(), *, max_duration="2ba", seq_len=16, batch_size=2, seed=0,
                 warmup="1ba", eval_interval=None, save_interval=None, load_path=None, callbacks=(), dropout=0.0,
                 vocab_size=VOCAB, evaluate=True, **settings) -> Trainer:
    """gpt2-tiny on random tokens. A small `vocab_size` makes a step several times cheaper (the
    50257-row embedding dominates gpt2-tiny), for tests that run many short trainings. `settings`
    are the Trainer's, by flat key."""
    seed_everything(seed)
    model = build_model("gpt2-tiny", dropout=dropout, vocab_size=vocab_size)
    return Trainer(
        {"max_duration": max_duration, "run_dir": str(run_dir), "lr": 1e-3, "weight_decay": 0.1, "warmup": warmup,
         "eval_interval": eval_interval, "eval_batches": 2, "save_interval": save_interval, "seed": seed, "device": "cpu",
         "precision": "fp32", **settings},
        model=model,
        train_data=BatchStream(tokens(vocab_size=vocab_size), seq_len=seq_len, batch_size=batch_size, seed=seed),
        eval_data=BatchStream(tokens(1024, 1, vocab_size), seq_len=seq_len, batch_size=batch_size, shuffle=False)
        if evaluate else None,
        logger=Logger([JSONLinesLogger(Path(run_dir) / "metrics.jsonl")]),
        algorithms=algorithms,
        callbacks=callbacks,
        load_path=load_path,
    )


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def same(a, b) -> bool:
    """Exact equality of nested state (tensors bit for bit, then lists, dicts and plain values)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b
