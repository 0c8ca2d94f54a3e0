"""Shared fixtures: a small local corpus and a tiny trainer factory, all under tmp paths."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(min(2, os.cpu_count() or 1))

SAMPLE_TEXT = "\n\n".join(
    f"Chapter {i}. The quick brown fox jumps over the lazy dog number {i}, "
    "and the patient reader counts every word while the model learns to predict the next one."
    for i in range(400)
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Never write into the user's real cache from tests."""
    monkeypatch.setenv("COMPOSERLITE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(SAMPLE_TEXT)
    return path


@pytest.fixture
def corpus_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(20):
        (folder / f"doc{i:02d}.txt").write_text(SAMPLE_TEXT[i * 1000 : (i + 1) * 1000 + 2000])
    return folder


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto's) on 127.0.0.1 at a free port, for the whole session."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, request):
    import fsspec

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    # A fresh bucket per test; S3 bucket names are lowercase letters, digits and dashes.
    name = request.node.name
    bucket = f"{re.sub(r'[^a-z0-9]+', '-', name.lower())[:48].strip('-')}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    fs.mkdir(bucket)
    fsspec.filesystem("s3").invalidate_cache()
    yield f"s3://{bucket}"
