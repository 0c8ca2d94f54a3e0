"""benchmarks/step_anatomy.py: the bundle's step counted against the anchor's (issue 24)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from composerlite.algorithms.fused_kernels import MEMBERS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import step_anatomy
finally:
    sys.path.remove(str(ROOT / "benchmarks"))


def test_the_gpu_jobs_anatomy_runs_in_cpu_smoke_mode(tmp_path):
    """The job's first part on CPU (gpt2-tiny, eager): the record, its counts and its table."""
    env = {**os.environ, "OUT": str(tmp_path), "PARTS": "anatomy"}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_benchmark.sh"), "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    record = json.loads((tmp_path / "step_anatomy_gpu_52m.json").read_text())
    for field in ("torch", "transformers", "date", "git_commit", "device_name", "cpu", "anchor_copy", "table"):
        assert field in record
    bundle, anchor = record["variants"]["bundle eager"], record["variants"]["anchor eager"]
    assert anchor["syncs_per_step"] == 0  # the anchor's loop never reads the loss
    assert len(bundle["syncs"]) == 1 and "composerlite/run/loop.py" in next(iter(bundle["syncs"]))  # the Trainer's read, its site
    assert bundle["dropout_calls_per_step"] == 0 == anchor["dropout_calls_per_step"]
    assert bundle["top_level_aten_ops_per_step"] > 0 and anchor["top_level_aten_ops_per_step"] > 0
    assert anchor["model"]["embedding_rows"] == 50304 == bundle["model"]["embedding_rows"]
    assert bundle["model"]["parameters"] == anchor["model"]["parameters"]  # the same model, two codes
    assert {row["difference"] for row in record["table"]} >= {"host-device syncs a step (eager)", "dropout calls a step (eager)"}


def test_the_gpu_jobs_ablation_removes_each_member_once_with_specs_that_build():
    """Checked from the script's text (running the part is throughput_matrix.py's, tested elsewhere)."""
    import re
    from composerlite.registry import build_from_spec

    script = (ROOT / "benchmarks" / "gpu_benchmark.sh").read_text()
    removed = [m for line in re.findall(r"^for member in ([\w ]+); do ABLATION\+=", script, re.M) for m in line.split()]
    assert sorted(removed) == sorted(MEMBERS)
    specs = [f"fused_kernels:exclude=[{m}]" for m in removed] + re.findall(r"^\s*COMPILE_ONLY=(\S+)", script, re.M)
    for spec in specs:
        for part in spec.split("+"):
            build_from_spec(part)


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


# ---- what the anatomy showed, fixed ------------------------------------------------------------

import torch  # noqa: E402

from composerlite.algorithms.compile import ForwardAndLoss  # noqa: E402
from composerlite.algorithms.fused_cross_entropy import _plain_trunk, hidden_states_forward, plain_trunk  # noqa: E402
from composerlite.algorithms.fused_gpt2_blocks import apply_fused_gpt2_blocks  # noqa: E402
from composerlite.core.attention import route_attention  # noqa: E402
from composerlite.models import build_model  # noqa: E402


def tiny(route: str, dropout: float = 0.0):
    torch.manual_seed(0)
    model = build_model("gpt2-tiny", dropout=dropout)
    if route != "sdpa":
        route_attention(model)
    if route == "lean blocks":
        apply_fused_gpt2_blocks(model)
    return model.train()


@pytest.mark.parametrize("route", ["sdpa", "routed", "lean blocks"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_plain_trunk_is_transformers_forward_to_the_bit(route, dropout):
    model = tiny(route, dropout)
    ids = torch.randint(0, 50257, (2, 24))
    assert _plain_trunk(model.transformer)
    torch.manual_seed(1)
    expected = model.transformer(input_ids=ids, use_cache=False).last_hidden_state
    torch.manual_seed(1)  # with dropout, the same random draws in the same order
    assert torch.equal(plain_trunk(model.transformer, ids), expected)


def test_the_plain_trunk_leaves_what_it_cannot_stand_for_to_transformers():
    model = tiny("sdpa")
    model.set_attn_implementation("eager")  # causality from transformers' mask: it must be built
    assert not _plain_trunk(model.transformer)
    model = tiny("routed")
    model.transformer.register_forward_hook(lambda module, args, output: output)
    assert not _plain_trunk(model.transformer)
    outputs = hidden_states_forward(model, {"input_ids": torch.randint(0, 50257, (2, 8))})  # through transformers
    assert outputs.hidden.shape == (2, 8, 64)


def test_the_bundles_forward_reads_nothing_from_the_device():
    """Transformers 5.2x checks a batch for packed sequences with a host read each forward."""
    model = tiny("lean blocks")
    with torch.profiler.profile() as prof:
        hidden_states_forward(model, {"input_ids": torch.randint(0, 50257, (2, 16))})
    assert not [e.name for e in prof.events() if e.name in ("aten::_local_scalar_dense", "aten::is_nonzero")]


_CAPTURED: list = []


def _capture(graph_module, example_inputs):
    _CAPTURED.append(graph_module)
    return graph_module.forward


def test_the_compiled_bundle_is_one_graph_with_unmasked_causal_attention(tmp_path):
    from torch._dynamo import register_backend
    from composerlite.core.logger import Logger
    from composerlite.registry import build_from_spec
    from composerlite.run.loop import Trainer
    from composerlite.run.throughput import RandomTokens

    if "anatomy_capture" not in torch._dynamo.list_backends(exclude_tags=()):
        register_backend(name="anatomy_capture")(_capture)
    graphs = _CAPTURED
    graphs.clear()
    torch._dynamo.reset()
    model = build_model("gpt2-tiny", dropout=0.0)
    trainer = Trainer({"max_duration": "2ba", "run_dir": str(tmp_path / "run"), "device": "cpu", "precision": "fp32"},
                      model=model, train_data=RandomTokens(2, 32, 50257, 2), logger=Logger([]), algorithms=[build_from_spec("fused_kernels:compile=true,compile_backend=anatomy_capture")])
    trainer.fit()
    torch._dynamo.reset()
    assert len(graphs) == 1  # forward and loss traced together, compiled once for both steps
    calls = [node for node in graphs[0].graph.nodes if node.op == "call_function"]
    attention = [node for node in calls if "scaled_dot_product_attention" in str(node.target)]
    assert len(attention) == model.config.n_layer
    assert all(node.kwargs.get("attn_mask") is None and node.kwargs.get("is_causal") for node in attention)
    methods = [node for node in graphs[0].graph.nodes if node.op in ("call_function", "call_method")]
    assert not [node for node in methods if "cumsum" in str(node.target)]  # no packed-sequence check


def test_forward_and_loss_hands_over_the_joint_loss_only_for_the_outputs_it_made():
    def forward_fn(model, batch):
        return model(batch["x"])

    def loss_fn(outputs, batch):
        return (outputs - batch["y"]).pow(2).mean()

    torch._dynamo.reset()
    model = torch.nn.Linear(3, 1)
    batch = {"x": torch.randn(4, 3), "y": torch.randn(4, 1)}
    options = {"mode": None, "backend": "eager", "fullgraph": True, "dynamic_seq_len": False}
    joint = ForwardAndLoss(forward_fn, loss_fn, shared_eval=True, **options)
    outputs = joint.forward(model, batch)
    loss = joint.loss(outputs, batch)
    assert torch.equal(loss, loss_fn(forward_fn(model, batch), batch))
    loss.backward()
    assert model.weight.grad is not None
    outputs = joint.forward(model, batch)
    replaced = outputs * 2  # an algorithm replaced the outputs: their loss, not the joint one
    assert torch.equal(joint.loss(replaced, batch), loss_fn(replaced, batch))
    with torch.no_grad():
        outputs = joint.forward(model, batch)
        outputs.mul_(3)  # changed in place: the version counter says so
        assert torch.equal(joint.loss(outputs, batch), loss_fn(outputs, batch))
    separate = ForwardAndLoss(forward_fn, loss_fn, shared_eval=False, **options)
    with torch.no_grad():  # evaluation with its own loss: the forward alone
        outputs = separate.forward(model, batch)
        assert separate._pending is None
    torch._dynamo.reset()
