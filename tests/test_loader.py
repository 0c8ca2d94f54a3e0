"""BatchStream: today's batches for one block, whole-block reads in lanes, elastic ranks, resume, prefetch."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from composerlite.data.errors import DataError
from composerlite.data.loader import ArrayBlocks, BatchStream

# 17 blocks of 2,500 tokens (156 windows of 16, 4 ragged tokens), the last one short: 333 tokens, 20 windows.
SEQ_LEN, BLOCK_TOKENS, N_TOKENS = 16, 2_500, 40_333


def token_array(n):
    """Token i is i (n < 65,536), so a window's first token says where it starts."""
    return np.arange(n, dtype=np.uint16)


class RecordingBlocks(ArrayBlocks):
    """ArrayBlocks that records which blocks are read, in order."""

    def __init__(self, tokens, block_tokens=None):
        super().__init__(tokens, block_tokens)
        self.reads = []

    def read_block(self, index):
        self.reads.append(index)
        return super().read_block(index)


def blocks(n_tokens=N_TOKENS, block_tokens=BLOCK_TOKENS):
    return RecordingBlocks(token_array(n_tokens), block_tokens)


def collect(stream, epoch=0, start_batch=0):
    return [batch["input_ids"] for batch in stream.epoch(epoch, start_batch=start_batch)]


def starts(batch):
    return batch[:, 0].tolist()


def global_batches(tokens, global_batch, world_size, epoch=0, start_batch=0, **kwargs):
    """Step k's batch of every rank, concatenated in rank order."""
    batch_size = global_batch // world_size
    per_rank = [
        collect(BatchStream(tokens, batch_size=batch_size, rank=rank, world_size=world_size, **kwargs), epoch, start_batch)
        for rank in range(world_size)
    ]
    return [torch.cat(step) for step in zip(*per_rank, strict=True)]


def todays_batches(tokens, seq_len, batch_size, seed, epoch):
    """The loader's formula before blocks: one global window shuffle, batch k = order[k*B:(k+1)*B]."""
    n_windows = len(tokens) // seq_len
    windows = tokens[: n_windows * seq_len].reshape(n_windows, seq_len)
    order = np.random.default_rng([seed, epoch]).permutation(n_windows)
    return [windows[order[k * batch_size : (k + 1) * batch_size]].astype(np.int64) for k in range(n_windows // batch_size)]


def rule_batches(n_tokens, block_tokens, seq_len, global_batch, seed, epoch, shuffle=True):
    """Each global batch's window starts, straight from the rules in the loader's docstring."""
    n_blocks = -(-n_tokens // block_tokens)
    counts = [min(block_tokens, n_tokens - i * block_tokens) // seq_len for i in range(n_blocks)]

    def window_order(i):
        key = [seed, epoch] if n_blocks == 1 else [seed, epoch, 1 + i]
        return np.random.default_rng(key).permutation(counts[i]) if shuffle else range(counts[i])

    block_order = np.random.default_rng([seed, epoch, 0]).permutation(n_blocks) if shuffle else range(n_blocks)
    def lane_batches(lanes):  # the shortest lane any block order makes
        return ((n_blocks // lanes - 1) * counts[0] + counts[-1]) // (global_batch // lanes)

    lanes = 1  # doubled while it divides the batch, fits the blocks and keeps 99% of one lane's batches
    while (lanes * 2 <= min(16, n_blocks) and global_batch % (lanes * 2) == 0
           and lane_batches(lanes * 2) >= 0.99 * (sum(counts) // global_batch)):
        lanes *= 2
    share = global_batch // lanes
    sequences = [
        [i * block_tokens + j * seq_len for i in block_order[lane::lanes] for j in window_order(i)] for lane in range(lanes)
    ]
    n_batches = lane_batches(lanes)
    assert n_batches <= min(len(sequence) for sequence in sequences) // share
    return [[start for sequence in sequences for start in sequence[k * share : (k + 1) * share]] for k in range(n_batches)]


# --- one block: today's batches ----------------------------------------------------------------


def test_batches_are_int64_windows_of_the_tokens():
    tokens = token_array(1000)
    stream = BatchStream(tokens, seq_len=16, batch_size=4, shuffle=False)
    assert len(stream) == 1000 // 16 // 4 and stream.tokens_per_batch == 64
    batches = collect(stream)
    assert len(batches) == len(stream)
    assert all(batch.dtype == torch.int64 and batch.shape == (4, 16) for batch in batches)
    np.testing.assert_array_equal(torch.cat(batches).flatten().numpy(), tokens[: len(stream) * 64])


@pytest.mark.parametrize(
    ("n_tokens", "seq_len", "batch_size", "seed", "epoch"),
    [(5000, 10, 3, 7, 2), (10_007, 8, 5, 11, 0), (4096, 32, 4, 3, 1), (65_000, 128, 16, 0, 0), (1000, 16, 1, 42, 5)],
)
def test_one_block_gives_todays_batches_exactly(n_tokens, seq_len, batch_size, seed, epoch):
    tokens = np.random.default_rng(n_tokens).integers(0, 50_257, n_tokens).astype(np.uint16)
    expected = todays_batches(tokens, seq_len, batch_size, seed, epoch)
    for source in (tokens, ArrayBlocks(tokens), ArrayBlocks(tokens, block_tokens=n_tokens + 5)):
        for prefetch in (0, 2):
            stream = BatchStream(source, seq_len, batch_size, seed=seed, prefetch=prefetch)
            batches = collect(stream, epoch)
            assert len(stream) == len(expected) == len(batches)
            assert all(np.array_equal(batch.numpy(), want) for batch, want in zip(batches, expected, strict=True))


def test_an_array_is_one_block():
    source = ArrayBlocks(token_array(1000))
    assert (source.n_tokens, source.block_tokens, source.n_blocks) == (1000, 1000, 1)
    np.testing.assert_array_equal(source.read_block(0), token_array(1000))
    split = ArrayBlocks(token_array(1000), block_tokens=300)
    assert split.n_blocks == 4 and len(split.read_block(3)) == 100
    with pytest.raises(IndexError):
        split.read_block(4)


def test_shuffled_batches_are_deterministic_and_cover_distinct_windows():
    tokens = token_array(4096)
    stream = BatchStream(tokens, seq_len=32, batch_size=4, seed=3)
    first, again = collect(stream), collect(BatchStream(tokens, seq_len=32, batch_size=4, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    window_starts = torch.cat(first)[:, 0]
    assert (window_starts % 32 == 0).all() and len(set(window_starts.tolist())) == 128
    assert not torch.equal(torch.cat(first), torch.cat(collect(stream, epoch=1)))
    assert not torch.equal(torch.cat(first), torch.cat(collect(BatchStream(tokens, 32, 4, seed=4))))


def test_batches_are_fresh_writable_tensors(tmp_path):
    np.save(tmp_path / "train.npy", token_array(1000))
    memmap = np.load(tmp_path / "train.npy", mmap_mode="r")
    batch = next(iter(BatchStream(memmap, seq_len=16, batch_size=4).epoch(0)))["input_ids"]
    batch += 1  # not a view of the read-only memmap
    np.testing.assert_array_equal(memmap, token_array(1000))
    int64_tokens = np.arange(1000, dtype=np.int64)
    batch = next(iter(BatchStream(int64_tokens, seq_len=16, batch_size=4, shuffle=False).epoch(0)))["input_ids"]
    assert not np.shares_memory(batch.numpy(), int64_tokens)


# --- many blocks: windows, lanes, reads ---------------------------------------------------------


def test_blocks_use_each_whole_window_once_and_drop_only_ragged_ends():
    tokens = ArrayBlocks(token_array(8 * BLOCK_TOKENS), BLOCK_TOKENS)
    stream = BatchStream(tokens, SEQ_LEN, batch_size=8, seed=5)
    whole_windows = {block * BLOCK_TOKENS + j * SEQ_LEN for block in range(8) for j in range(BLOCK_TOKENS // SEQ_LEN)}
    epochs = [collect(stream, epoch) for epoch in range(2)]
    for batches in epochs:
        used = [start for batch in batches for start in starts(batch)]
        assert len(used) == len(set(used)) == len(whole_windows) and set(used) == whole_windows
        assert all(torch.equal(batch, batch[:, :1] + torch.arange(SEQ_LEN)) for batch in batches)
    assert all(torch.equal(a, b) for a, b in zip(epochs[0], collect(BatchStream(tokens, SEQ_LEN, 8, seed=5)), strict=True))
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1]))
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(collect(BatchStream(tokens, SEQ_LEN, 8, seed=6))))


@pytest.mark.parametrize("global_batch", [6, 8, 12, 16])
@pytest.mark.parametrize("shuffle", [True, False])
def test_global_batches_follow_the_lane_rules(global_batch, shuffle):
    stream = BatchStream(blocks(), SEQ_LEN, global_batch, seed=9, shuffle=shuffle)
    for epoch in (0, 1):
        expected = rule_batches(N_TOKENS, BLOCK_TOKENS, SEQ_LEN, global_batch, seed=9, epoch=epoch, shuffle=shuffle)
        assert len(stream) == len(expected)
        assert [starts(batch) for batch in collect(stream, epoch)] == expected


def test_each_global_batch_draws_from_every_lane():
    # 16 blocks, global batch 8: 8 lanes of 2 blocks, one window of each lane per batch.
    for batch in collect(BatchStream(blocks(16 * BLOCK_TOKENS), SEQ_LEN, batch_size=8, seed=1)):
        assert len({start // BLOCK_TOKENS for start in starts(batch)}) == 8


@pytest.mark.parametrize("world_size", [1, 2, 4, 8, 3])
def test_each_rank_reads_the_blocks_of_its_lanes_once_per_epoch(world_size):
    # 16 blocks in 8 lanes of 2. With 3 ranks of 8 rows each lane gives 3 rows, so neighbouring ranks
    # share a lane (and both read its blocks).
    global_batch = 24 if world_size == 3 else 8
    share, read_sets = global_batch // 8, []
    for rank in range(world_size):
        source = blocks(16 * BLOCK_TOKENS)
        batch_size = global_batch // world_size
        stream = BatchStream(source, SEQ_LEN, batch_size, seed=2, rank=rank, world_size=world_size, prefetch=0)
        first_row, end_row = rank * batch_size, (rank + 1) * batch_size
        for epoch in (0, 1):
            source.reads.clear()
            batches = stream.epoch(epoch)
            first = [next(batches)["input_ids"]]
            lanes = (end_row - 1) // share - first_row // share + 1
            # One block per lane of the rank, and perhaps the next one each lane reads ahead.
            assert {start // BLOCK_TOKENS for start in starts(first[0])} <= set(source.reads)
            assert lanes <= len(source.reads) <= 2 * lanes
            rest = [batch["input_ids"] for batch in batches]
            used = {start // BLOCK_TOKENS for batch in first + rest for start in starts(batch)}
            assert sorted(source.reads) == sorted(used), "each block the rank uses is read once, and no other"
        read_sets.append(set(source.reads))
    if 8 % world_size == 0:
        assert sum(map(len, read_sets)) == len(set().union(*read_sets)) == 16, "ranks read disjoint sets of blocks"


@pytest.mark.parametrize(("global_batch", "world_sizes"), [(8, [1, 2, 4, 8]), (12, [1, 2, 3, 4, 6])])
def test_global_batches_are_the_same_on_any_number_of_ranks(global_batch, world_sizes):
    for tokens in (token_array(20_000), blocks()):
        expected = global_batches(tokens, global_batch, 1, epoch=3, seq_len=SEQ_LEN, seed=4)
        for world_size in world_sizes[1:]:
            batches = global_batches(tokens, global_batch, world_size, epoch=3, seq_len=SEQ_LEN, seed=4)
            assert all(torch.equal(a, b) for a, b in zip(expected, batches, strict=True))


def test_a_run_resumed_on_another_number_of_ranks_continues_the_same_batches():
    settings = {"epoch": 1, "seq_len": SEQ_LEN, "seed": 8}
    expected = global_batches(blocks(), 12, 1, **settings)
    resumed = global_batches(blocks(), 12, 2, **settings)[:30] + global_batches(blocks(), 12, 3, start_batch=30, **settings)
    assert all(torch.equal(a, b) for a, b in zip(expected, resumed, strict=True))


# --- resume ------------------------------------------------------------------------------------


def test_start_batch_resumes_exactly():
    for tokens in (token_array(5000), blocks()):
        stream = BatchStream(tokens, seq_len=10, batch_size=4, seed=7)
        full = collect(stream, epoch=2)
        resumed = collect(stream, epoch=2, start_batch=5)
        assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed, strict=True))
        assert collect(stream, epoch=2, start_batch=len(stream)) == []


def test_skipped_batches_are_not_read():
    source = blocks(10_000, block_tokens=10_000)
    stream = BatchStream(source, seq_len=10, batch_size=4, seed=1)
    next(iter(stream.epoch(0, start_batch=100)))
    assert source.reads == [0]
    # 16 blocks in 8 lanes of 2, 156 windows each: batch 200 is in every lane's second block.
    source = blocks(16 * BLOCK_TOKENS)
    stream = BatchStream(source, SEQ_LEN, batch_size=8, seed=3, prefetch=0)
    first_blocks = {start // BLOCK_TOKENS for batch in collect(stream, epoch=1)[:156] for start in starts(batch)}
    source.reads.clear()
    resumed = collect(stream, epoch=1, start_batch=200)
    assert len(source.reads) == 8 and not first_blocks & set(source.reads)
    assert set(source.reads) == {start // BLOCK_TOKENS for batch in resumed for start in starts(batch)}


# --- prefetch ----------------------------------------------------------------------------------


def prefetch_threads():
    return [thread for thread in threading.enumerate() if thread.name == "BatchStream-prefetch"]


def test_prefetch_gives_the_same_batches_as_the_callers_thread():
    for rank in (0, 1):
        streams = [BatchStream(blocks(), SEQ_LEN, 6, seed=1, rank=rank, world_size=2, prefetch=depth) for depth in (0, 3)]
        made = [collect(stream, epoch=1) for stream in streams]
        assert all(torch.equal(a, b) for a, b in zip(*made, strict=True))


class FailingBlocks(ArrayBlocks):
    def read_block(self, index):
        if index == 3:
            raise OSError("block 3: checksum mismatch")
        return super().read_block(index)


@pytest.mark.parametrize("prefetch", [0, 3])
def test_a_read_error_reaches_the_consumer(prefetch):
    stream = BatchStream(FailingBlocks(token_array(N_TOKENS), BLOCK_TOKENS), SEQ_LEN, 1, shuffle=False, prefetch=prefetch)
    received = []
    with pytest.raises(OSError) as raised:
        for batch in stream.epoch(0):
            received.append(batch)
    assert type(raised.value) is OSError and str(raised.value) == "block 3: checksum mismatch"
    assert len(received) == 3 * (BLOCK_TOKENS // SEQ_LEN), "the batches before the bad block arrive"


@pytest.mark.parametrize("abandon", ["break", "close", "garbage"])
def test_an_abandoned_iterator_stops_its_thread(abandon):
    stream = BatchStream(token_array(20_000), SEQ_LEN, 4, prefetch=1)
    if abandon == "break":
        for _ in stream.epoch(0):
            time.sleep(0.1)  # the thread fills the queue and waits on it
            break
    else:
        batches = stream.epoch(0)
        next(batches)
        time.sleep(0.1)
        if abandon == "close":
            batches.close()
        del batches
    for thread in prefetch_threads():
        thread.join(timeout=2)
    assert not prefetch_threads()


def test_pin_memory_is_skipped_without_cuda():
    pinned = collect(BatchStream(token_array(2000), SEQ_LEN, 4, pin_memory=True))
    assert all(torch.equal(a, b) for a, b in zip(pinned, collect(BatchStream(token_array(2000), SEQ_LEN, 4)), strict=True))
    assert all(batch.is_pinned() == torch.cuda.is_available() for batch in pinned)


# --- errors ------------------------------------------------------------------------------------


def test_too_little_data_for_one_batch():
    with pytest.raises(DataError) as raised:
        BatchStream(token_array(100), seq_len=16, batch_size=8)
    assert str(raised.value) == (
        "data set has 100 tokens but one batch needs 128: use more data or a smaller batch_size/seq_len"
    )
    with pytest.raises(DataError) as raised:
        BatchStream(token_array(200), seq_len=16, batch_size=8, world_size=2)
    assert str(raised.value) == (
        "data set has 200 tokens but one batch needs 256 (2 ranks x 128): use more data or a smaller batch_size/seq_len"
    )


def test_lanes_that_would_drop_batches_are_not_used():
    # 3 blocks: 2 lanes would give the lane holding only the 10-token last block no window, so
    # the epoch keeps one lane and all of its 124 windows' whole batches.
    stream = BatchStream(ArrayBlocks(token_array(2010), 1000), seq_len=16, batch_size=2)
    assert stream._n_lanes == 1 and len(stream) == (2 * (1000 // 16)) // 2


def test_blocks_shorter_than_a_window_hold_no_batch():
    with pytest.raises(DataError, match="which hold 0 whole windows of 16 tokens; one batch takes 2"):
        BatchStream(ArrayBlocks(token_array(1000), 10), seq_len=16, batch_size=2)


@pytest.mark.parametrize(
    "kwargs", [{"seq_len": 0}, {"batch_size": -1}, {"rank": 2, "world_size": 2}, {"rank": -1}, {"prefetch": -1}]
)
def test_bad_stream_settings(kwargs):
    with pytest.raises(DataError):
        BatchStream(token_array(1000), **kwargs)


def test_bad_block_size():
    with pytest.raises(DataError):
        ArrayBlocks(token_array(1000), block_tokens=0)


@pytest.mark.parametrize("start_batch", [-1, 16])
def test_start_batch_outside_the_epoch(start_batch):
    stream = BatchStream(token_array(1000), seq_len=16, batch_size=4)
    with pytest.raises(DataError) as raised:
        stream.epoch(0, start_batch=start_batch)
    assert str(raised.value) == f"start_batch must be in [0, 15], got {start_batch}"
