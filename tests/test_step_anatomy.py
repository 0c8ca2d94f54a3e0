"""benchmarks/step_anatomy.py: the bundle's step counted against the anchor's (issue 24)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import step_anatomy
finally:
    sys.path.remove(str(ROOT / "benchmarks"))


def test_eager_variants_are_counted_and_tabled(tmp_path):
    out = tmp_path / "anatomy.json"
    assert step_anatomy.main(["--model", "gpt2-tiny", "--batch-size", "2", "--seq-len", "32", "--precision", "fp32",
                              "--warmup-steps", "1", "--variants", "bundle eager", "anchor eager", "--shape-steps", "0",
                              "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    for field in ("torch", "transformers", "date", "git_commit", "device_name", "cpu", "anchor_copy", "table"):
        assert field in record
    bundle, anchor = record["variants"]["bundle eager"], record["variants"]["anchor eager"]
    assert anchor["syncs_per_step"] == 0  # the anchor's loop never reads the loss
    assert any("trainer.py" in site for site in bundle["syncs"])  # the Trainer's one read, with its site
    assert bundle["top_level_aten_ops_per_step"] > 0 and anchor["top_level_aten_ops_per_step"] > 0
    assert anchor["model"]["embedding_rows"] == 50304 == bundle["model"]["embedding_rows"]
    assert bundle["model"]["parameters"] == anchor["model"]["parameters"]  # the same model, two codes
    assert {row["difference"] for row in record["table"]} >= {"host-device syncs a step (eager)", "dropout calls a step (eager)"}


INDUCTOR_OUTPUT = """
class Runner:
    def call(self, args):
        buf0 = empty_strided_cuda((4, 1024, 50304), (51511296, 50304, 1), torch.bfloat16)
        buf1 = empty_strided_cuda((4, 1, 1024, 1024), (1048576, 1048576, 1024, 1), torch.bool)
        triton_poi_fused_0.run(buf1, 4194304, stream=stream0)
        extern_kernels.mm(buf2, primals_3, out=buf0)
        buf3 = torch.ops.aten._scaled_dot_product_efficient_attention.default(q, k, v, buf1, True)
        buf4 = torch.ops.aten._scaled_dot_product_flash_attention.default(q, k, v, 0.0, True, scale=0.125)
        buf5 = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default(q, k, v, attn_mask=buf1, scale=0.125)
        cpp_fused_add_1(buf0, buf3)
        return (buf0, )
"""


def test_generated_code_is_counted():
    counts = step_anatomy.analyze_code([INDUCTOR_OUTPUT], logit_elements=1024 * 50257)
    assert (counts["fused_kernels"], counts["library_calls"], counts["fallback_ops"]) == (2, 1, 3)
    assert counts["logit_sized_buffers"] == 1 and counts["buffers"] == 2
    assert counts["sdpa_without_mask"] == 1 and counts["sdpa_with_mask"] == 2  # CUDA's efficient kernel: positional


def test_the_anchor_copy_is_checked_against_the_original(tmp_path):
    source = (ROOT / "benchmarks" / "step_anatomy.py").read_text()
    ours = step_anatomy._definitions(source)
    original = "import torch\n\n" + "\n\n\n".join(ours[name] for name in ("VOCAB", "Block", "NanoGPT")) + "\n"
    (tmp_path / "gpu_anchor.py").write_text(original)
    assert step_anatomy.check_anchor_copy(step_anatomy.find_anchor(str(tmp_path))).startswith("identical")
    (tmp_path / "gpu_anchor.py").write_text(original.replace("approximate=\"tanh\"", "approximate=\"none\""))
    with pytest.raises(SystemExit, match="differs"):
        step_anatomy.check_anchor_copy(tmp_path / "gpu_anchor.py")
    assert "not found" in step_anatomy.check_anchor_copy(None)
