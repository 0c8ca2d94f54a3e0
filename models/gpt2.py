"""The GPT-2 family's builder and FLOP accounting (the members themselves are in family.py)."""

from __future__ import annotations

import torch.nn as nn
from transformers import GPT2Config, GPT2LMHeadModel

from .family import ModelSpec, get_spec


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
