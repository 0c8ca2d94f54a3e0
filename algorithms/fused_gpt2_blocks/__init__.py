"""Lean GPT-2 blocks: Hugging Face's GPT2Block replaced by a minimal block with the same weights.

The replacement keeps HF's parameters (the very same Parameter objects, HF's Conv1D [in, out]
layout, the same state_dict keys) so checkpoints load into a plain `GPT2LMHeadModel`, and drops
what a training step does not need:
  * packed QKV: one GEMM with the bias folded in (addmm), split into heads as views;
  * GELU as one kernel (`gelu(approximate="tanh")`, the same function as GPT-2's "gelu_new",
    which HF evaluates as eight elementwise ops), applied straight to the biased GEMM output;
  * no dropout calls at all when the probability is 0;
  * attention straight to `scaled_dot_product_attention(is_causal=True)` when the model uses
    plain SDPA (transformers' "sdpa", or composerlite's hook with no score modifier) and there is
    no mask or KV cache; otherwise the model's configured attention
    function is called exactly as HF calls it (so ALiBi's score-modifier hook still applies, and
    padding masks and generation with a KV cache keep working).

When it helps: eager training on any device (fewer kernels and temporaries per block); under
torch.compile it mainly removes graph clutter. Source: the block of Karpathy's nanoGPT.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gpt2.modeling_gpt2 import GPT2Block

from composerlite import ModelConverter, Order, State
from composerlite.core.attention import ATTENTION_NAME, has_attention_changes
from composerlite.core.surgery import replace_modules_by_type
from composerlite.errors import ConfigError

# activation_function values whose GELU is the tanh approximation or the exact erf form
_GELU_APPROXIMATION = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


class LeanAttention(nn.Module):
    """GPT-2 self-attention with HF's parameters (`c_attn`, `c_proj`) and attributes."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        if getattr(attn, "is_cross_attention", False):
            raise ConfigError("fused_gpt2_blocks does not support cross-attention GPT-2 blocks")
        self.c_attn, self.c_proj = attn.c_attn, attn.c_proj
        # what transformers' attention functions (and composerlite's score-modifier hook) read
        self.config, self.layer_idx, self.is_causal = attn.config, attn.layer_idx, attn.is_causal
        self.scaling, self.head_dim, self.num_heads = attn.scaling, attn.head_dim, attn.num_heads
        self.reorder_and_upcast_attn = attn.reorder_and_upcast_attn
        if hasattr(attn, "attention_changes"):
            self.attention_changes = attn.attention_changes
        self.attn_p, self.resid_p = attn.attn_dropout.p, attn.resid_dropout.p

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, past_key_values: Any, **kwargs) -> torch.Tensor:
        batch, seq, width = x.shape
        qkv = self.c_attn(x).view(batch, seq, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq, head_dim], views
        dropout = self.attn_p if self.training else 0.0
        implementation = self.config._attn_implementation
        plain_sdpa = implementation == "sdpa" or (implementation == ATTENTION_NAME and not has_attention_changes(self))
        if plain_sdpa and attention_mask is None and past_key_values is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=self.scaling)
            y = y.transpose(1, 2)
        else:
            if past_key_values is not None:
                k, v = past_key_values.update(k, v, self.layer_idx)
            function = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, None)
            if function is None:
                raise ConfigError(f"fused_gpt2_blocks: unknown attention implementation '{implementation}'")
            y, _ = function(self, q, k, v, attention_mask, dropout=dropout, scaling=self.scaling, **kwargs)
        y = self.c_proj(y.reshape(batch, seq, width))
        return F.dropout(y, self.resid_p, self.training) if self.resid_p > 0 and self.training else y


class LeanMLP(nn.Module):
    def __init__(self, mlp: nn.Module, activation: str):
        super().__init__()
        self.c_fc, self.c_proj = mlp.c_fc, mlp.c_proj
        self.approximate = _GELU_APPROXIMATION.get(activation)
        self.act = None if self.approximate is not None else mlp.act  # other activations: HF's module
        self.p = mlp.dropout.p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        h = F.gelu(h, approximate=self.approximate) if self.act is None else self.act(h)
        y = self.c_proj(h)
        return F.dropout(y, self.p, self.training) if self.p > 0 and self.training else y


class LeanGPT2Block(nn.Module):
    """Pre-LN GPT-2 block; submodule names match GPT2Block (ln_1, attn, ln_2, mlp)."""

    def __init__(self, block: GPT2Block):
        super().__init__()
        if hasattr(block, "crossattention"):
            raise ConfigError("fused_gpt2_blocks does not support cross-attention GPT-2 blocks")
        config = block.attn.config
        self.ln_1 = block.ln_1  # registered in GPT2Block's order, so state_dict order matches too
        self.attn = LeanAttention(block.attn)
        self.ln_2 = block.ln_2
        self.mlp = LeanMLP(block.mlp, config.activation_function)

    def forward(self, hidden_states: torch.Tensor, past_key_values: Any = None, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: Any = None,
                use_cache: bool | None = False, **kwargs) -> torch.Tensor:
        kwargs.pop("position_ids", None)  # GPT-2 has learned absolute positions, added before the blocks
        x = hidden_states + self.attn(self.ln_1(hidden_states), attention_mask, past_key_values, **kwargs)
        return x + self.mlp(self.ln_2(x))


def apply_fused_gpt2_blocks(model: nn.Module) -> int:
    """Replace every GPT2Block in `model` in place; returns how many."""
    return len(replace_modules_by_type(model, {GPT2Block: lambda block, name: LeanGPT2Block(block)}))


class FusedGPT2Blocks(ModelConverter):
    """Swap HF GPT2Blocks for lean blocks (packed QKV, one-kernel GELU, no dead dropout); same weights."""

    name = "fused_gpt2_blocks"
    provides = ("gpt2_block",)
    conflicts = ("mlp",)  # an MLP replacement (GLU) expects HF's GPT2MLP inside HF's block
    order = Order.SURGERY

    def convert(self, state: State) -> dict[str, Any]:
        return {"replaced": apply_fused_gpt2_blocks(state.model)}
