"""The core attention hook: exactness against transformers' own attention, stacking order, padding,
KV cache, per-model scope and the mask cache."""

from __future__ import annotations

import copy

import pytest
import torch

from composerlite.core.attention import (
    ATTENTION_NAME,
    ScoreModifier,
    add_score_modifier,
    attention_layers,
    remove_score_modifier,
    route_attention,
    score_modifiers,
)
from composerlite.models import build_model

VOCAB = 128


class ConstantBias(ScoreModifier):
    """-rate * distance for every head: an additive modifier with a known effect."""

    name = "constant_bias"

    def __init__(self, rate: float):
        self.rate = rate

    def bias(self, module, query_positions, key_positions):
        return -self.rate * (query_positions[:, None] - key_positions[None, :]).abs().float()


class SoftCap(ScoreModifier):
    """Gemma-2 style soft-capping: needs the raw scores, so it forces the eager path."""

    name = "soft_cap"
    needs_scores = True

    def __init__(self, cap: float):
        self.cap = cap

    def apply_to_scores(self, module, scores, query_positions, key_positions):
        return self.cap * torch.tanh(scores / self.cap)


def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("gpt2-tiny", dropout=0.0, vocab_size=VOCAB).eval()


def ids(batch: int = 2, length: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits_and_grads(model: torch.nn.Module, input_ids: torch.Tensor):
    model.zero_grad()
    logits = model(input_ids=input_ids).logits
    logits.float().pow(2).mean().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return logits.detach(), grads


def assert_same(reference, candidate, atol=1e-5):
    (ref_logits, ref_grads), (logits, grads) = reference, candidate
    torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=0)
    assert ref_grads.keys() == grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=atol, rtol=1e-4, msg=name)


def test_hook_without_modifiers_is_hf_sdpa_forward_and_backward():
    base = tiny()
    hooked = copy.deepcopy(base)
    add_score_modifier(hooked, ConstantBias(0.0))
    remove_score_modifier(hooked, "constant_bias")
    assert hooked.config._attn_implementation == ATTENTION_NAME and score_modifiers(hooked) == []
    assert_same(logits_and_grads(base, ids()), logits_and_grads(hooked, ids()))


def test_sdpa_mask_path_with_a_zero_bias_matches_hf_sdpa_and_eager():
    """A modifier routes through our own mask (explicit causal part + bias); with a zero bias that
    must be HF's causal attention: same logits and gradients."""
    base = tiny()
    hooked = copy.deepcopy(base)
    add_score_modifier(hooked, ConstantBias(0.0))
    assert_same(logits_and_grads(base, ids()), logits_and_grads(hooked, ids()))
    eager = copy.deepcopy(base)
    eager.set_attn_implementation("eager")
    assert_same(logits_and_grads(eager, ids()), logits_and_grads(hooked, ids()))


def test_a_bias_changes_the_output_and_equals_the_eager_path():
    base = tiny()
    biased = copy.deepcopy(base)
    add_score_modifier(biased, ConstantBias(0.3))
    eager = copy.deepcopy(base)
    add_score_modifier(eager, ConstantBias(0.3))
    add_score_modifier(eager, SoftCap(1e6))  # a no-op cap, only to force the eager path
    assert not torch.allclose(base(input_ids=ids()).logits, biased(input_ids=ids()).logits, atol=1e-3)
    assert_same(logits_and_grads(biased, ids()), logits_and_grads(eager, ids()))


def test_eager_path_returns_weights_and_mirrors_hf_eager():
    base = tiny()
    base.set_attn_implementation("eager")
    capped = copy.deepcopy(base)
    add_score_modifier(capped, SoftCap(1e6))
    reference = base(input_ids=ids(), output_attentions=True)
    result = capped(input_ids=ids(), output_attentions=True)
    torch.testing.assert_close(result.logits, reference.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(result.attentions[0], reference.attentions[0], atol=1e-6, rtol=0)
    # A tight cap flattens attention to uniform over the visible keys; weights at init are close
    # to uniform already, so sharpen the scores first for the difference to show.
    with torch.no_grad():
        for block in base.transformer.h:
            block.attn.c_attn.weight.mul_(30)
    sharp = base(input_ids=ids(1, 6), output_attentions=True).attentions[0]
    add_score_modifier(base, SoftCap(1e-4))
    flat = base(input_ids=ids(1, 6), output_attentions=True).attentions[0]
    uniform = torch.tril(torch.ones(6, 6)) / torch.arange(1, 7)[:, None]
    torch.testing.assert_close(flat[0, 0], uniform, atol=1e-3, rtol=0)
    assert (sharp[0, 0] - uniform).abs().max() > 0.05


def test_modifiers_stack_in_the_order_they_were_added():
    first, second = tiny(), tiny()
    add_score_modifier(first, SoftCap(0.5))
    add_score_modifier(first, ConstantBias(2.0))
    add_score_modifier(second, ConstantBias(2.0))
    add_score_modifier(second, SoftCap(0.5))
    assert [m.name for m in score_modifiers(first)] == ["soft_cap", "constant_bias"]
    assert [m.name for m in score_modifiers(second)] == ["constant_bias", "soft_cap"]
    # cap(s) + b  differs from  cap(s + b): the order is real, and deterministic.
    assert not torch.allclose(first(input_ids=ids()).logits, second(input_ids=ids()).logits, atol=1e-3)
    with pytest.raises(ValueError, match="already has a 'soft_cap'"):
        add_score_modifier(first, SoftCap(1.0))


def test_modifiers_belong_to_one_model_only():
    with_bias, without = tiny(), tiny()
    add_score_modifier(with_bias, ConstantBias(0.3))
    assert without.config._attn_implementation == "sdpa"
    assert all(not hasattr(layer, "attention_changes") for layer in attention_layers(without))
    assert len(attention_layers(with_bias)) == with_bias.config.n_layer
    assert score_modifiers(without) == []
    copied = copy.deepcopy(with_bias)
    remove_score_modifier(copied, "constant_bias")
    assert [m.name for m in score_modifiers(with_bias)] == ["constant_bias"]


def test_padding_mask_is_honoured():
    """Left padding: HF's sdpa on the padded batch and the hook (zero bias) agree on real tokens."""
    base = tiny()
    hooked = copy.deepcopy(base)
    add_score_modifier(hooked, ConstantBias(0.0))
    input_ids = ids(2, 12)
    mask = torch.ones_like(input_ids)
    mask[0, :5] = 0
    expected = base(input_ids=input_ids, attention_mask=mask).logits
    got = hooked(input_ids=input_ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=0)
    unpadded = hooked(input_ids=input_ids).logits  # and the mask did reach the hook
    assert not torch.allclose(unpadded[0, 5:], got[0, 5:], atol=1e-3)


def test_incremental_decoding_with_a_kv_cache_matches_the_full_forward():
    model = tiny()
    add_score_modifier(model, ConstantBias(0.2))
    input_ids = ids(1, 10)
    full = model(input_ids=input_ids).logits
    with torch.no_grad():
        out = model(input_ids=input_ids[:, :6], use_cache=True)
        steps = [out.logits[:, -1]]
        cache = out.past_key_values
        for position in range(6, 10):
            out = model(input_ids=input_ids[:, position : position + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps[:-1], 1), full[:, 5:9].detach(), atol=1e-5, rtol=0)


def test_mask_is_cached_per_shape_and_dtype_and_bounded():
    model = tiny()
    add_score_modifier(model, ConstantBias(0.1))
    container = attention_layers(model)[0].attention_changes
    layer = attention_layers(model)[0]
    mask = container.additive_mask(layer, 8, 8, torch.device("cpu"), torch.float32)
    assert container.additive_mask(layer, 8, 8, torch.device("cpu"), torch.float32) is mask
    assert container.additive_mask(layer, 8, 8, torch.device("cpu"), torch.float64).dtype == torch.float64
    container.additive_mask(layer, 16, 16, torch.device("cpu"), torch.float32)
    assert len(container._masks) <= 2
    assert container.additive_mask(layer, 8, 8, torch.device("cpu"), torch.float32) is not mask  # evicted, rebuilt


def test_mask_built_under_inference_mode_serves_training():
    model = tiny()
    add_score_modifier(model, ConstantBias(0.1))
    with torch.inference_mode():
        model(input_ids=ids())
    model.train()
    model(input_ids=ids()).logits.sum().backward()  # would raise on an inference tensor saved for backward
    assert model.transformer.h[0].attn.c_attn.weight.grad is not None


def test_model_without_attention_layers_is_rejected():
    with pytest.raises(ValueError, match="no attention layers"):
        add_score_modifier(torch.nn.Linear(2, 2), ConstantBias(0.1))


def sdpa_masks_when_compiled(model: torch.nn.Module, input_ids: torch.Tensor) -> list[str]:
    """The attn_mask argument of every SDPA call in the graph Dynamo traces for `model`."""
    masks = []

    def capture(graph_module, example_inputs):
        for node in graph_module.graph.nodes:
            if node.op == "call_function" and "scaled_dot_product_attention" in str(node.target):
                masks.append(str(node.kwargs.get("attn_mask", node.args[3] if len(node.args) > 3 else None)))
        return graph_module.forward

    torch._dynamo.reset()
    torch.compile(lambda x: model(input_ids=x).logits, backend=capture)(input_ids)
    torch._dynamo.reset()
    return masks


def test_routed_attention_builds_no_causal_mask_under_compile(monkeypatch):
    """Transformers before 5.2x never skip the causal mask while Dynamo traces (simulated here):
    plain sdpa then gets a materialized mask (no flash kernel); the routed model gets none and its
    logits stay equal, while padding still produces a mask."""
    import transformers.masking_utils

    monkeypatch.setattr(transformers.masking_utils, "_ignore_causal_mask_sdpa", lambda *args, **kwargs: False)
    base = tiny()
    routed = copy.deepcopy(base)
    route_attention(routed)
    input_ids = ids(2, 16)
    base_masks = sdpa_masks_when_compiled(base, input_ids)
    assert len(base_masks) == base.config.n_layer and "None" not in base_masks
    assert sdpa_masks_when_compiled(routed, input_ids) == ["None"] * routed.config.n_layer
    torch.testing.assert_close(routed(input_ids=input_ids).logits, base(input_ids=input_ids).logits, atol=1e-5, rtol=0)
    mask = torch.ones_like(input_ids)
    mask[0, :3] = 0
    assert routed.config._attn_implementation == ATTENTION_NAME
    expected = base(input_ids=input_ids, attention_mask=mask).logits
    torch.testing.assert_close(routed(input_ids=input_ids, attention_mask=mask).logits[mask.bool()],
                               expected[mask.bool()], atol=1e-5, rtol=0)
