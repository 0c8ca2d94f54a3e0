"""Tests of the data pipeline: tokenizer, sources, corpus cache, eval split and batch streams."""

from __future__ import annotations

import json
import os
import sys
import uuid

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from composerlite.data import BatchStream, Corpus, DataError, GPT2Tokenizer, load_tokenizer, prepare_corpus

EOT = 50256


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private cache; COMPOSERLITE_CACHE also points there so nothing reaches the real home cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("COMPOSERLITE_CACHE", str(path))
    return path


@pytest.fixture
def tok() -> GPT2Tokenizer:
    return load_tokenizer()


def write_jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(texts)))
    return path


def documents(n):
    return [f"Document number {i} says hello to the world {i * 7} times." for i in range(n)]


def expected_stream(tok, texts):
    return [token for text in texts for token in tok.encode(text) + [EOT]]


# --- tokenizer ---------------------------------------------------------------------------------


def test_tokenizer_matches_gpt2(tok):
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.eot_token == EOT and tok.vocab_size == 50257
    assert tok.encode("<|endoftext|>") != [EOT], "special tokens in text must stay plain text"
    assert load_tokenizer() is tok


def test_tokenizer_roundtrip_and_batch(tok):
    texts = ["Hello world", "  indented\n\nlines\twith tabs ", "naïve café — ünïcödé 🙂", "it's we'll 12345"]
    assert tok.encode_batch(texts) == [tok.encode(text) for text in texts]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text


# --- packing, cache, eval split ----------------------------------------------------------------


def test_packing_puts_eot_after_every_document(tmp_path, cache_dir, tok):
    texts = documents(3)
    corpus = prepare_corpus(str(write_jsonl(tmp_path / "docs.jsonl", texts)), cache_dir, eval_fraction=0)
    assert isinstance(corpus, Corpus)
    assert corpus.train_tokens.dtype == np.uint16 and isinstance(corpus.train_tokens, np.memmap)
    assert corpus.train_tokens.tolist() == expected_stream(tok, texts)
    assert len(corpus.eval_tokens) == 0 and corpus.n_documents == 3
    assert corpus.cache_path.parent == cache_dir and corpus.name == "docs"


def test_cache_is_reused_without_retokenizing(tmp_path, cache_dir, monkeypatch):
    spec = str(write_jsonl(tmp_path / "docs.jsonl", documents(20)))
    first = prepare_corpus(spec, cache_dir)
    train_file = first.cache_path / "train.npy"
    mtime = train_file.stat().st_mtime_ns

    def fail(*args):
        raise AssertionError("re-tokenized a cached corpus")

    monkeypatch.setattr(GPT2Tokenizer, "encode_batch", fail)
    second = prepare_corpus(spec, cache_dir)
    assert second.cache_path == first.cache_path and train_file.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(second.train_tokens, first.train_tokens)
    np.testing.assert_array_equal(second.eval_tokens, first.eval_tokens)
    assert [p.name for p in cache_dir.iterdir()] == [first.cache_path.name], "no staging folder left behind"


def test_cache_is_invalidated_when_the_file_changes(tmp_path, cache_dir, tok):
    path = tmp_path / "notes.txt"
    path.write_text("first version")
    first = prepare_corpus(str(path), cache_dir, eval_fraction=0)
    path.write_text("second, longer version")
    second = prepare_corpus(str(path), cache_dir, eval_fraction=0)
    assert second.cache_path != first.cache_path
    assert second.train_tokens.tolist() == tok.encode("second, longer version") + [EOT]


def test_eval_split_is_by_document_fixed_and_disjoint(tmp_path, cache_dir, tok):
    texts = documents(100)
    corpus = prepare_corpus(str(write_jsonl(tmp_path / "docs.jsonl", texts)), cache_dir, eval_fraction=0.1)
    eval_docs = tok.decode(corpus.eval_tokens.tolist()).split("<|endoftext|>")[:-1]
    train_docs = tok.decode(corpus.train_tokens.tolist()).split("<|endoftext|>")[:-1]
    assert len(eval_docs) == 10 and len(train_docs) == 90
    assert sorted(eval_docs + train_docs) == sorted(texts)
    # The split is a property of the data alone: rebuilding it (new cache) picks the same documents,
    # and training streams with any seed only ever read train tokens.
    rebuilt = prepare_corpus(str(write_jsonl(tmp_path / "copy.jsonl", texts)), tmp_path / "other_cache", 0.1)
    np.testing.assert_array_equal(rebuilt.eval_tokens, corpus.eval_tokens)
    for seed in (0, 1):
        stream = BatchStream(corpus.train_tokens, seq_len=4, batch_size=2, seed=seed)
        assert all(batch["input_ids"].max() <= EOT for batch in stream.epoch(0))


@pytest.mark.parametrize("n_documents, n_eval", [(2, 1), (10, 1), (1000, 20)])
def test_at_least_one_eval_document(tmp_path, cache_dir, n_documents, n_eval):
    corpus = prepare_corpus(str(write_jsonl(tmp_path / "d.jsonl", documents(n_documents))), cache_dir, 0.02)
    assert (corpus.eval_tokens == EOT).sum() == n_eval
    assert (corpus.train_tokens == EOT).sum() == n_documents - n_eval


def test_single_document_splits_its_tokens(tmp_path, cache_dir, tok):
    text = " ".join(f"word{i}" for i in range(500))
    path = tmp_path / "one.md"
    path.write_text(text)
    corpus = prepare_corpus(str(path), cache_dir, eval_fraction=0.1)
    stream = tok.encode(text) + [EOT]
    n_eval = -(-len(stream) // 10)
    assert corpus.eval_tokens.tolist() == stream[-n_eval:]
    assert corpus.train_tokens.tolist() == stream[:-n_eval]


# --- sources -----------------------------------------------------------------------------------


def test_txt_file_is_one_document(tmp_path, cache_dir, tok):
    text = "Paragraph one.\n\nParagraph two.\n"
    (tmp_path / "a.txt").write_text(text)
    corpus = prepare_corpus(str(tmp_path / "a.txt"), cache_dir, eval_fraction=0)
    assert corpus.train_tokens.tolist() == tok.encode(text) + [EOT] and corpus.n_documents == 1


def test_json_array_file(tmp_path, cache_dir, tok):
    texts = documents(2)
    (tmp_path / "a.json").write_text(json.dumps([{"text": text} for text in texts]))
    corpus = prepare_corpus(str(tmp_path / "a.json"), cache_dir, eval_fraction=0)
    assert corpus.train_tokens.tolist() == expected_stream(tok, texts)


def test_parquet_file(tmp_path, cache_dir, tok):
    texts = documents(4)
    pq.write_table(pa.table({"text": texts, "n": list(range(4))}), tmp_path / "a.parquet")
    corpus = prepare_corpus(str(tmp_path / "a.parquet"), cache_dir, eval_fraction=0)
    assert corpus.train_tokens.tolist() == expected_stream(tok, texts)


def test_folder_reads_supported_files_recursively_in_sorted_order(tmp_path, cache_dir, tok):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("bee")
    (folder / "a.md").write_text("ay")
    write_jsonl(folder / "sub" / "c.jsonl", ["sea", "see"])
    pq.write_table(pa.table({"text": ["dee"]}), folder / "sub" / "d.parquet")
    (folder / "ignored.csv").write_text("x,y")
    corpus = prepare_corpus(str(folder), cache_dir, eval_fraction=0)
    assert corpus.train_tokens.tolist() == expected_stream(tok, ["ay", "bee", "sea", "see", "dee"])
    assert corpus.n_documents == 5 and corpus.name == "corpus"


def test_memory_fsspec_file_and_folder(cache_dir, tok):
    root = f"memory://test-{uuid.uuid4().hex}"
    texts = documents(3)
    with fsspec.open(f"{root}/docs/part-0.jsonl", "w") as file:
        file.write("".join(json.dumps({"text": text}) + "\n" for text in texts[:2]))
    with fsspec.open(f"{root}/docs/part-1.txt", "w") as file:
        file.write(texts[2])
    folder = prepare_corpus(f"{root}/docs", cache_dir, eval_fraction=0)
    assert folder.train_tokens.tolist() == expected_stream(tok, texts)
    single = prepare_corpus(f"{root}/docs/part-1.txt", cache_dir, eval_fraction=0)
    assert single.train_tokens.tolist() == expected_stream(tok, texts[2:])
    # Rewriting the remote file must invalidate its cache entry.
    with fsspec.open(f"{root}/docs/part-1.txt", "w") as file:
        file.write("changed")
    changed = prepare_corpus(f"{root}/docs/part-1.txt", cache_dir, eval_fraction=0)
    assert changed.train_tokens.tolist() == tok.encode("changed") + [EOT]


def test_default_corpus(cache_dir):
    corpus = prepare_corpus(None, cache_dir)
    assert corpus.name == "kjv-bible" and corpus.n_documents == 1189  # chapters
    assert len(corpus.train_tokens) > 500_000 and len(corpus.eval_tokens) > 0
    assert load_tokenizer().decode(corpus.train_tokens[:4].tolist()).startswith("Genesis 1")
    assert prepare_corpus("default", cache_dir).cache_path == corpus.cache_path


def test_default_cache_dir_comes_from_environment(tmp_path, cache_dir):
    (tmp_path / "a.txt").write_text("hello")
    assert prepare_corpus(str(tmp_path / "a.txt")).cache_path.parent == cache_dir


# --- errors ------------------------------------------------------------------------------------


def write_bytes(tmp_path, name, data):
    (tmp_path / name).write_bytes(data)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "make_spec, message",
    [
        (lambda p: str(p / "missing.txt"), "data file not found: "),
        (lambda p: "Skylion007/openwebtext", "hf:Skylion007/openwebtext"),
        (lambda p: write_bytes(p, "empty.txt", b""), "no text found"),
        (lambda p: write_bytes(p, "blank.jsonl", b"\n\n"), "no text found"),
        (lambda p: write_bytes(p, "bin.txt", b"\x89PNG\x00\x01"), "binary file"),
        (lambda p: write_bytes(p, "latin1.txt", "café".encode("latin-1")), "not UTF-8"),
        (lambda p: write_bytes(p, "a.jsonl", b'{"body": "x"}\n'), "line 1 has no 'text' field"),
        (lambda p: write_bytes(p, "b.jsonl", b'{"text": "x"}\n{oops\n'), "line 2 is not valid JSON"),
        (lambda p: write_bytes(p, "c.parquet", b"not parquet"), "not a valid parquet file"),
        (lambda p: write_bytes(p, "data.csv", b"a,b"), "unsupported data file type"),
        (lambda p: str((p / "empty_folder").mkdir() or p / "empty_folder"), "no .txt"),
        (lambda p: "nosuchscheme://bucket/data.txt", "unknown data source scheme 'nosuchscheme://'"),
        (lambda p: "memory://does-not-exist/x.txt", "data file not found: memory://"),
        (lambda p: "hf:", "bad Hugging Face data spec"),
    ],
)
def test_user_mistakes_raise_one_line_data_error(tmp_path, cache_dir, make_spec, message):
    with pytest.raises(DataError) as raised:
        prepare_corpus(make_spec(tmp_path), cache_dir)
    assert message in str(raised.value) and "\n" not in str(raised.value)
    assert isinstance(raised.value, ValueError)


def test_parquet_without_text_column(tmp_path, cache_dir):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "a.parquet")
    with pytest.raises(DataError, match="no 'text' column"):
        prepare_corpus(str(tmp_path / "a.parquet"), cache_dir)


def test_hugging_face_source_without_datasets_package(cache_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match="needs the datasets package"):
        prepare_corpus("hf:Skylion007/openwebtext", cache_dir)


def test_bad_eval_fraction(tmp_path, cache_dir):
    with pytest.raises(DataError, match="eval_fraction"):
        prepare_corpus(None, cache_dir, eval_fraction=1.0)


def test_failed_build_leaves_no_cache(tmp_path, cache_dir, monkeypatch):
    spec = str(write_jsonl(tmp_path / "d.jsonl", documents(5)))
    monkeypatch.setattr(np, "save", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        prepare_corpus(spec, cache_dir)
    assert list(cache_dir.iterdir()) == []


# --- BatchStream -------------------------------------------------------------------------------


def token_array(n):
    return np.arange(n, dtype=np.uint16)


def collect(stream, epoch=0, start_batch=0):
    return [batch["input_ids"] for batch in stream.epoch(epoch, start_batch=start_batch)]


def test_batches_are_int64_windows_of_the_tokens():
    tokens = token_array(1000)
    stream = BatchStream(tokens, seq_len=16, batch_size=4, shuffle=False)
    assert len(stream) == 1000 // 16 // 4 and stream.tokens_per_batch == 64
    batches = collect(stream)
    assert len(batches) == len(stream)
    assert all(batch.dtype == torch.int64 and batch.shape == (4, 16) for batch in batches)
    np.testing.assert_array_equal(torch.cat(batches).flatten().numpy(), tokens[: len(stream) * 64])


def test_shuffled_batches_are_deterministic_and_cover_distinct_windows():
    tokens = token_array(4096)
    stream = BatchStream(tokens, seq_len=32, batch_size=4, seed=3)
    first, again = collect(stream), collect(BatchStream(tokens, seq_len=32, batch_size=4, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    starts = torch.cat(first)[:, 0]
    assert (starts % 32 == 0).all() and len(set(starts.tolist())) == 128
    assert not torch.equal(torch.cat(first), torch.cat(collect(stream, epoch=1)))
    assert not torch.equal(torch.cat(first), torch.cat(collect(BatchStream(tokens, 32, 4, seed=4))))


def test_start_batch_resumes_exactly_without_reading_skipped_windows():
    stream = BatchStream(token_array(5000), seq_len=10, batch_size=3, seed=7)
    full = collect(stream, epoch=2)
    resumed = collect(stream, epoch=2, start_batch=5)
    assert all(torch.equal(a, b) for a, b in zip(full[5:], resumed, strict=True))
    assert collect(stream, epoch=2, start_batch=len(stream)) == []
    with pytest.raises(DataError, match="start_batch"):
        collect(stream, start_batch=len(stream) + 1)


def test_skipped_batches_are_not_read():
    stream = BatchStream(token_array(10_000), seq_len=10, batch_size=4, seed=1)
    windows, fetched = stream._windows, []

    class RecordingWindows:
        def __getitem__(self, index):
            fetched.append(np.asarray(index).copy())
            return windows[index]

    stream._windows = RecordingWindows()
    resumed = next(iter(stream.epoch(0, start_batch=100)))["input_ids"]
    assert len(fetched) == 1 and len(fetched[0]) == 4
    np.testing.assert_array_equal(resumed[:, 0].numpy(), fetched[0] * 10)


def test_ranks_are_disjoint_equal_and_cover_the_epoch():
    tokens = token_array(10_007)
    world_size, seq_len, batch_size = 3, 8, 5
    streams = [
        BatchStream(tokens, seq_len, batch_size, seed=11, rank=rank, world_size=world_size) for rank in range(world_size)
    ]
    assert len({len(stream) for stream in streams}) == 1
    starts = [torch.cat(collect(stream, epoch=1))[:, 0].tolist() for stream in streams]
    flat = [start for rank_starts in starts for start in rank_starts]
    assert len(flat) == len(set(flat)) == world_size * len(streams[0]) * batch_size
    n_windows = len(tokens) // seq_len
    assert n_windows - len(flat) < world_size * batch_size, "only the ragged end of the epoch is dropped"


def test_too_little_data_for_one_batch():
    with pytest.raises(DataError, match=r"data set has 100 tokens but one batch needs 128"):
        BatchStream(token_array(100), seq_len=16, batch_size=8)
    with pytest.raises(DataError, match=r"one batch needs 256 \(2 ranks"):
        BatchStream(token_array(200), seq_len=16, batch_size=8, world_size=2)


@pytest.mark.parametrize("kwargs", [{"seq_len": 0}, {"batch_size": -1}, {"rank": 2, "world_size": 2}])
def test_bad_stream_settings(kwargs):
    with pytest.raises(DataError):
        BatchStream(token_array(1000), **kwargs)


def test_stream_over_a_prepared_corpus(tmp_path, cache_dir):
    corpus = prepare_corpus(str(write_jsonl(tmp_path / "d.jsonl", documents(200))), cache_dir)
    stream = BatchStream(corpus.train_tokens, seq_len=16, batch_size=4, seed=0)
    batch = next(iter(stream.epoch(0)))["input_ids"]
    batch += 1  # batches are fresh, writable tensors, not views of the read-only memmap
    assert os.path.exists(corpus.cache_path / "train.npy")
