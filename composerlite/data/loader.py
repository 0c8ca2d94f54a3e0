"""Deterministic, resumable, rank-sharded batches of fixed-length token windows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from composerlite.data.errors import DataError


class BatchStream:
    """Batches of non-overlapping `seq_len` windows of a flat token array.

    The window order of epoch `e` is `default_rng([seed, e]).permutation(...)`, so it is the same on
    every rank and every rerun; rank `r` takes every `world_size`-th window of it, which makes the
    ranks disjoint with equal batch counts. Labels come from the model's own shift, so windows
    do not overlap by one token.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int = 128,
        batch_size: int = 8,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ) -> None:
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.tokens_per_batch = batch_size * seq_len
        self._n_windows = len(tokens) // seq_len
        self._windows = tokens[: self._n_windows * seq_len].reshape(self._n_windows, seq_len)
        self._n_batches = self._n_windows // world_size // batch_size
        if self._n_batches == 0:
            needed = self.tokens_per_batch * world_size
            ranks = f" ({world_size} ranks x {self.tokens_per_batch})" if world_size > 1 else ""
            raise DataError(
                f"data set has {len(tokens)} tokens but one batch needs {needed}{ranks}:"
                " use more data or a smaller batch_size/seq_len"
            )

    def __len__(self) -> int:
        """Full batches per epoch on this rank (the ragged end of the epoch is dropped)."""
        return self._n_batches

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches `start_batch`, `start_batch + 1`, ... of `epoch`; skipped batches are never read."""
        if not 0 <= start_batch <= self._n_batches:
            raise DataError(f"start_batch must be in [0, {self._n_batches}], got {start_batch}")
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self._n_windows)
        else:
            order = np.arange(self._n_windows)
        used_windows = order[: self._n_batches * self.batch_size * self.world_size]
        rank_windows = used_windows[self.rank :: self.world_size]
        for batch in range(start_batch, self._n_batches):
            window_ids = rank_windows[batch * self.batch_size : (batch + 1) * self.batch_size]
            # Fancy indexing copies out of the memmap; the int64 cast gives a fresh, writable array.
            yield {"input_ids": torch.from_numpy(self._windows[window_ids].astype(np.int64))}
