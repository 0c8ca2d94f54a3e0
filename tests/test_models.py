import pytest
import torch

from composerlite.models import FAMILY, ModelSpec, build_model, count_parameters, flops_per_token, get_spec

# Known sizes: gpt2-125m is exactly HF's "gpt2" (124,439,808 parameters).
EXPECTED = {  # name: (total, non-embedding)
    "gpt2-tiny": (3_382_080, 100_096),
    "gpt2-cpu": (7_357_312, 793_344),
    "gpt2-cpu-6l": (12_515_520, 2_669_568),
    "gpt2-52m": (51_475_968, 25_220_096),
    "gpt2-83m": (82_056_320, 49_236_480),
    "gpt2-125m": (124_439_808, 85_056_000),
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("gpt2-tiny")


def test_family_order_and_card():
    assert list(FAMILY) == ["gpt2-tiny", "gpt2-cpu", "gpt2-cpu-6l", "gpt2-52m", "gpt2-83m", "gpt2-125m"]
    tiny, cpu, cpu6, s52, s83, s125 = FAMILY.values()
    assert tiny.recipe is None and tiny.card_ppl is None and cpu.recipe is None and cpu6.recipe is None
    for s in (tiny, cpu, cpu6):  # the card's shape rule at 32-wide heads
        assert s.n_heads == s.n_layer and s.d_model // s.n_heads == 32 and s.d_ff == 4 * s.d_model
    assert (s52.recipe.steps, s52.recipe.lr, s52.recipe.warmup_batches) == (9000, 1.5e-3, 90)
    assert (s83.recipe.steps, s83.recipe.lr, s83.recipe.warmup_batches) == (11000, 1.0e-3, 110)
    assert (s125.recipe.steps, s125.recipe.lr, s125.recipe.warmup_batches) == (14000, 6e-4, None)
    for s in (s52, s83, s125):
        r = s.recipe
        assert (r.global_batch_size, r.seq_len, r.weight_decay, r.schedule, r.dropout, r.grad_clip_norm) == (
            512, 1024, 0.0, "cosine", 0.1, 1.0)
        assert s.d_model // s.n_heads == 64 and s.d_ff == 4 * s.d_model
    assert s52.card_hours_8xa100 == pytest.approx(2 + 44 / 60)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model 'gpt2-xl'; choose one of: gpt2-tiny, gpt2-cpu, gpt2-cpu-6l, gpt2-52m"):
        get_spec("gpt2-xl")
    with pytest.raises(ValueError):
        build_model("nope")


@pytest.mark.parametrize("name", list(FAMILY))
def test_parameter_counts_measured_equal_analytic(name):
    with torch.device("meta"):  # same modules, no init: every member in milliseconds
        model = build_model(name)
    total, non_emb = EXPECTED[name]
    assert count_parameters(model) == count_parameters(name) == total
    assert count_parameters(model, non_embedding=True) == count_parameters(name, non_embedding=True) == non_emb


def test_real_52m_count_and_init_scale():
    torch.manual_seed(0)
    model = build_model("gpt2-52m")
    assert count_parameters(model) == EXPECTED["gpt2-52m"][0]
    # HF's GPT-2 init: std 0.02, residual projections scaled by 1/sqrt(2 * n_layer)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)


def test_analytic_count_follows_vocab_and_positions():
    model = build_model("gpt2-tiny", vocab_size=1000, n_positions=128)
    assert count_parameters(model) == count_parameters("gpt2-tiny", vocab_size=1000, n_positions=128)
    assert model.transformer.wpe.weight.shape == (128, 64)


def test_tied_head_counted_once(tiny):
    assert tiny.lm_head.weight is tiny.transformer.wte.weight
    with_dup = sum(p.numel() for _, p in tiny.named_parameters(remove_duplicate=False))
    assert with_dup - count_parameters(tiny) == 50257 * 64


def test_config_fields(tiny):
    c = tiny.config
    assert (c.n_layer, c.n_embd, c.n_inner, c.n_head) == (2, 64, 256, 2)
    assert c.activation_function == "gelu_new"
    assert c.resid_pdrop == c.embd_pdrop == c.attn_pdrop == 0.1
    assert (c.vocab_size, c.n_positions, c.tie_word_embeddings) == (50257, 1024, True)
    assert c._attn_implementation == "sdpa"
    assert build_model(FAMILY["gpt2-tiny"], dropout=0.0).config.resid_pdrop == 0.0


def test_attn_implementation_is_used():
    torch.manual_seed(0)
    eager = build_model("gpt2-tiny", attn_implementation="eager").eval()
    torch.manual_seed(0)
    sdpa = build_model("gpt2-tiny").eval()
    assert eager.transformer.h[0].attn.config._attn_implementation == "eager"
    x = torch.randint(0, 50257, (2, 16))
    torch.testing.assert_close(eager(x).logits, sdpa(x).logits, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        build_model("gpt2-tiny", attn_implementation="bogus")


def test_forward_shape(tiny):
    x = torch.randint(0, 50257, (3, 17))
    out = tiny(x, labels=x)
    assert out.logits.shape == (3, 17, 50257)
    assert out.loss.item() == pytest.approx(10.82, abs=0.3)  # ~ln(50257) at init


def test_init_deterministic_under_seed():
    def init(seed):
        torch.manual_seed(seed)
        return build_model("gpt2-tiny").state_dict()
    a, b, c = init(1), init(1), init(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["transformer.wte.weight"], c["transformer.wte.weight"])


def test_flops_per_token(tiny):
    # 6N + 12 * n_layer * d_model * seq_len, with N = all parameters (tied embedding once)
    assert flops_per_token("gpt2-125m", 1024) == 6 * 124_439_808 + 12 * 12 * 768 * 1024
    assert flops_per_token(tiny, 1024) == flops_per_token("gpt2-tiny", 1024) == 6 * 3_382_080 + 12 * 2 * 64 * 1024
    spec = ModelSpec("custom", 4, 128, 512, 4)
    assert flops_per_token(spec, 256, vocab_size=100) == 6 * count_parameters(spec, vocab_size=100) + 12 * 4 * 128 * 256
