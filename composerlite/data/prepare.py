"""`prepare(source, out)`: tokenize a source into train and held-out token shards plus a manifest, in
one streaming pass with memory bounded independently of the corpus size.

Documents are read in order on the calling thread and tokenized in batches on `workers` threads
(tiktoken's encoder releases the GIL; `encode_to_numpy` hands back arrays, so no Python int is made
per token). This is tiktoken's own batch parallelism with a pool kept for the whole pass, rather
than `encode_ordinary_batch`, which starts a pool per call and returns lists of Python ints.

The held-out split is chosen by a rule a streaming pass can apply (`SplitRule`): documents are
taken in blocks of `block_documents` consecutive documents; in block b of m documents, the ones at
positions `default_rng(seed + b).permutation(m)[:n]` are held out, n = round(eval_fraction * m)
(at least 1, at most m - 1, none for m < 2), while the held-out tokens are under `eval_token_budget`.
It depends on the documents' order alone, never on a training seed. A corpus of fewer than
`block_documents` documents is one block, so its split is the document permutation composerlite always
used (the default corpus keeps its exact train and held-out tokens); a corpus of one document gives
the last `eval_fraction` of its tokens to held-out instead.

A full block's size is known before it is read; only the last block's is not. So documents are
routed as they arrive, as if their block were full; a checkpoint (the source's cursor, the counts,
each split's shard state) is written after every full block, and if the source ends inside a block,
the pass goes back to the last checkpoint and routes that block again with its real size. A killed
preparation resumes the same way, from its last checkpoint: rerunning the command ends with exactly
the shards an uninterrupted run writes.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from composerlite.data.errors import DataError
from composerlite.data.shards import BLOCK_TOKENS, BLOCKS_PER_SHARD, ShardWriter
from composerlite.data.sources import Cursor, Source
from composerlite.data.tokenizer import GPT2Tokenizer, load_tokenizer

FORMAT = "composerlite-corpus"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
STATE_FILE = ".prepare-state.json"
LOCK_FILE = ".prepare.lock"
SPLITS = ("train", "eval")
# What a folder being prepared may hold besides the manifest: shards, partial shards, state, lock.
_OWN_FILE = re.compile(r"^(?:(?:train|eval)-\d{6}\.bin|\.(?:train|eval)-\d{6}\.bin\.partial|"
                       r"\.prepare-state\.json(?:\.tmp)?|\.prepare\.lock|manifest\.json\.tmp)$")
# Documents per tokenizer task and text per task: enough work to amortize a task, little memory.
BATCH_DOCUMENTS = 256
BATCH_CHARACTERS = 4 << 20
PROGRESS_EVERY = 256  # documents between progress reports
# The current block's tokens are held in memory up to this many (64 MiB), until its size is known.
BLOCK_BUFFER_TOKENS = 1 << 25


@dataclass(frozen=True)
class SplitRule:
    eval_fraction: float = 0.02
    block_documents: int = 10_000
    eval_token_budget: int = 10_000_000  # held-out tokens stay cheap to evaluate on a 9B-token corpus
    seed: int = 20240101

    def __post_init__(self) -> None:
        if not 0 <= self.eval_fraction < 1:
            raise DataError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.block_documents < 2 or self.eval_token_budget < 0:
            raise DataError("block_documents must be at least 2 and eval_token_budget not negative")

    def held_out(self, block: int, size: int) -> frozenset[int]:
        """Positions (0 .. size - 1) of block `block`'s held-out documents, for a block of `size`."""
        n_eval = min(max(1, round(self.eval_fraction * size)), size - 1) if size >= 2 and self.eval_fraction else 0
        return frozenset(np.random.default_rng(self.seed + block).permutation(size)[:n_eval].tolist())

    def single_document_eval_tokens(self, n_tokens: int) -> int:
        return min(math.ceil(self.eval_fraction * n_tokens), n_tokens - 1) if self.eval_fraction else 0


@dataclass
class Progress:
    documents: int
    tokens: int
    source_bytes: int
    seconds: float
    fraction: float | None  # of the source read, when the source can tell
    fraction_at_start: float = 0.0  # where this run started (a resumed run did the rest before)

    @property
    def bytes_per_s(self) -> float:
        return self.source_bytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        done = (self.fraction or 0.0) - self.fraction_at_start
        if self.fraction is None or done <= 0 or self.fraction >= 1:
            return None
        return self.seconds * (1 - self.fraction) / done


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def prepare(source: Source, out: str | Path, *, workers: int | None = None, rule: SplitRule = SplitRule(),
            block_tokens: int = BLOCK_TOKENS, blocks_per_shard: int = BLOCKS_PER_SHARD,
            on_progress: Callable[[Progress], None] | None = None) -> dict[str, Any]:
    """Tokenize `source` into `out` (a local folder), or continue an interrupted preparation there;
    returns the manifest. A folder that already holds this corpus is left as it is."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; `data prepare` writes a folder")
    if workers is not None and workers < 1:
        raise DataError(f"workers must be at least 1, got {workers}")
    tokenizer = load_tokenizer()
    settings = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "tokenizer": tokenizer.identity,
        "source": {"name": source.name, "description": source.description, "identity": source.identity()},
        "split": {"rule": "held-out documents by permutation within blocks of documents", **asdict(rule)},
        "block_tokens": block_tokens, "blocks_per_shard": blocks_per_shard,
    }
    if (manifest := _published(out, settings)) is not None:  # without the lock: a published corpus never changes
        return manifest
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if (manifest := _published(out, settings)) is not None:
            return manifest
        state = _read_json(out / STATE_FILE)
        if state is not None and state.get("settings") != settings:
            raise DataError(f"{out} holds an unfinished preparation of {state['settings']['source']['description']} "
                            "with other settings; finish it with its own command, or prepare into another folder")
        strangers = [path.name for path in out.iterdir() if not _OWN_FILE.match(path.name)]
        if state is None and strangers:
            raise DataError(f"{out} is not empty ({strangers[0]}, ...) and holds no corpus being prepared; "
                            "prepare into a new or empty folder")
        pass_ = _Pass(source, out, tokenizer, rule, settings, block_tokens, blocks_per_shard,
                      workers or default_workers(), on_progress)
        try:
            manifest = pass_.run(state)
        except DataError:
            if not (out / STATE_FILE).exists():  # refused before a checkpoint: leave no trace
                _remove_own_files(out, remove_folder=created)
            raise
        # No process writes a published corpus again, so the lock can go (one waiting on it holds
        # the file open, gets the lock, and finds the manifest).
        (out / LOCK_FILE).unlink()
        return manifest


def _published(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest of the corpus already published in `out` with these settings (None: none is);
    DataError if it was prepared with others."""
    manifest = _read_json(out / MANIFEST_FILE)
    if manifest is not None and {key: manifest.get(key) for key in settings} != settings:
        raise DataError(f"{out} already holds a corpus prepared from {manifest.get('source', {}).get('description')} "
                        "with other settings; prepare into another folder")
    return manifest


def _remove_own_files(out: Path, remove_folder: bool) -> None:
    for path in out.iterdir():
        if _OWN_FILE.match(path.name):
            path.unlink()
    if remove_folder and not any(out.iterdir()):
        out.rmdir()


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One preparer per folder: a second process (another rank, a second command) waits, then finds
    the corpus published."""
    with (out / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Written whole or not at all: to a temporary sibling, flushed to disk, then renamed."""
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w") as file:
        json.dump(value, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


class _Pass:
    """One preparation run from a checkpoint (or the start) to the published manifest."""

    def __init__(self, source: Source, out: Path, tokenizer: GPT2Tokenizer, rule: SplitRule, settings: dict[str, Any],
                 block_tokens: int, blocks_per_shard: int, workers: int,
                 on_progress: Callable[[Progress], None] | None) -> None:
        self.source, self.out, self.tokenizer, self.rule, self.settings = source, out, tokenizer, rule, settings
        self.block_tokens, self.blocks_per_shard, self.workers = block_tokens, blocks_per_shard, workers
        self.on_progress = on_progress
        self.started = time.perf_counter()
        self.bytes_at_start, self.fraction_at_start = 0, 0.0
        self._held_out, self._held_out_block = frozenset(), None

    def run(self, state: dict[str, Any] | None) -> dict[str, Any]:
        state = state or self._fresh_state()
        self.bytes_at_start = state["counts"]["source_bytes"]
        self.fraction_at_start = (self.source.fraction_done(state["cursor"]) or 0.0) if state["cursor"] else 0.0
        documents = self._route(state)
        if not hasattr(self, "shards"):  # the source ended inside an outsized block: route it again by its size
            self._route(_read_json(self.out / STATE_FILE) or self._fresh_state(),
                        last_block_size=documents % self.rule.block_documents)
        return self._publish()

    def _fresh_state(self) -> dict[str, Any]:
        return {"settings": self.settings, "cursor": None,
                "counts": {"documents": 0, "eval_documents": 0, "source_bytes": 0},
                **{split: {"published": [], "partial_tokens": 0} for split in SPLITS}}

    def _route(self, state: dict[str, Any], last_block_size: int | None = None) -> int:
        """Route the source's documents from `state`'s cursor into the shards, a block at a time, with a
        checkpoint after every full block, and finish the shards at the source's end; returns the
        documents seen. A block's documents are held until its size is known (so the last block
        needs no second reading), up to `BLOCK_BUFFER_TOKENS`: past that they are routed as they
        come, as if the block were full, and if the source then ends inside it, the shards are left
        unfinished for `run` to route that block again, `last_block_size` documents, from the last
        checkpoint."""
        writers = {split: ShardWriter(self.out, split, self.block_tokens, self.blocks_per_shard,
                                      state[split]["published"], state[split]["partial_tokens"]) for split in SPLITS}
        counts, cursor, size = dict(state["counts"]), state["cursor"], self.rule.block_documents
        held: list[np.ndarray] | None = [] if last_block_size is None else None  # None: routed as they come
        held_tokens = 0
        try:
            for tokens, cursor, n_bytes in self._encoded(self.source.documents(state["cursor"])):
                if held is None:
                    self._route_document(writers, counts, tokens, counts["documents"], last_block_size or size)
                else:
                    held.append(tokens)
                    held_tokens += len(tokens)
                    if held_tokens > BLOCK_BUFFER_TOKENS:
                        self._route_held(writers, counts, held, counts["documents"] + 1, size)
                        held = None
                counts["documents"] += 1
                counts["source_bytes"] += n_bytes
                if counts["documents"] % size == 0:
                    if held:
                        self._route_held(writers, counts, held, counts["documents"], size)
                    held, held_tokens = [], 0
                    self._checkpoint(cursor, counts, writers)
                if counts["documents"] % PROGRESS_EVERY == 0:
                    self._report(counts, writers, cursor)
            if counts["documents"] == 0:
                raise DataError(f"no text found in {self.source.description}")
            if held:
                self._route_held(writers, counts, held, counts["documents"], len(held))
            if held is not None or last_block_size is not None:
                self.shards = {split: writer.finish() for split, writer in writers.items()}
                self.counts = counts
                self._report(counts, writers, cursor=None)
        finally:
            for writer in writers.values():
                writer.close()
        return counts["documents"]

    def _route_held(self, writers: dict[str, ShardWriter], counts: dict[str, int], held: list[np.ndarray],
                    documents: int, block_size: int) -> None:
        """Route the held documents, the last of which is document `documents` - 1, in a block of `block_size`."""
        for index, tokens in enumerate(held, start=documents - len(held)):
            self._route_document(writers, counts, tokens, index, block_size)
        held.clear()

    def _route_document(self, writers: dict[str, ShardWriter], counts: dict[str, int], tokens: np.ndarray,
                        index: int, block_size: int) -> None:
        """Document `index` (tokens with its end-of-text) to train or held-out, its block holding `block_size`."""
        block, position = divmod(index, self.rule.block_documents)
        if position == 0 or self._held_out_block != (block, block_size):
            self._held_out = self.rule.held_out(block, block_size)
            self._held_out_block = (block, block_size)
        if block == 0 and block_size == 1:  # the whole corpus is one document
            n_eval = self.rule.single_document_eval_tokens(len(tokens))
            writers["train"].append(tokens[:len(tokens) - n_eval])
            writers["eval"].append(tokens[len(tokens) - n_eval:])
        elif position in self._held_out and writers["eval"].n_tokens < self.rule.eval_token_budget:
            writers["eval"].append(tokens)
            counts["eval_documents"] += 1
        else:
            writers["train"].append(tokens)

    def _encoded(self, documents: Iterator[tuple[str, Cursor]]) -> Iterator[tuple[np.ndarray, Cursor, int]]:
        """(tokens + end-of-text, cursor after the document, its UTF-8 bytes), in document order.
        Reading stays on this thread while up to 2 x workers batches tokenize on the pool."""
        eot = np.array([self.tokenizer.eot_token], dtype=np.uint16)

        def encode(texts: list[str]) -> list[tuple[np.ndarray, int]]:
            # An ASCII string's UTF-8 length is its length: no copy made just to count it.
            return [(np.concatenate([self.tokenizer.encode_array(text), eot]),
                     len(text) if text.isascii() else len(text.encode("utf-8"))) for text in texts]

        with ThreadPoolExecutor(self.workers, thread_name_prefix="tokenize") as pool:
            pending: deque = deque()
            texts, cursors, characters = [], [], 0
            for text, cursor in documents:
                texts.append(text)
                cursors.append(cursor)
                characters += len(text)
                if len(texts) >= BATCH_DOCUMENTS or characters >= BATCH_CHARACTERS:
                    pending.append((pool.submit(encode, texts), cursors))
                    texts, cursors, characters = [], [], 0
                    while len(pending) > 2 * self.workers:
                        yield from self._drain(pending.popleft())
            if texts:
                pending.append((pool.submit(encode, texts), cursors))
            while pending:
                yield from self._drain(pending.popleft())

    @staticmethod
    def _drain(task) -> Iterator[tuple[np.ndarray, Cursor, int]]:
        future, cursors = task
        for (tokens, n_bytes), cursor in zip(future.result(), cursors):
            yield tokens, cursor, n_bytes

    def _checkpoint(self, cursor: Cursor, counts: dict[str, int], writers: dict[str, ShardWriter]) -> None:
        state = {"settings": self.settings, "cursor": cursor, "counts": dict(counts),
                 **{split: writer.checkpoint() for split, writer in writers.items()}}
        _write_json(self.out / STATE_FILE, state)

    def _report(self, counts: dict[str, int], writers: dict[str, ShardWriter], cursor: Cursor | None) -> None:
        if self.on_progress is None:
            return
        self.on_progress(Progress(
            documents=counts["documents"], tokens=sum(writer.n_tokens for writer in writers.values()),
            source_bytes=counts["source_bytes"] - self.bytes_at_start, seconds=time.perf_counter() - self.started,
            fraction=1.0 if cursor is None else self.source.fraction_done(cursor), fraction_at_start=self.fraction_at_start))

    def _publish(self) -> dict[str, Any]:
        tokens = {split: sum(shard["tokens"] for shard in self.shards[split]) for split in SPLITS}
        if tokens["train"] == 0:
            raise DataError(f"{self.source.description} has no training tokens left after the held-out split")
        manifest = {
            **self.settings,
            "documents": {"all": self.counts["documents"], "eval": self.counts["eval_documents"]},
            "tokens": tokens,
            "source_bytes": self.counts["source_bytes"],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "shards": self.shards,
        }
        _write_json(self.out / MANIFEST_FILE, manifest)
        (self.out / STATE_FILE).unlink(missing_ok=True)
        return manifest
