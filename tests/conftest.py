"""Shared fixtures: a small local corpus and a tiny trainer factory, all under tmp paths."""

from __future__ import annotations

import os
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
