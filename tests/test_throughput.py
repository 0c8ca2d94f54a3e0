"""`composerlite throughput`, the SpeedMonitor's arithmetic, and the GPU script's CPU smoke path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from composerlite.cli import main
from composerlite.models import flops_per_token
from composerlite.speed_monitor import PEAK_FLOPS, model_flops_per_token, peak_flops
from composerlite.algorithms.pad_vocab import apply_pad_vocab
from composerlite.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_command_writes_json(tmp_path, capsys):
    out = tmp_path / "t.json"
    code = main(["throughput", "--model", "gpt2-tiny", "--steps", "2", "--warmup-steps", "1", "--batch-size", "2",
                 "--seq-len", "32", "--peak-flops", "1e12", "--algo", "fused_kernels", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    for field in ("device_name", "torch", "date", "tokens_per_s", "samples_per_s", "mfu", "peak_memory_gib", "algorithm_state"):
        assert field in record
    assert record["tokens_per_s"] == pytest.approx(record["samples_per_s"] * 32)
    # MFU = tokens/s x model FLOPs per token (padding excluded) / the peak the user gave
    assert record["flops_per_token"] == pytest.approx(flops_per_token("gpt2-tiny", 32))
    assert record["mfu"] == pytest.approx(record["tokens_per_s"] * record["flops_per_token"] / 1e12)
    bundle = record["algorithm_state"][0]
    assert bundle["name"] == "fused_kernels" and "flash_attention" in bundle["skipped"]
    assert "skipped flash_attention" in capsys.readouterr().out


def test_throughput_bad_input_is_one_line_exit_2(capsys):
    assert main(["throughput", "--model", "gpt2-huge"]) == 2
    assert main(["throughput", "--model", "gpt2-tiny", "--algo", "no_such_algo"]) == 2
    assert main(["throughput", "--model", "gpt2-tiny", "--batch-size", "0"]) == 2  # not "use the default"
    assert main(["throughput", "--model", "gpt2-tiny", "--seq-len", "-3"]) == 2
    assert main(["throughput", "--model", "gpt2-tiny", "--algo", "compile:mode=bogus"]) == 2
    assert main(["throughput", "--model", "gpt2-tiny", "--algo", "fused_kernels:compile_backend=nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(line.startswith("composerlite: error:") for line in err)
    assert "unknown compile mode 'bogus'" in err[4] and "unknown compile backend 'nope'" in err[5]


def test_peak_table_and_padding_free_flops():
    assert peak_flops(torch.device("cpu"), "fp32")[0] is None  # no guessing on CPU
    assert peak_flops(torch.device("cpu"), "fp32", {"cpu": {"fp32": 5.0}}) == (5.0, "table: cpu fp32")
    assert PEAK_FLOPS["H100"]["bf16"] > PEAK_FLOPS["A100"]["bf16"]
    model = build_model("gpt2-tiny", dropout=0.0)
    apply_pad_vocab(model)  # padded rows are not model FLOPs
    assert model_flops_per_token(model, 64) == pytest.approx(flops_per_token("gpt2-tiny", 64))


def test_gpu_benchmark_script_smoke_runs_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_benchmark.sh"), "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    payload = json.loads((tmp_path / "throughput_smoke.json").read_text())
    variants = {record["variant"] for record in payload["records"]}
    assert variants == {"baseline", "fused_kernels", "fused_kernels@4", "fused_kernels:exclude=[fused_cross_entropy]"}
    assert all("tokens_per_s" in record for record in payload["records"])
    assert any(record["batch_size"] == 4 for record in payload["records"])
    ablated = next(r for r in payload["records"] if r["variant"].endswith("[fused_cross_entropy]"))
    assert "fused_cross_entropy" in ablated["algorithm_state"][0]["skipped"]
    profile = json.loads((tmp_path / "profile_smoke.json").read_text())
    assert profile["step_ms"] > 0 and profile["top"] and all(row["ms_per_step"] >= 0 for row in profile["top"])
    assert any("mm" in row["name"] for row in profile["top"])  # the GEMMs show up among a step's ops
