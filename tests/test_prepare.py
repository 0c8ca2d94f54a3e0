"""`data prepare` and prepared corpora: the llm.c shard layout and the manifest, the streaming held-out
rule, resumption after an interruption or a kill at any moment (ending with exactly the shards of an
uninterrupted run), `data info`, and every bad input as one line with its exit code."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from composerlite import cli
from composerlite.data import DataError, load_tokenizer, open_corpus
from composerlite.data.prepare import MANIFEST_FILE, STATE_FILE, SplitRule, prepare
from composerlite.data.shards import HEADER_BYTES, MAGIC, ShardWriter
from composerlite.data.sources import resolve_source

EOT = 50256
# Small enough that a few thousand tokens make several blocks and shards.
SMALL = {"block_tokens": 64, "blocks_per_shard": 3}


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in texts))
    return path


def texts(n: int) -> list[str]:
    return [f"Document {i}: " + " ".join(f"w{(i * 7 + j) % 113}" for j in range(i % 13 + 1)) for i in range(n)]


def shard_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("*.bin"))}


def manifest_without_date(folder: Path) -> dict:
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    del manifest["created"]
    return manifest


def test_shards_are_llm_c_bin_files_and_the_manifest_describes_them(tmp_path):
    docs = texts(60)
    manifest = prepare(resolve_source(str(write_jsonl(tmp_path / "d.jsonl", docs))), tmp_path / "out",
                       rule=SplitRule(eval_fraction=0.1), **SMALL)
    tok = load_tokenizer()
    stream = []
    for split in ("train", "eval"):
        shards = manifest["shards"][split]
        assert [shard["file"] for shard in shards] == [f"{split}-{i:06d}.bin" for i in range(len(shards))]
        for index, shard in enumerate(shards):
            data = (tmp_path / "out" / shard["file"]).read_bytes()
            # Read as llm.c's and modded-nanogpt's loaders do: 256 int32 of header, then uint16 tokens.
            header = np.frombuffer(data[:HEADER_BYTES], dtype="<i4")
            assert header[0] == MAGIC == 20240520 and header[1] == 1 and header[2] == shard["tokens"]
            assert not header[3:].any() and len(data) == HEADER_BYTES + 2 * shard["tokens"]
            assert shard["sha256"] == hashlib.sha256(data).hexdigest()
            assert (shard["tokens"] == 64 * 3) == (index < len(shards) - 1), "every shard but the last is full"
            tokens = np.frombuffer(data[HEADER_BYTES:], dtype=np.uint16)
            assert shard["block_sha256"] == [hashlib.sha256(tokens[i:i + 64].tobytes()).hexdigest()
                                             for i in range(0, len(tokens), 64)]
            stream += tokens.tolist()
        assert manifest["tokens"][split] == sum(shard["tokens"] for shard in shards)
    assert len(manifest["shards"]["train"]) > 2
    assert sorted(tok.decode(stream).split("<|endoftext|>")[:-1]) == sorted(docs)
    assert manifest["documents"] == {"all": 60, "eval": 6}
    assert manifest["tokenizer"] == tok.identity and manifest["format_version"] == 1
    assert manifest["split"]["eval_fraction"] == 0.1 and manifest["source"]["description"].endswith("d.jsonl")
    assert not (tmp_path / "out" / STATE_FILE).exists() and not list((tmp_path / "out").glob(".*.partial"))
    corpus = open_corpus(tmp_path / "out")
    assert corpus.train.read().tolist() == stream[:manifest["tokens"]["train"]]


def expected_split(docs: list[str], rule: SplitRule) -> tuple[list[int], list[int]]:
    """The held-out rule written out directly: blocks of `block_documents`, each its own permutation."""
    tok, train, held = load_tokenizer(), [], []
    for start in range(0, len(docs), rule.block_documents):
        block = docs[start:start + rule.block_documents]
        picks = rule.held_out(start // rule.block_documents, len(block))
        for position, text in enumerate(block):
            tokens = tok.encode(text) + [EOT]
            if position in picks and len(held) < rule.eval_token_budget:
                held += tokens
            else:
                train += tokens
    return train, held


@pytest.mark.parametrize("n_docs", [30, 33, 7])
def test_held_out_documents_follow_the_block_rule_including_a_partial_last_block(tmp_path, n_docs):
    docs, rule = texts(n_docs), SplitRule(eval_fraction=0.2, block_documents=10)
    prepare(resolve_source(str(write_jsonl(tmp_path / "d.jsonl", docs))), tmp_path / "out", rule=rule, **SMALL)
    corpus = open_corpus(tmp_path / "out")
    train, held = expected_split(docs, rule)
    assert corpus.train.read().tolist() == train and corpus.eval.read().tolist() == held
    assert corpus.manifest["documents"]["eval"] == held.count(EOT) == sum(
        len(rule.held_out(b, min(10, n_docs - 10 * b))) for b in range(-(-n_docs // 10)))


def test_the_held_out_token_budget_caps_the_split(tmp_path):
    docs, rule = texts(200), SplitRule(eval_fraction=0.5, block_documents=20, eval_token_budget=100)
    prepare(resolve_source(str(write_jsonl(tmp_path / "d.jsonl", docs))), tmp_path / "out", rule=rule, **SMALL)
    corpus = open_corpus(tmp_path / "out")
    train, held = expected_split(docs, rule)
    assert corpus.eval.read().tolist() == held and corpus.train.read().tolist() == train
    assert 100 <= len(held) < 100 + 40 and len(train) > 4 * len(held)


class Interrupted(BaseException):
    pass


class StopsAfter:
    """A source that stops the process (as a kill would, but in-process) after `n` documents."""

    def __init__(self, source, n):
        self.source, self.n = source, n
        self.name, self.description = source.name, source.description

    def identity(self):
        return self.source.identity()

    def fraction_done(self, cursor):
        return self.source.fraction_done(cursor)

    def documents(self, start=None):
        for count, item in enumerate(self.source.documents(start)):
            if count == self.n:
                raise Interrupted
            yield item


@pytest.mark.parametrize("stops", [[100], [1200, 900, 1000], [1999]])
def test_an_interrupted_preparation_continues_to_the_same_shards(tmp_path, stops):
    # Documents are read up to (2 x workers + 1) tokenizer batches ahead of the ones being written,
    # so the stops are far enough apart for checkpoints to land between them.
    spec = str(write_jsonl(tmp_path / "d.jsonl", texts(2000)))
    rule = SplitRule(eval_fraction=0.1, block_documents=40)
    prepare(resolve_source(spec), tmp_path / "whole", rule=rule, workers=1, **SMALL)
    for n in stops:
        with pytest.raises(Interrupted):
            prepare(StopsAfter(resolve_source(spec), n), tmp_path / "resumed", rule=rule, workers=1, **SMALL)
    assert (tmp_path / "resumed" / STATE_FILE).exists() == (max(stops) > 1000)
    prepare(resolve_source(spec), tmp_path / "resumed", rule=rule, workers=1, **SMALL)
    assert shard_files(tmp_path / "resumed") == shard_files(tmp_path / "whole")
    assert manifest_without_date(tmp_path / "resumed") == manifest_without_date(tmp_path / "whole")
    assert not list((tmp_path / "resumed").glob(".*.partial")) and not (tmp_path / "resumed" / STATE_FILE).exists()


PREPARE_SLOWLY = textwrap.dedent("""
    import sys, time
    from composerlite.data.prepare import SplitRule, prepare
    from composerlite.data.sources import resolve_source

    class Slow:  # ~1 ms a document, so a kill at a random moment lands in the middle of the pass
        def __init__(self, source):
            self.source, self.name, self.description = source, source.name, source.description
        def identity(self): return self.source.identity()
        def fraction_done(self, cursor): return self.source.fraction_done(cursor)
        def documents(self, start=None):
            for item in self.source.documents(start):
                time.sleep(0.001)
                yield item

    prepare(Slow(resolve_source(sys.argv[1])), sys.argv[2], rule=SplitRule(eval_fraction=0.05, block_documents=25),
            block_tokens=128, blocks_per_shard=2)
""")


def new_checkpoint(folder: Path, previous: bytes | None, process: subprocess.Popen) -> bytes | None:
    """Waits until the preparation in `process` writes a checkpoint other than `previous` (None if it ends first)."""
    while process.poll() is None:
        try:
            current = (folder / STATE_FILE).read_bytes()
        except FileNotFoundError:
            current = None
        if current is not None and current != previous:
            return current
        time.sleep(0.005)
    return None


def test_killed_at_random_moments_a_rerun_ends_with_the_shards_of_an_uninterrupted_run(tmp_path):
    spec = str(write_jsonl(tmp_path / "d.jsonl", texts(3000)))
    script = tmp_path / "prepare_slowly.py"
    script.write_text(PREPARE_SLOWLY)
    command = [sys.executable, str(script), spec]
    whole = subprocess.run([*command, str(tmp_path / "whole")], capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    # Each kill lands at a random moment up to 0.15 s after a checkpoint (one every ~25 ms): between
    # checkpoints, mid-write, mid-publication of a shard, or while the next checkpoint is written.
    # A run may still end on its own before its kill lands (a fast host near the end of the pass):
    # that try is not counted as a kill, and the test asks for three that landed.
    moments, killed, kills, state = random.Random(23), tmp_path / "killed", [], None
    for _ in range(8):
        process = subprocess.Popen([*command, str(killed)])
        state = new_checkpoint(killed, state, process)
        if state is None:
            break
        delay = moments.uniform(0, 0.15)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        if process.wait() == -signal.SIGKILL:
            kills.append(round(delay, 3))
        if len(kills) == 4:
            break
    assert len(kills) >= 3, f"kills that landed after checkpoints: {kills}"
    assert subprocess.run([*command, str(killed)]).returncode == 0
    assert shard_files(killed) == shard_files(tmp_path / "whole"), f"kills after checkpoints: {kills}"
    assert manifest_without_date(killed) == manifest_without_date(tmp_path / "whole")


def test_a_shard_published_after_the_last_checkpoint_is_taken_back(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    writer = ShardWriter(folder, "train", block_tokens=4, blocks_per_shard=2, published=[], partial_tokens=0)
    writer.append(np.arange(6, dtype=np.uint16))
    state = writer.checkpoint()
    writer.append(np.arange(100, 120, dtype=np.uint16))  # publishes shards 0 and 1, then dies
    writer.close()
    assert (folder / "train-000001.bin").exists()
    again = ShardWriter(folder, "train", 4, 2, **state)
    again.append(np.arange(200, 204, dtype=np.uint16))
    shards = again.finish()
    assert [shard["file"] for shard in shards] == ["train-000000.bin", "train-000001.bin"]
    tokens = np.fromfile(folder / "train-000000.bin", dtype=np.uint16, offset=HEADER_BYTES)
    assert tokens.tolist() == [0, 1, 2, 3, 4, 5, 200, 201]
    assert sorted(path.name for path in folder.iterdir()) == ["train-000000.bin", "train-000001.bin"]
    assert np.fromfile(folder / "train-000001.bin", dtype=np.uint16, offset=HEADER_BYTES).tolist() == [202, 203]


def test_a_prepared_folder_is_reused_and_refuses_another_source(tmp_path, capsys):
    first = write_jsonl(tmp_path / "a.jsonl", texts(20))
    assert cli.main(["data", "prepare", str(first), "--out", str(tmp_path / "out")]) == 0
    before = shard_files(tmp_path / "out")
    assert cli.main(["data", "prepare", str(first), "--out", str(tmp_path / "out")]) == 0
    assert shard_files(tmp_path / "out") == before
    other = write_jsonl(tmp_path / "b.jsonl", texts(21))
    capsys.readouterr()
    assert cli.main(["data", "prepare", str(other), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "already holds a corpus prepared from" in error and error.count("\n") == 1
    assert shard_files(tmp_path / "out") == before


def test_data_info_prints_the_manifest(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # long paths on one line
    spec = write_jsonl(tmp_path / "a.jsonl", texts(50))
    assert cli.main(["data", "prepare", str(spec), "--out", str(tmp_path / "out"), "--workers", "2"]) == 0
    capsys.readouterr()
    assert cli.main(["data", "info", str(tmp_path / "out"), "--verify"]) == 0
    shown = capsys.readouterr()
    for text in ("a.jsonl", "gpt2-bpe", "50 (1 held out)", "train tokens", "corpus id", "2.0% of documents"):
        assert text in shown.out
    assert "every block" in shown.err
    assert cli.main(["data", "info", str(tmp_path / "out"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["documents"] == {"all": 50, "eval": 1} and "block_sha256" not in printed["shards"]["train"][0]


def prepared(tmp_path: Path) -> Path:
    prepare(resolve_source(str(write_jsonl(tmp_path / "d.jsonl", texts(40)))), tmp_path / "out", **SMALL)
    return tmp_path / "out"


def one_line_error(capsys, argv: list[str], code: int = 2) -> str:
    capsys.readouterr()
    assert cli.main(argv) == code
    error = capsys.readouterr().err
    assert error.startswith("composerlite: error: ") and error.count("\n") == 1, error
    return error


def test_a_damaged_shard_is_named_when_read(tmp_path, capsys):
    folder = prepared(tmp_path)
    shard = folder / "train-000001.bin"
    data = bytearray(shard.read_bytes())
    data[HEADER_BYTES + 2 * 64 + 10] ^= 0xFF  # a byte of block 1 of shard 1 flipped, same size
    shard.write_bytes(bytes(data))
    corpus = open_corpus(folder)
    corpus.train.read_block(3)  # block 0 of shard 1 is intact
    with pytest.raises(DataError, match=r"train-000001.bin is damaged \(block 1 does not match its SHA-256\)"):
        corpus.train.read_block(4)
    assert "train-000001.bin is damaged" in one_line_error(capsys, ["data", "info", str(folder), "--verify"])
    shard.write_bytes(bytes(data[:-2]))
    assert "train-000001.bin has" in one_line_error(capsys, ["data", "info", str(folder)])
    shard.unlink()
    assert "train-000001.bin is missing" in one_line_error(capsys, ["data", "info", str(folder)])


@pytest.mark.parametrize("change, message", [
    ({"tokenizer": "cl100k:0000"}, "was tokenized with cl100k:0000"),
    ({"format_version": 99}, "is a format version 99 corpus"),
    ({"format": "something-else"}, "is not a composerlite corpus manifest"),
])
def test_a_manifest_of_another_tokenizer_or_format_is_refused(tmp_path, capsys, change, message):
    folder = prepared(tmp_path)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, **change}))
    assert message in one_line_error(capsys, ["data", "info", str(folder)])
    assert message in one_line_error(capsys, ["run", "--model", "gpt2-tiny", "--data", str(folder),
                                              "--run-dir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make_source, message", [
    (lambda p: write_jsonl(p / "blank.jsonl", ["", "  \n"]), "no text found"),
    (lambda p: write_bytes(p / "bad.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n'), "bad.jsonl line 2 is not UTF-8 text"),
    (lambda p: p / "missing.jsonl", "data file not found"),
])
def test_bad_sources_get_one_line_and_write_no_corpus(tmp_path, capsys, make_source, message):
    source = make_source(tmp_path)
    assert message in one_line_error(capsys, ["data", "prepare", str(source), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_folders_that_are_not_corpora_are_refused(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    spec = str(write_jsonl(tmp_path / "d.jsonl", texts(5)))
    assert "is not empty (keep.txt, ...)" in one_line_error(capsys, ["data", "prepare", spec, "--out", str(tmp_path / "notes")])
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine"
    assert "is not a prepared corpus" in one_line_error(capsys, ["data", "info", str(tmp_path / "notes")])
    assert "is a file" in one_line_error(capsys, ["data", "prepare", spec, "--out", spec])
    assert "workers must be at least 1, got 0" in one_line_error(
        capsys, ["data", "prepare", spec, "--out", str(tmp_path / "new"), "--workers", "0"])
    assert not (tmp_path / "new").exists()


def test_a_full_disk_stops_with_one_line_keeps_what_was_published_and_the_rerun_finishes(tmp_path, capsys, monkeypatch):
    spec, rule = str(write_jsonl(tmp_path / "d.jsonl", texts(400))), SplitRule(block_documents=16)
    whole = prepare(resolve_source(spec), tmp_path / "whole", rule=rule, **SMALL)
    append, written = ShardWriter.append, []

    def filling_up(self, tokens):
        written.append(len(tokens))
        if sum(written) > 1500:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, tokens)

    monkeypatch.setattr(ShardWriter, "append", filling_up)
    with pytest.raises(OSError, match="No space left"):
        prepare(resolve_source(spec), tmp_path / "out", rule=rule, **SMALL)
    published = shard_files(tmp_path / "out")
    assert len(published) >= 5 and not (tmp_path / "out" / MANIFEST_FILE).exists()
    # From the command line: one line, exit 1 (a runtime failure, not a usage mistake).
    error = one_line_error(capsys, ["data", "prepare", spec, "--out", str(tmp_path / "cli")], code=1)
    assert "No space left on device" in error and "continues from the last checkpoint" in error
    monkeypatch.setattr(ShardWriter, "append", append)
    prepare(resolve_source(spec), tmp_path / "out", rule=rule, **SMALL)
    finished = shard_files(tmp_path / "out")
    assert finished == shard_files(tmp_path / "whole") and whole["tokens"]["train"] > 1500
    assert all(finished[name] == data for name, data in published.items())


def test_training_reads_a_prepared_folder_without_tokenizing(tmp_path, monkeypatch):
    from composerlite.data.tokenizer import GPT2Tokenizer
    from composerlite import train

    folder = tmp_path / "out"
    prepare(resolve_source(str(write_jsonl(tmp_path / "d.jsonl", texts(300)))), folder, rule=SplitRule(0.2), **SMALL)
    monkeypatch.setattr(GPT2Tokenizer, "encode_array", lambda *args: pytest.fail("tokenized again"))
    started = time.perf_counter()
    result = train({"model": "gpt2-tiny", "data": str(folder), "max_duration": "3ba", "batch_size": 2, "seq_len": 16,
                    "eval_batches": 1, "run_dir": str(tmp_path / "run"), "device": "cpu", "precision": "fp32"})
    assert [record["step"] for record in result.records if record["event"] == "train"] == [1, 2, 3]
    assert time.perf_counter() - started < 60


def test_training_streams_a_prepared_corpus_from_an_s3_store_a_block_at_a_time(tmp_path, s3_bucket, capsys, monkeypatch):
    import fsspec

    from composerlite import train

    local = tmp_path / "out"
    prepare(resolve_source(str(write_jsonl(tmp_path / "d.jsonl", texts(300)))), local, rule=SplitRule(0.2), **SMALL)
    fs = fsspec.filesystem("s3")
    url = f"{s3_bucket}/corpora/small"
    fs.put([str(path) for path in sorted(local.glob("*")) if not path.name.startswith(".")], url + "/")
    assert cli.main(["data", "info", url, "--verify"]) == 0
    assert "matches its SHA-256" in capsys.readouterr().err
    reads = []
    cat_file = fs.cat_file  # the instance the corpus reads through too (fsspec caches instances)

    def counted(path, start=None, end=None, **kwargs):
        reads.append((path.rsplit("/", 1)[-1], None if start is None else end - start))
        return cat_file(path, start=start, end=end, **kwargs)

    monkeypatch.setattr(fs, "cat_file", counted)
    result = train({"model": "gpt2-tiny", "data": url, "max_duration": "3ba", "batch_size": 2, "seq_len": 16,
                    "eval_batches": 1, "run_dir": str(tmp_path / "run"), "device": "cpu", "precision": "fp32"})
    assert [record["step"] for record in result.records if record["event"] == "train"] == [1, 2, 3]
    corpus = open_corpus(url)
    block_sizes = {2 * min(64, shard["tokens"] - start) for split in ("train", "eval")
                   for shard in corpus.manifest["shards"][split] for start in range(0, shard["tokens"], 64)}
    shard_reads = [size for name, size in reads if name.endswith(".bin")]
    assert shard_reads and set(shard_reads) <= block_sizes, "whole blocks, never a window"
    assert len(shard_reads) <= corpus.train.n_blocks + corpus.eval.n_blocks


def _rank_reading(rank: int, port: int, argv: list[str], folder: str) -> None:
    """A torchrun-style rank that notes every block it reads, then runs `argv`."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    from composerlite.data.shards import ShardBlocks
    from composerlite.system import distributed

    torch.set_num_threads(1)
    read_block, reads = ShardBlocks.read_block, []

    def noted(self, index):
        reads.append([self.shards[0]["file"].split("-")[0], index])
        return read_block(self, index)

    ShardBlocks.read_block = noted
    code = cli.main(argv)
    distributed.shutdown()
    Path(folder, f"rank{rank}.json").write_text(json.dumps({"code": code, "reads": reads}))


def test_two_ranks_read_only_their_own_blocks_and_a_one_rank_resume_continues_their_curve(tmp_path):
    import socket

    import torch.multiprocessing as mp

    corpus = tmp_path / "corpus"
    prepare(resolve_source(str(write_jsonl(tmp_path / "d.jsonl", texts(1200)))), corpus, rule=SplitRule(0.05), **SMALL)
    run = ["run", "--model", "gpt2-tiny", "--data", str(corpus), "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
           "--precision", "fp32", "--dropout", "0", "--eval-interval", "3ba", "--eval-batches", "1", "--save-interval", "3ba"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    two = tmp_path / "two"
    mp.spawn(_rank_reading, args=(port, [*run, "--max-duration", "6ba", "--run-dir", str(two)], str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [rank["code"] for rank in ranks] == [0, 0]
    train_blocks = [{index for split, index in rank["reads"] if split == "train"} for rank in ranks]
    # 4 lanes of one window a step (global batch 4): rank 0 trains on lanes 0-1, rank 1 on lanes 2-3.
    # A block holds 4 windows, so 6 steps and the 2 batches prefetched past them need 3 blocks a lane,
    # and each lane may have read its next block ahead: a few of the corpus's 300-odd blocks.
    assert all(2 * 3 <= len(blocks) <= 2 * 4 for blocks in train_blocks) and not train_blocks[0] & train_blocks[1]
    one = tmp_path / "one"
    assert cli.main([*run, "--max-duration", "6ba", "--run-dir", str(one), "--threads", "1",
                     "--resume", str(two / "checkpoints" / "ba00000003")]) == 0

    def curve(folder):
        records = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r["loss"]) for r in records if r["event"] == "train"]

    two_ranks, resumed = curve(two), curve(one)
    assert [step for step, _ in resumed] == [4, 5, 6] and [step for step, _ in two_ranks] == [1, 2, 3, 4, 5, 6]
    assert all(abs(a - b) <= 2e-5 * max(1.0, abs(a)) for (_, a), (_, b) in zip(resumed, two_ranks[3:], strict=True))


def test_progress_goes_to_a_log_as_plain_lines(tmp_path, monkeypatch):
    import io

    from rich.console import Console

    from composerlite.data import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    log = io.StringIO()
    with progress.progress_display(Console(file=log, force_terminal=False, width=200), "tokenizing d") as on_progress:
        prepare(resolve_source(str(write_jsonl(tmp_path / "d.jsonl", texts(600)))), tmp_path / "out",
                on_progress=on_progress, **SMALL)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("tokenizing d: 256 documents, ") and " MB/s" in lines[0]
    assert lines[-1].startswith("tokenizing d: 600 documents, ") and "tokens" in lines[-1]


@pytest.mark.parametrize("buffer_tokens, tokenized", [(1 << 25, 33), (40, 33 + 3)])
def test_the_last_block_is_tokenized_once_unless_it_outgrows_the_buffer(tmp_path, monkeypatch, buffer_tokens, tokenized):
    """A block is held until its size is known; one larger than the buffer is routed as if full and,
    when the source ends inside it, routed again from the last checkpoint: the same shards either way."""
    from composerlite.data import prepare as preparation
    from composerlite.data.tokenizer import GPT2Tokenizer

    monkeypatch.setattr(preparation, "BLOCK_BUFFER_TOKENS", buffer_tokens)
    encode, calls = GPT2Tokenizer.encode_array, []
    monkeypatch.setattr(GPT2Tokenizer, "encode_array", lambda self, text: calls.append(text) or encode(self, text))
    docs, rule = texts(33), SplitRule(eval_fraction=0.2, block_documents=10)
    prepare(resolve_source(str(write_jsonl(tmp_path / "d.jsonl", docs))), tmp_path / "out", rule=rule, **SMALL)
    corpus = open_corpus(tmp_path / "out")
    assert (corpus.train.read().tolist(), corpus.eval.read().tolist()) == expected_split(docs, rule)
    assert len(calls) == tokenized
