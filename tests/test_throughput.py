"""`composerlite throughput`, the SpeedMonitor's arithmetic, and the GPU script's CPU smoke path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from composerlite.algorithms.pad_vocab import apply_pad_vocab
from composerlite.cli import main
from composerlite.models import flops_per_token
from composerlite.models import build_model
from composerlite.observe.speed_monitor import PEAK_FLOPS, model_flops_per_token, peak_flops
from composerlite.system.runtime import resolve_runtime

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
    states = {state["name"]: state for state in record["algorithm_state"]}  # the bundle's, then each member's
    assert "flash_attention" in states["fused_kernels"]["skipped"]
    assert set(states) == {"fused_kernels", *states["fused_kernels"]["applied"]}
    out = capsys.readouterr().out
    assert "skipped flash_attention" in out
    # auto precision: bf16 on a CPU with native bf16 (avx512_bf16, AMX), fp32 elsewhere; the table says which
    expected = resolve_runtime("auto", "auto").precision
    assert record["precision"] == expected and expected in out


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
    # the bench part is `composerlite bench` itself, tested in test_bench.py; here the throughput plumbing
    env = {**os.environ, "OUT": str(tmp_path), "PARTS": "targets profile"}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_benchmark.sh"), "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    payload = json.loads((tmp_path / "throughput_gpu.json").read_text())
    variants = {record["variant"] for record in payload["records"]}
    assert variants == {"baseline", "fused_kernels", "fused_kernels@64"}
    assert all("tokens_per_s" in record for record in payload["records"])
    assert any(record["batch_size"] == 64 for record in payload["records"])
    bundle = next(r for r in payload["records"] if r["variant"] == "fused_kernels")
    states = {state["name"]: state for state in bundle["algorithm_state"]}
    assert "flash_attention" in states["fused_kernels"]["skipped"]  # no CUDA: says what it left out
    assert not (tmp_path / "throughput_gpu_speedrun.json").exists()  # a part not asked for does not run
    profile = json.loads((tmp_path / "profile_gpu_52m.json").read_text())
    assert profile["step_ms"] > 0 and profile["top"] and all(row["ms_per_step"] >= 0 for row in profile["top"])
    assert any("mm" in row["name"] for row in profile["top"])  # the GEMMs show up among a step's ops


def test_the_bundle_is_judged_against_the_ceiling_measured_in_the_same_job(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from throughput_matrix import ceiling_rows, verdicts
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    ceiling = tmp_path / "gpu_ceiling.json"
    ceiling.write_text(json.dumps({"rows": [
        {"model": "gpt2-52m", "vocab": 50257, "B": 32, "mode": "default", "tokens_per_s": 8.7e5},  # unpadded: not the anchor
        {"model": "gpt2-52m", "vocab": 50304, "B": 32, "mode": "default", "tokens_per_s": 1.08e6},
        {"model": "gpt2-125m", "error": "out of memory"}]}))
    rows = ceiling_rows(str(ceiling))
    assert set(rows) == {"gpt2-52m"} and rows["gpt2-52m"]["tokens_per_s"] == 1.08e6
    bundle = {"model": "gpt2-52m", "variant": "fused_kernels", "batch_size": 32, "seq_len": 1024,
              "tokens_per_s": 1.15e6, "peak_memory_gib": 9.0}
    lines = verdicts([bundle, {**bundle, "model": "gpt2-125m", "tokens_per_s": 5e5}], "cuda", rows)
    assert "gpt2-52m bundle 1.06x the hand-written ceiling measured in this job (1,080,000 tok/s): MET" in lines
    assert not any("125m" in line and "ceiling" in line for line in lines)  # no ceiling row, no claim
    assert ceiling_rows(str(tmp_path / "absent.json")) == {}
