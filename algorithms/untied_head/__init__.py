"""Untied, zero-initialised output head: the lm_head gets its own weight matrix, starting at zero,
instead of sharing the token embedding. From the modded-nanogpt GPT-2 speedrun (record history:
12.0 -> 10.8 minutes on 8xH100). Tying (Press & Wolf, 2017, arXiv:1608.05859) saves parameters but
makes one matrix serve as both input and output embedding; untied, each can fit its own role, and
a zero head makes the first predictions uniform (loss ln(vocab)) instead of random.

Costs vocab x d_model more parameters (and their optimizer state). The model is Hugging Face's
GPT-2 with `tie_word_embeddings=False`: it exports to a folder transformers loads with that
setting. Applied at INIT, before the optimizer exists (and before `pad_vocab` pads both matrices).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from composerlite import ModelConverter, Order, State


def untie_head(model: nn.Module) -> nn.Parameter:
    """Give `model`'s output head its own zero weight (same shape, dtype and device as the embedding
    it was tied to) and record the untying in its config; returns the new weight."""
    head = model.get_output_embeddings()
    tied = model.get_input_embeddings().weight
    if head.weight is not tied:
        raise ValueError("the model's lm_head is already untied from its token embedding")
    head.weight = nn.Parameter(torch.zeros_like(tied))
    model.config.tie_word_embeddings = False  # what transformers reads when saving and loading the model
    return head.weight


class UntiedHead(ModelConverter):
    """Untie the lm_head from the token embedding and start it at zero."""

    name = "untied_head"
    provides = ("output_head",)
    order = Order.SURGERY

    def convert(self, state: State) -> dict[str, Any]:
        return {"parameters": untie_head(state.model).numel()}
