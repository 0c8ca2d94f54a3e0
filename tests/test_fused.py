"""Fused-kernel algorithms: same losses as the baseline, exact fused cross-entropy, HF-loadable checkpoints."""

from __future__ import annotations

import pytest
from rich.console import Console
import safetensors.torch
import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from composerlite.algorithms.compile import count_graph_breaks
from composerlite.algorithms.fused_adamw import apply_fused_adamw
from composerlite.algorithms.fused_cross_entropy import FusedLinearCrossEntropyLoss, HiddenStates
from composerlite.algorithms.fused_gpt2_blocks import apply_fused_gpt2_blocks
from composerlite.algorithms.fused_kernels import FusedKernelsOptions, plan
from composerlite.algorithms.pad_vocab import apply_pad_vocab
from composerlite.core.logger import Logger
from composerlite.errors import ConfigError
from composerlite.models import build_model
from composerlite.registry import build_from_spec
from composerlite.run.loop import Trainer, seed_everything
from composerlite.run.throughput import RandomTokens

STEPS = 20
# fp32 on CPU: the fused paths reorder sums (chunked softmax, addmm bias, packed QKV), so losses
# agree to rounding, not bit for bit. 20 steps of AdamW at lr 6e-4 keep that below 1e-4 relative.
LOSS_RTOL = 1e-4


class Recorder(Logger):
    def __init__(self):
        super().__init__([])
        self.records = []

    def record(self, event, **fields):
        record = super().record(event, **fields)
        self.records.append(record)
        return record


def train(tmp_path, algorithms, steps=STEPS):
    seed_everything(0)
    model = build_model("gpt2-tiny", dropout=0.0)
    logger = Recorder()
    settings = {"max_duration": f"{steps}ba", "run_dir": str(tmp_path / "run"), "warmup": "0ba", "device": "cpu",
                "precision": "fp32", "seed": 0}
    trainer = Trainer(settings, model=model, train_data=RandomTokens(2, 32, 50257, steps, seed=1), logger=logger,
                      algorithms=[build_from_spec(a) for a in algorithms])
    trainer.fit()
    return trainer, [r["loss"] for r in logger.records if r["event"] == "train"], logger.records


@pytest.fixture(scope="module")
def baseline_losses(tmp_path_factory):
    return train(tmp_path_factory.mktemp("baseline"), [])[1]


@pytest.mark.parametrize("algorithm", [
    "fused_cross_entropy", "pad_vocab", "fused_gpt2_blocks", "fused_layernorm",
    "flash_attention", "fused_adamw", "compile:backend=eager", "fused_kernels",
    "fused_kernels:compile=true,compile_backend=eager",
])
def test_fused_method_matches_baseline_loss_curve(tmp_path, baseline_losses, algorithm):
    _, losses, records = train(tmp_path, [algorithm])
    assert len(losses) == STEPS
    assert losses == pytest.approx(baseline_losses, rel=LOSS_RTOL)
    assert losses[-1] < losses[0] - 0.05  # and it actually trained
    if "compile" in algorithm:
        assert records[0]["compile/graph_breaks"] == 0
        assert records[0]["compile/graphs"] >= 1


def _reference(hidden, weight, ids, valid):
    logits = hidden @ weight.t()
    return F.cross_entropy(logits[:, :-1, :valid].reshape(-1, valid), ids[:, 1:].reshape(-1))


@pytest.mark.parametrize("valid", [1000, 937])  # 937: rows past it are padding, masked out
def test_fused_cross_entropy_matches_reference_loss_and_gradients(valid):
    torch.manual_seed(0)
    hidden = torch.randn(3, 17, 24, requires_grad=True)
    weight = torch.randn(1000, 24, requires_grad=True)
    ids = torch.randint(0, valid, (3, 17))
    loss_fn = FusedLinearCrossEntropyLoss(chunk_elements=7 * 1000)  # 7 rows a chunk: a ragged last chunk
    loss = loss_fn(HiddenStates(hidden, weight, valid), {"input_ids": ids})
    grads = torch.autograd.grad(loss, (hidden, weight))
    reference = _reference(hidden, weight, ids, valid)
    reference_grads = torch.autograd.grad(reference, (hidden, weight))
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    with torch.no_grad():  # eval path: no gradients computed, same value
        torch.testing.assert_close(loss_fn(HiddenStates(hidden, weight, valid), {"input_ids": ids}), reference)


@pytest.mark.parametrize("dynamic", [False, True])
def test_fused_cross_entropy_traced_form_matches_reference(dynamic):
    """Under torch.compile the loss is traced (no graph break) and chunked by whole sequences;
    autograd derives the backward of the traced ops."""
    torch.manual_seed(0)
    hidden = torch.randn(5, 17, 24, requires_grad=True)
    weight = torch.randn(1000, 24, requires_grad=True)
    ids = torch.randint(0, 937, (5, 17))
    loss_fn = FusedLinearCrossEntropyLoss(chunk_elements=2 * 17 * 1000, max_seq_len=17)  # chunks of 2, 2, 1 sequences
    traced_ops = []

    def capture(graph_module, example_inputs):
        traced_ops.extend(str(node.target) for node in graph_module.graph.nodes if node.op == "call_function")
        return graph_module.forward

    compiled = torch.compile(loss_fn, backend=capture, fullgraph=True, dynamic=dynamic or None)
    torch._dynamo.reset()
    loss = compiled(HiddenStates(hidden, weight, 937), {"input_ids": ids})
    assert sum("cross_entropy" in op for op in traced_ops) == 3  # the traced form, one per chunk
    grads = torch.autograd.grad(loss, (hidden, weight))
    reference = _reference(hidden, weight, ids, 937)
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, torch.autograd.grad(reference, (hidden, weight))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


def test_fused_cross_entropy_bf16_autocast_is_close():
    torch.manual_seed(0)
    hidden = torch.randn(2, 9, 32, requires_grad=True)
    weight = (torch.randn(500, 32) * 0.1).requires_grad_()
    ids = torch.randint(0, 500, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = FusedLinearCrossEntropyLoss(chunk_elements=4096)(HiddenStates(hidden, weight, 500), {"input_ids": ids})
    loss.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    torch.testing.assert_close(loss, _reference(hidden, weight, ids, 500), rtol=2e-2, atol=2e-2)


def test_checkpoint_with_fusions_loads_into_plain_hf_model(tmp_path):
    trainer, _, _ = train(tmp_path, ["fused_kernels"], steps=3)
    fused = trainer.state.model.eval()
    folder = sorted((tmp_path / "run" / "checkpoints").iterdir())[-1]
    tensors = safetensors.torch.load_file(folder / "model.safetensors")
    assert fused.config.vocab_size == 50304 and fused.config.unpadded_vocab_size == 50257
    plain = GPT2LMHeadModel(build_model("gpt2-tiny", dropout=0.0, vocab_size=50304).config).eval()
    missing, unexpected = plain.load_state_dict(tensors, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected  # lm_head is tied to wte
    ids = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits[..., :50257], fused(input_ids=ids).logits)


def test_lean_blocks_keep_hf_keys_and_logits_and_generation():
    torch.manual_seed(0)
    model = build_model("gpt2-tiny", dropout=0.0).eval()
    ids = torch.randint(0, 50257, (2, 12))
    keys, reference = list(model.state_dict()), model(input_ids=ids).logits
    expected = model.generate(ids[:1, :4], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert apply_fused_gpt2_blocks(model) == 2
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(input_ids=ids).logits, reference, rtol=1e-5, atol=1e-5)
    # generation goes through the KV-cache path of the lean block
    assert torch.equal(model.generate(ids[:1, :4], max_new_tokens=4, do_sample=False, pad_token_id=0), expected)


def test_pad_vocab_masks_padding_and_keeps_tie():
    model = build_model("gpt2-tiny", dropout=0.0)
    assert apply_pad_vocab(model) == (50257, 50304)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model(input_ids=torch.zeros(1, 4, dtype=torch.long)).logits.shape[-1] == 50257


def test_fused_adamw_rebuilds_same_groups():
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW([{"params": [model.weight], "weight_decay": 0.1}, {"params": [model.bias], "weight_decay": 0.0}], lr=3e-3)
    fused = apply_fused_adamw(optimizer)
    assert all(group["fused"] for group in fused.param_groups)
    assert [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0] and fused.param_groups[0]["lr"] == 3e-3


def test_bundle_says_what_it_skips_on_cpu():
    methods, skipped = plan(torch.device("cpu"), "fp32", FusedKernelsOptions(exclude=["pad_vocab"]))
    assert {"flash_attention", "fused_layernorm", "compile", "pad_vocab"} <= set(skipped)
    assert "fused_cross_entropy" in methods and "pad_vocab" not in methods
    with pytest.raises(ConfigError, match="unknown method"):
        build_from_spec("fused_kernels:exclude=[nope]")


def test_graph_break_counter_sees_a_break():
    def clean(x):
        return torch.relu(x) * 2

    def broken(x):
        y = torch.relu(x)
        print("host sync", end="")  # a Python side effect Dynamo cannot trace: one graph break
        return y * 2

    x = torch.randn(4)
    assert count_graph_breaks(clean, x) == 0
    assert count_graph_breaks(broken, x) == 1


def test_bundle_trains_and_evaluates_through_the_library(tmp_path, text_file):
    """`composerlite run --algo fused_kernels`, then `eval` of that run: the bundle's members are
    applied once each (a second expansion would list them twice and the run would be refused)."""
    import composerlite
    from composerlite.run.evaluate import evaluate_run

    run_dir = tmp_path / "run"
    result = composerlite.train({"model": "gpt2-tiny", "data": str(text_file), "max_duration": "2ba", "batch_size": 2,
                                 "seq_len": 16, "eval_batches": 1, "device": "cpu", "precision": "fp32",
                                 "algorithms": ["fused_kernels"], "run_dir": str(run_dir)}, console=Console(quiet=True))
    applied = next(r["fused_kernels/applied"] for r in result.records if "fused_kernels/applied" in r)
    assert applied.split(",") == ["fused_gpt2_blocks", "pad_vocab", "fused_cross_entropy", "fused_adamw"]
    assert evaluate_run(str(run_dir), batch_size=2, max_batches=1)["eval_loss"] == pytest.approx(result.evals[-1]["eval_loss"], rel=1e-5)
