"""Deterministic, resumable, rank-sharded batches of fixed-length token windows, read in whole blocks.

A split's tokens come as consecutive blocks (`TokenBlocks`): a block is a fixed-size run of the
token stream that the corpus layer reads with one sequential read. The stream reads whole blocks,
never single windows, and each rank reads only the blocks it trains on. Below, T = seq_len,
b = batch_size (per rank), W = world_size and B = b * W, the global batch.

- Windows live inside blocks: block i (length len_i) has n_i = len_i // T windows; window (i, j) is
  its tokens [j*T, (j+1)*T). Tokens past a block's last whole window are dropped.
- Orders of epoch e: block i's window order is `default_rng([seed, e]).permutation(n_0)` when there
  is one block, else `default_rng([seed, e, 1 + i]).permutation(n_i)`; the block order P is
  `default_rng([seed, e, 0]).permutation(n_blocks)` (drawn only when n_blocks > 1). shuffle=False
  makes every order the identity.
- Lanes: lane l holds blocks P[l], P[l + L], ... and its window sequence is their windows, each
  block in its window order, one block after the other. Each lane gives s = B // L consecutive
  windows of its sequence to every global batch. L is a power of two that divides B, at most
  MAX_LANES and n_blocks: doubled from 1 while the epoch keeps 99% of the batches one lane gives
  (lanes end unevenly, see len()), so a corpus of a few blocks is not cut to its shortest lane.
- Global batch k is lane 0's windows [k*s, (k+1)*s), then lane 1's, ..., then lane L-1's; rank r
  takes its rows [r*b, (r+1)*b). The global batches depend on B, not on W, so a run resumed on
  another number of ranks continues the same sample sequence. With one block and W = 1, batch k is
  windows order[k*B:(k+1)*B] of the one window order.
- len() is the same every epoch: the full batches of the shortest lane any block order can deal.
  Every lane gets at least q = n_blocks // L blocks, so that lane holds (q - 1) * n_full + n_last
  windows (n_full: a full block's, n_last: the last block's), and len() is that // s. Windows past
  len() * s in a lane are dropped for the epoch.
- Reading: rank r reads only the blocks of the lanes its rows fall in (the lane of row x is
  x // s), each once per epoch: a lane reads its next block on a reader thread when it reaches the
  one before, so it holds at most two blocks (plus the prefetched batches). `epoch(e, start_batch)` goes straight to the block holding each lane's
  position start_batch * s: window orders come from per-block generators, so skipped blocks are
  never read.
- Prefetch: with prefetch > 0 a daemon thread reads blocks and assembles batches into a queue of
  at most `prefetch` batches, off the training thread; prefetch=0 makes them on the caller's
  thread, and the two give identical batches. An exception on the thread is raised to the
  consumer; abandoning the iterator stops the thread. pin_memory=True pins each batch (so the
  Trainer's non_blocking copy to CUDA overlaps); without CUDA it is skipped.
- Batches are fresh, writable int64 tensors {"input_ids": (b, T)}, never views of the blocks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np
import torch

from composerlite.data.errors import DataError

MAX_LANES = 16


class TokenBlocks(Protocol):
    """A split's tokens as consecutive blocks, the unit of reading."""

    n_tokens: int
    block_tokens: int  # every block but the last holds exactly this many tokens

    @property
    def n_blocks(self) -> int: ...

    def read_block(self, index: int) -> np.ndarray:
        """Block `index` whole: 1-D uint16."""
        ...


class ArrayBlocks:
    """`TokenBlocks` over an in-memory (or memory-mapped) 1-D array: one block unless `block_tokens` says."""

    def __init__(self, tokens: np.ndarray, block_tokens: int | None = None) -> None:
        if block_tokens is not None and block_tokens < 1:
            raise DataError(f"block_tokens must be positive, got {block_tokens}")
        self.tokens = tokens
        self.n_tokens = len(tokens)
        self.block_tokens = block_tokens or max(self.n_tokens, 1)

    @property
    def n_blocks(self) -> int:
        return -(-self.n_tokens // self.block_tokens)

    def read_block(self, index: int) -> np.ndarray:
        if not 0 <= index < self.n_blocks:
            raise IndexError(f"block {index} is not in [0, {self.n_blocks})")
        return self.tokens[index * self.block_tokens : (index + 1) * self.block_tokens]


class BatchStream:
    """Batches of non-overlapping `seq_len` windows of a split's token blocks (see the module docstring).

    Labels come from the model's own shift, so windows do not overlap by one token.
    """

    def __init__(
        self,
        tokens: np.ndarray | TokenBlocks,
        seq_len: int = 128,
        batch_size: int = 8,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        prefetch: int = 2,
        pin_memory: bool = False,
    ) -> None:
        if seq_len < 1 or batch_size < 1:
            raise DataError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if prefetch < 0:
            raise DataError(f"prefetch must be 0 or more batches, got {prefetch}")
        self.blocks: TokenBlocks = ArrayBlocks(tokens) if isinstance(tokens, np.ndarray) else tokens
        self.seq_len, self.batch_size = seq_len, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.prefetch, self.pin_memory = prefetch, pin_memory
        self.tokens_per_batch = batch_size * seq_len
        n_tokens, block_tokens, n_blocks = self.blocks.n_tokens, self.blocks.block_tokens, self.blocks.n_blocks
        global_batch = batch_size * world_size
        if n_tokens < self.tokens_per_batch * world_size:
            ranks = f" ({world_size} ranks x {self.tokens_per_batch})" if world_size > 1 else ""
            raise DataError(
                f"data set has {n_tokens} tokens but one batch needs {self.tokens_per_batch * world_size}{ranks}:"
                " use more data or a smaller batch_size/seq_len"
            )
        self._block_windows = np.full(n_blocks, block_tokens // seq_len)
        self._block_windows[-1] = (n_tokens - (n_blocks - 1) * block_tokens) // seq_len
        # One lane gives every whole batch of the epoch; more lanes drop the ends of their longer
        # lanes. Take the most lanes that keep 99% of one lane's batches.
        one_lane = int(self._block_windows.sum()) // global_batch
        self._n_lanes = 1
        for lanes in (2 ** power for power in range(1, MAX_LANES.bit_length())):
            if lanes > n_blocks or global_batch % lanes or self._lane_batches(lanes, global_batch) < 0.99 * one_lane:
                break
            self._n_lanes = lanes
        self._lane_share = global_batch // self._n_lanes  # s: each lane's windows in a global batch
        self._n_batches = self._lane_batches(self._n_lanes, global_batch)
        if self._n_batches == 0:
            raise DataError(
                f"data set has {n_tokens} tokens in blocks of {block_tokens}, which hold {one_lane * global_batch}"
                f" whole windows of {seq_len} tokens; one batch takes {global_batch}: use a smaller batch_size/seq_len"
            )
        self._pin = pin_memory and torch.cuda.is_available()  # pinning needs CUDA; without it, skip

    def _lane_batches(self, lanes: int, global_batch: int) -> int:
        """Batches per epoch with `lanes` lanes: those of the shortest lane any block order can deal
        (every lane gets at least n_blocks // lanes blocks; the shortest may hold the short last one)."""
        blocks_per_lane = len(self._block_windows) // lanes
        shortest = (blocks_per_lane - 1) * int(self._block_windows[0]) + int(self._block_windows[-1])
        return shortest // (global_batch // lanes)

    def __len__(self) -> int:
        """Full batches per epoch, the same on every rank and every epoch."""
        return self._n_batches

    def epoch(self, epoch: int = 0, start_batch: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Batches `start_batch`, `start_batch + 1`, ... of `epoch`; blocks only skipped batches need are never read."""
        if not 0 <= start_batch <= self._n_batches:
            raise DataError(f"start_batch must be in [0, {self._n_batches}], got {start_batch}")
        batches = self._batches(epoch, start_batch)
        return _prefetched(batches, self.prefetch) if self.prefetch else batches

    def _window_order(self, epoch: int, block: int) -> np.ndarray:
        """The order in which `block`'s windows are used in `epoch`."""
        n_windows = int(self._block_windows[block])
        if not self.shuffle:
            return np.arange(n_windows)
        # One block gets the global window shuffle small corpora always had: their batches, and the
        # committed benchmark records made with them, stay exactly as they were.
        key = [self.seed, epoch] if len(self._block_windows) == 1 else [self.seed, epoch, 1 + block]
        return np.random.default_rng(key).permutation(n_windows)

    def _block_order(self, epoch: int) -> np.ndarray:
        """P: the order in which `epoch` deals the blocks to the lanes."""
        n_blocks = len(self._block_windows)
        if self.shuffle and n_blocks > 1:
            return np.random.default_rng([self.seed, epoch, 0]).permutation(n_blocks)
        return np.arange(n_blocks)

    def _batches(self, epoch: int, start_batch: int) -> Iterator[dict[str, torch.Tensor]]:
        share, order = self._lane_share, self._block_order(epoch)
        first_row, end_row = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        # This rank's lanes, each with the slice [lo, hi) of its share that falls in the rank's rows.
        lanes = range(first_row // share, (end_row - 1) // share + 1)
        # Each lane reads its next block while it uses the current one: an object store's latency
        # is hidden behind a whole block's worth of steps, not just the prefetched batches.
        reader = ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="BatchStream-read")
        try:
            spans = [(_Lane(self, epoch, order[lane :: self._n_lanes], reader),
                      max(first_row - lane * share, 0), min(end_row - lane * share, share)) for lane in lanes]
            for batch in range(start_batch, self._n_batches):
                base = batch * share
                windows = np.concatenate([part for lane, lo, hi in spans for part in lane.take(base + lo, base + hi)])
                input_ids = torch.from_numpy(windows.astype(np.int64))  # a fresh, writable copy
                yield {"input_ids": input_ids.pin_memory() if self._pin else input_ids}
        finally:
            reader.shutdown(wait=False, cancel_futures=True)


class _Lane:
    """One lane's window sequence of an epoch, read forward one whole block at a time."""

    def __init__(self, stream: BatchStream, epoch: int, blocks: np.ndarray, reader: ThreadPoolExecutor) -> None:
        self._stream, self._epoch, self._blocks, self._reader = stream, epoch, blocks, reader
        self._ends = np.cumsum(stream._block_windows[blocks])  # where each block's windows end in the sequence
        self._held = -1  # the position in `blocks` of the block in memory
        self._windows = self._order = np.empty(0)
        self._next: tuple[int, Future] | None = None  # the block being read ahead: (position, read)

    def take(self, start: int, stop: int) -> list[np.ndarray]:
        """The windows at positions [start, stop) of the sequence (positions only move forward)."""
        parts = []
        while start < stop:
            position = int(np.searchsorted(self._ends, start, side="right"))
            if position != self._held:
                self._hold(position)
            block_start = int(self._ends[position]) - len(self._order)
            end = min(stop, int(self._ends[position]))
            parts.append(self._windows[self._order[start - block_start : end - block_start]])
            start = end
        return parts

    def _hold(self, position: int) -> None:
        block, seq_len = int(self._blocks[position]), self._stream.seq_len
        self._windows = np.empty(0)  # let the old block go before reading the next
        n_windows = int(self._stream._block_windows[block])
        if self._next is not None and self._next[0] == position:
            tokens = self._next[1].result()
        else:
            tokens = self._stream.blocks.read_block(block)
        self._next = None
        if position + 1 < len(self._blocks):
            self._next = (position + 1, self._reader.submit(self._stream.blocks.read_block, int(self._blocks[position + 1])))
        self._windows = tokens[: n_windows * seq_len].reshape(n_windows, seq_len)
        self._order = self._stream._window_order(self._epoch, block)
        self._held = position


def _prefetched(batches: Generator[dict, None, None], depth: int) -> Iterator[dict]:
    """`batches`, made on a daemon thread at most `depth` ahead of the consumer."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    threading.Thread(target=_produce, args=(batches, ready, stop), name="BatchStream-prefetch", daemon=True).start()
    try:
        while (item := ready.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # The producer checks `stop` before every put, so after this drain it puts at most one more
        # item, which fits: it never blocks on a full queue and ends promptly.
        while not ready.empty():
            ready.get_nowait()


def _produce(batches: Generator[dict, None, None], ready: queue.Queue, stop: threading.Event) -> None:
    """Puts each of `batches` on `ready`, then None (the end) or the exception that stopped it."""
    try:
        for batch in batches:
            if stop.is_set():
                return
            ready.put(batch)
        end: BaseException | None = None
    except BaseException as error:  # noqa: BLE001 - the consumer re-raises it
        end = error
    finally:
        batches.close()  # the stream's readers stop here, not whenever the generator is collected
    if not stop.is_set():
        ready.put(end)
