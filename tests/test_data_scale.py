"""benchmarks/data_scale.py end to end on tiny corpora: it generates them, prepares each in a measured
child process, times tiktoken against prepare in alternating pairs, reads the prepared corpus back
locally and from a moto S3 server, and writes a record with every measurement and the verdicts.
Only the record's shape and sanity are checked here: the speed targets live in the benchmark's
committed record, never in a timed test."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "data_scale.py"


def load_script():
    spec = importlib.util.spec_from_file_location("data_scale", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_data_scale_writes_a_complete_record(tmp_path, capsys):
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    out = tmp_path / "record.json"
    argv = ["--sizes-gb", "0.002,0.004", "--repeats", "2", "--workdir", str(tmp_path / "work"), "--out", str(out),
            "--seq-len", "128", "--batch-size", "8", "--loader-warmup", "2", "--loader-batches", "5",
            "--loader-repeats", "2", "--parallel-check-s", "0.2"]
    assert load_script().main(argv) == 0
    record = json.loads(out.read_text())

    assert record["sizes_gb"] == [0.002, 0.004]
    assert list((tmp_path / "work").iterdir()) == []  # the scratch folder is removed without --keep
    assert record["git"]["commit"] and isinstance(record["git"]["dirty"], bool)
    assert "composerlite/data/prepare.py" in record["data_layer_sha256"]
    assert record["machine"]["logical_cores_available"] >= 1 and record["machine"]["ram_gib"] > 0
    assert all(record["versions"][package] for package in ("python", "torch", "tiktoken", "numpy"))
    assert len(record["load_average_start"]) == len(record["load_average_end"]) == 3
    assert positive(record["parallel_check"]["speedup_of_n"])

    small, large = record["corpora"]
    assert small["bytes"] >= 0.002e9 and large["bytes"] >= 0.004e9 and large["documents"] > small["documents"]
    assert small["characters_per_document"]["max"] > 10 * small["characters_per_document"]["min"]

    assert [len(record["prepare"]["0.002"]), len(record["prepare"]["0.004"])] == [2, 1]  # the pairs; the larger once
    for runs in record["prepare"].values():
        for run in runs:
            for key in ("wall_s", "peak_rss_bytes", "tokens", "text_tokens", "documents", "text_tokens_per_s",
                        "text_mb_per_s", "shard_bytes", "cores_used"):
                assert positive(run[key]), (key, run[key])
            assert run["tokens"] == run["text_tokens"] + run["documents"] == run["train_tokens"] + run["eval_tokens"]
            assert run["peak_rss_bytes"] >= max(mib for _, mib in run["rss_samples_s_mib"]) * (1 << 20) * 0.99
    # Same texts, same encoding: prepare's tokens less its end-of-text tokens are tiktoken's, every run.
    assert len(record["tiktoken"]) == 2
    for tick in record["tiktoken"]:
        assert tick["tokens"] == record["prepare"]["0.002"][0]["text_tokens"] and positive(tick["tokens_per_s"])
        assert tick["threads"] == record["threads"]
        assert tick["prepare_encode_in_memory"]["tokens"] == tick["tokens"]
        assert positive(tick["prepare_encode_in_memory"]["tokens_per_s"])

    comparison = record["rate_comparison"]
    assert len(comparison["ratios"]) == 2 and all(positive(ratio) for ratio in comparison["ratios"])
    low, high = comparison["ci95"]
    assert 0 < low <= comparison["geometric_mean"] <= high

    local = record["loader_local"]
    for cache in ("cold", "warm"):
        assert len(local[cache]["runs"]) == 2 and positive(local[cache]["median_tokens_per_s"])
        assert all(run["batches"] == 5 and run["tokens"] == 5 * 8 * 128 for run in local[cache]["runs"])
    s3 = record["loader_s3"]
    assert s3["uploaded_bytes"] > 0 and len(s3["runs"]) == 2 and positive(s3["median_tokens_per_s"])

    verdicts = record["verdicts"]
    assert set(verdicts) == {"prepare_peak_rss", "prepare_rate_vs_tiktoken", "loader_local", "loader_s3_moto"}
    assert all(isinstance(verdict["met"], bool) for verdict in verdicts.values())
    assert positive(verdicts["prepare_peak_rss"]["peak_0.004gb_over_0.002gb"])
    assert "prepare / tiktoken" in capsys.readouterr().out


def test_data_scale_refuses_when_the_disk_is_too_small(tmp_path, monkeypatch):
    script = load_script()
    monkeypatch.setattr(script.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10**9})())
    with pytest.raises(SystemExit, match="not enough disk"):
        script.main(["--sizes-gb", "0.25,2", "--workdir", str(tmp_path), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists() and list(tmp_path.iterdir()) == []


def test_synthetic_documents_are_deterministic_and_varied():
    script = load_script()
    first = [text for text, _ in zip(script.documents(7), range(200))]
    assert first == [text for text, _ in zip(script.documents(7), range(200))]
    assert first != [text for text, _ in zip(script.documents(8), range(200))]
    assert len(set(first)) == len(first)
    lengths = sorted(map(len, first))
    assert lengths[0] < 1000 and lengths[-1] > 10_000
