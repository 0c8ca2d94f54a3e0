"""The GPT-2 family composerlite trains, its builder, and FLOP accounting.

The three card models are the MosaicML Composer v0.8 GPT-2 runs on OpenWebText
(8xA100); gpt2-tiny exists so tests and CPU demos run in seconds, and gpt2-cpu is the model of
the CPU benchmark preset (`composerlite bench` without a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """The card's Composer v0.8 training recipe (AdamW, cosine decay)."""

    global_batch_size: int = 512
    seq_len: int = 1024
    steps: int
    lr: float
    weight_decay: float = 0.0
    warmup_batches: int | None  # None: the card lists no warmup
    schedule: str = "cosine"
    dropout: float = 0.1
    grad_clip_norm: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """Architecture plus what the model card reports (None where it reports nothing)."""

    name: str
    n_layer: int
    d_model: int
    d_ff: int
    n_heads: int
    card_tokens: float | None = None
    card_final_loss: float | None = None  # nats/token on OpenWebText
    card_ppl: float | None = None
    card_predicted_ppl: float | None = None
    card_hours_8xa100: float | None = None
    recipe: Recipe | None = None


FAMILY: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("gpt2-tiny", 2, 64, 256, 2),
    # Built for the CPU benchmark preset: wider than gpt2-tiny, so it learns past word counts in
    # a few hundred thousand tokens, and still small enough for minutes per run on 2 cores.
    ModelSpec("gpt2-cpu", 4, 128, 512, 4),
    ModelSpec("gpt2-52m", 8, 512, 2048, 8,
              card_tokens=4.6e9, card_final_loss=3.43, card_ppl=30.88, card_predicted_ppl=32.54,
              card_hours_8xa100=2 + 44 / 60, recipe=Recipe(steps=9000, lr=1.5e-3, warmup_batches=90)),
    ModelSpec("gpt2-83m", 10, 640, 2560, 10,
              card_tokens=5.5e9, card_final_loss=3.28, card_ppl=26.57, card_predicted_ppl=27.84,
              card_hours_8xa100=4 + 52 / 60, recipe=Recipe(steps=11000, lr=1.0e-3, warmup_batches=110)),
    ModelSpec("gpt2-125m", 12, 768, 3072, 12,
              card_tokens=6.7e9, card_final_loss=3.18, card_ppl=24.04, card_predicted_ppl=24.64,
              card_hours_8xa100=8 + 25 / 60, recipe=Recipe(steps=14000, lr=6e-4, warmup_batches=None)),
]}


def get_spec(name: str) -> ModelSpec:
    try:
        return FAMILY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(FAMILY)}") from None


def _as_spec(name_or_spec: str | ModelSpec) -> ModelSpec:
    return name_or_spec if isinstance(name_or_spec, ModelSpec) else get_spec(name_or_spec)


def build_model(name_or_spec: str | ModelSpec, *, vocab_size: int = 50257, n_positions: int = 1024,
                dropout: float = 0.1, attn_implementation: str = "sdpa",
                tie_word_embeddings: bool = True, config_overrides: dict | None = None) -> GPT2LMHeadModel:
    """A freshly initialised GPT2LMHeadModel (HF init; deterministic under torch.manual_seed).
    `tie_word_embeddings=False` gives the lm_head its own matrix (what `untied_head` trains);
    `config_overrides` sets other GPT2Config fields (relu_squared's `activation_function`, on export).

    `_from_config` is the transformers-5 way to choose the attention kernel: it validates the
    name (e.g. ImportError for flash_attention_2 without flash-attn) and sets
    `config._attn_implementation`, which every attention layer reads at forward time.
    """
    spec = _as_spec(name_or_spec)
    config = GPT2Config(**{
        "n_layer": spec.n_layer, "n_embd": spec.d_model, "n_inner": spec.d_ff, "n_head": spec.n_heads,
        "activation_function": "gelu_new", "resid_pdrop": dropout, "embd_pdrop": dropout, "attn_pdrop": dropout,
        "n_positions": n_positions, "vocab_size": vocab_size, "tie_word_embeddings": tie_word_embeddings,
        **(config_overrides or {}),
    })
    return GPT2LMHeadModel._from_config(config, attn_implementation=attn_implementation)


def count_parameters(model_or_spec: nn.Module | ModelSpec | str, *, non_embedding: bool = False,
                     vocab_size: int = 50257, n_positions: int = 1024) -> int:
    """Parameters of a built model (measured; the tied lm_head counted once), or of a spec
    (analytic, same answer; vocab_size/n_positions only apply to a spec).

    non_embedding drops wte and wpe: that is Kaplan et al.'s N.
    """
    if isinstance(model_or_spec, nn.Module):
        total = sum(p.numel() for p in model_or_spec.parameters())  # parameters() dedups ties
        if not non_embedding:
            return total
        t = model_or_spec.transformer  # wpe may have no parameters at all (ALiBi replaces it)
        return total - sum(p.numel() for p in {*t.wte.parameters(), *t.wpe.parameters()})
    s = _as_spec(model_or_spec)
    d, f = s.d_model, s.d_ff
    # per block: ln_1, c_attn (qkv), attn c_proj, ln_2, c_fc, mlp c_proj -- weights + biases
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * f + f) + (f * d + d)
    non_emb = s.n_layer * block + 2 * d  # + ln_f
    return non_emb if non_embedding else non_emb + (vocab_size + n_positions) * d


def flops_per_token(model_or_spec: nn.Module | ModelSpec | str, seq_len: int, *,
                    vocab_size: int = 50257, n_positions: int = 1024) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B / nanoGPT convention:

        6 * N  +  12 * n_layer * d_model * seq_len

    6N covers every weight matmul (2 forward, 4 backward FLOPs per parameter per token), with N
    all parameters and the tied embedding counted once, since it is also the lm_head matmul
    (wpe is included too, as the convention does; it is <1% here). The second term is the
    attention scores and weighted sum, QK^T and AV, over the full seq_len (no causal halving).
    """
    if isinstance(model_or_spec, nn.Module):
        n_layer, d_model = model_or_spec.config.n_layer, model_or_spec.config.n_embd
    else:
        s = _as_spec(model_or_spec)
        n_layer, d_model = s.n_layer, s.d_model
    n = count_parameters(model_or_spec, vocab_size=vocab_size, n_positions=n_positions)
    return 6.0 * n + 12.0 * n_layer * d_model * seq_len
