"""Token shards: the llm.c / modded-nanogpt `.bin` layout, written in fixed-size blocks.

A shard is a 256 x int32 little-endian header (magic 20240520, version 1, token count, zeros) followed
by the tokens as uint16, so llm.c's, modded-nanogpt's and nanoGPT-style readers load our shards as
they are. A split's token stream is cut into blocks of `block_tokens` (the unit a loader reads and
verifies: one sequential read of a few MB) and shards of `blocks_per_shard` blocks (~100M tokens),
so a block never straddles two shards. Every shard but the last of its split is full.

`ShardWriter` appends a split's stream into `.{name}.partial` files and publishes each full shard
by renaming it (readers never see half a shard); its state is two numbers, so an interrupted
preparation resumes by truncating the partial file to what its last checkpoint recorded.
`ShardBlocks` reads a published split block by block from a local folder or any fsspec URL and
checks each block against its SHA-256.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np

from composerlite.data.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_BYTES = 2
BLOCK_TOKENS = 1 << 22  # 8 MiB of uint16: a large sequential read, a small slice of memory
BLOCKS_PER_SHARD = 24  # 100,663,296 tokens (~201 MB) a shard, the llm.c scale


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.bin"


def header(n_tokens: int) -> bytes:
    values = np.zeros(HEADER_INTS, dtype="<i4")
    values[:3] = MAGIC, VERSION, n_tokens
    return values.tobytes()


class ShardWriter:
    """Appends one split's tokens to its shards in `folder`, publishing each as it fills.

    `published` lists the shards already published (their manifest entries); `partial_tokens` is how
    many tokens of the next shard an earlier checkpoint recorded in its partial file. Anything the
    partial file holds beyond that (written after the checkpoint by a process that was then killed)
    is cut off, and a shard published after the checkpoint is taken back to partial: the tokens
    that follow are written again, identically.
    """

    def __init__(self, folder: Path, split: str, block_tokens: int, blocks_per_shard: int,
                 published: list[dict[str, Any]], partial_tokens: int) -> None:
        self.folder, self.split, self.block_tokens = folder, split, block_tokens
        self.shard_tokens = block_tokens * blocks_per_shard
        self.published = list(published)
        for later in sorted(folder.glob(f"{split}-*.bin"))[len(self.published) + 1:]:
            later.unlink()  # published after the checkpoint, and beyond the shard being written
        for stale in folder.glob(f".{split}-*.bin.partial"):
            if stale != self._partial_path():
                stale.unlink()  # the partial that followed a shard published after the checkpoint
        taken_back = folder / shard_name(split, len(self.published))
        if taken_back.exists():
            os.replace(taken_back, self._partial_path())
        self.partial_tokens = partial_tokens
        self._file = self._open_partial()

    def _partial_path(self) -> Path:
        return self.folder / f".{shard_name(self.split, len(self.published))}.partial"

    def _open_partial(self):
        path = self._partial_path()
        if self.partial_tokens == 0:
            file = path.open("wb")
            file.write(header(0))  # the count is written when the shard is published
            return file
        file = path.open("r+b")
        file.truncate(HEADER_BYTES + self.partial_tokens * TOKEN_BYTES)
        file.seek(0, os.SEEK_END)
        return file

    @property
    def n_tokens(self) -> int:
        return sum(entry["tokens"] for entry in self.published) + self.partial_tokens

    def append(self, tokens: np.ndarray) -> None:
        while len(tokens):
            room = self.shard_tokens - self.partial_tokens
            self._file.write(tokens[:room].tobytes())
            self.partial_tokens += min(room, len(tokens))
            tokens = tokens[room:]
            if self.partial_tokens == self.shard_tokens:
                self._publish()
                self._file = self._open_partial()

    def checkpoint(self) -> dict[str, Any]:
        """Make what was appended durable; the state an interrupted run resumes from."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return {"published": list(self.published), "partial_tokens": self.partial_tokens}

    def finish(self) -> list[dict[str, Any]]:
        """Publish the last, partly full shard (if it holds tokens); the split's manifest entries."""
        if self.partial_tokens:
            self._publish()
        else:
            self._file.close()
            self._partial_path().unlink()
        return self.published

    def close(self) -> None:
        self._file.close()

    def _publish(self) -> None:
        self._file.seek(0)
        self._file.write(header(self.partial_tokens))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        path = self._partial_path()
        # Hashed from the file as written, a block at a time (memory stays at one block).
        whole, blocks = hashlib.sha256(), []
        with path.open("rb") as file:
            whole.update(file.read(HEADER_BYTES))
            while block := file.read(self.block_tokens * TOKEN_BYTES):
                whole.update(block)
                blocks.append(hashlib.sha256(block).hexdigest())
        name = shard_name(self.split, len(self.published))
        self.published.append({"file": name, "tokens": self.partial_tokens, "sha256": whole.hexdigest(),
                               "block_sha256": blocks})
        os.replace(path, self.folder / name)
        self.partial_tokens = 0


@dataclass
class ShardBlocks:
    """One split of a prepared corpus as blocks (`composerlite.data.loader.TokenBlocks`), read from
    its shards on any file system, each block checked against its SHA-256 as it is read."""

    fs: fsspec.AbstractFileSystem
    root: str
    shards: list[dict[str, Any]]
    block_tokens: int
    display: str  # the corpus as the user named it

    def __post_init__(self) -> None:
        self.n_tokens = sum(shard["tokens"] for shard in self.shards)
        self._blocks = [(shard, index) for shard in self.shards for index in range(len(shard["block_sha256"]))]

    @property
    def n_blocks(self) -> int:
        return len(self._blocks)

    def read_block(self, index: int) -> np.ndarray:
        shard, within = self._blocks[index]
        start = within * self.block_tokens
        stop = min(start + self.block_tokens, shard["tokens"])
        path = f"{self.root}/{shard['file']}"
        data = self.fs.cat_file(path, start=HEADER_BYTES + start * TOKEN_BYTES, end=HEADER_BYTES + stop * TOKEN_BYTES)
        if hashlib.sha256(data).hexdigest() != shard["block_sha256"][within]:
            raise DataError(f"{self.display}: {shard['file']} is damaged (block {within} does not match its SHA-256); "
                            "prepare the corpus again or copy that shard again")
        return np.frombuffer(data, dtype=np.uint16)

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Tokens [start, stop) of the split, read (and checked) a block at a time."""
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        if stop <= start:
            return np.empty(0, np.uint16)
        first, last = start // self.block_tokens, (stop - 1) // self.block_tokens
        tokens = np.concatenate([self.read_block(index) for index in range(first, last + 1)])
        return tokens[start - first * self.block_tokens: stop - first * self.block_tokens]
