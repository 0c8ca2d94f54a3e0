"""fsspec run directories: S3 (a moto server on loopback, through s3fs), memory://, and retries."""

from __future__ import annotations

import json

import pytest

from composerlite import cli
from composerlite.run.checkpoint import read_verified
from composerlite.run.run_directory import find_checkpoints
from composerlite.system import storage
from composerlite.system.storage import location

RUN = ["run", "--model", "gpt2-tiny", "--batch-size", "4", "--seq-len", "32", "--device", "cpu",
       "--precision", "fp32", "--eval-interval", "2ba", "--eval-batches", "1", "--save-interval", "2ba"]


def metrics_steps(text: str) -> list[int]:
    return [r["step"] for r in map(json.loads, text.splitlines()) if r["event"] == "train"]


def test_s3_run_dir_checkpoints_metrics_and_autoresume(s3_bucket, text_file):
    run_dir = f"{s3_bucket}/tiny"
    assert cli.main([*RUN, "--data", str(text_file), "--max-duration", "4ba", "--run-dir", run_dir]) == 0
    where = location(run_dir)
    assert [folder.name for folder in find_checkpoints(where)] == ["ba00000002", "ba00000004"]
    read_verified(find_checkpoints(where)[-1])
    assert metrics_steps(where.child("metrics.jsonl").read_bytes().decode()) == [1, 2, 3, 4]
    assert b"model: gpt2-tiny" in where.child("config.yaml").read_bytes()
    assert not [name for name in where.child("checkpoints", "ba00000004").listdir() if ".tmp-" in name]

    assert cli.main([*RUN, "--data", str(text_file), "--max-duration", "6ba", "--run-dir", run_dir, "--autoresume"]) == 0
    assert metrics_steps(where.child("metrics.jsonl").read_bytes().decode()) == [1, 2, 3, 4, 5, 6]


def test_data_from_s3(s3_bucket, text_file, tmp_path):
    url = f"{s3_bucket}/data/corpus.txt"
    location(url).write_bytes(text_file.read_bytes())
    assert cli.main([*RUN, "--data", url, "--max-duration", "2ba", "--run-dir", str(tmp_path / "run")]) == 0


def test_transient_s3_failure_is_retried(s3_bucket, monkeypatch, capsys):
    target = location(f"{s3_bucket}/retry/file.bin")
    real_pipe, calls = target.fs.pipe_file, []

    def flaky_pipe(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            raise ConnectionResetError(104, "Connection reset by peer")
        return real_pipe(path, *args, **kwargs)

    monkeypatch.setattr(target.fs, "pipe_file", flaky_pipe)  # the instance s3fs hands every caller
    target.write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert len(calls) == 2 and "retrying" in capsys.readouterr().err


def test_permanent_errors_are_not_retried(monkeypatch):
    calls = []

    def missing():
        calls.append(1)
        raise FileNotFoundError("nope")

    with pytest.raises(FileNotFoundError):
        storage.retrying(missing, "reading nothing", backoff_s=0.0)
    assert calls == [1]


def test_retries_are_bounded():
    calls = []

    def down():
        calls.append(1)
        raise ConnectionResetError(104, "Connection reset by peer")

    with pytest.raises(ConnectionResetError):
        storage.retrying(down, "writing", retries=3, backoff_s=0.0)
    assert len(calls) == 4


def test_memory_run_dir(text_file):
    run_dir = "memory://composerlite-test/run"
    assert cli.main([*RUN, "--data", str(text_file), "--max-duration", "2ba", "--run-dir", run_dir]) == 0
    where = location(run_dir)
    assert [folder.name for folder in find_checkpoints(where)] == ["ba00000002"]
    assert metrics_steps(where.child("metrics.jsonl").read_bytes().decode()) == [1, 2]
    where.remove()


def test_local_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = location(str(tmp_path / "file.bin"))
    target.write_bytes(b"old contents")

    def fail(file, data):
        file.write(data[:3])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "write_all", fail)
    with pytest.raises(OSError):
        target.write_bytes(b"new contents")
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.bin"]  # no temporary left behind
