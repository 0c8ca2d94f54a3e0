"""Fused linear + cross-entropy: the loss without the full logits tensor.

The forward returns the final hidden states instead of logits, and the loss runs the tied lm_head
matmul chunk by chunk over tokens: for each chunk it computes the logits, the loss and, in the
same pass, the gradients with respect to the hidden states and the head weight (softmax minus
one-hot, times the inputs). Only one chunk of logits ever exists, so the batch x seq x vocab fp32
tensor (6.6 GB at 32 x 1024 x 50257, past 2^31 elements at batch 64) is never built, and the
backward pass only scales the saved gradients. FLOPs equal the unfused head's (one forward and two
backward matmuls per chunk).

When it helps: a vocabulary that is large next to d_model (GPT-2: 50257 vs 512-768). Memory first
(larger batches fit), speed second (fewer passes over logits; on CUDA each chunk's softmax and
gradient is one compiled kernel).
Sources: Liger-Kernel's FusedLinearCrossEntropy (Hsu et al., 2024, arXiv:2410.10989); Wijmans et
al., 2024, "Cut Your Losses in Large-Vocabulary Language Models" (arXiv:2411.09009).

Under torch.compile (the `compile` algorithm or the `fused_kernels` bundle compile the loss) the
loss takes a traceable form instead: per chunk of whole sequences, the head GEMM and
`F.cross_entropy` as plain differentiable ops, which Inductor fuses (the fp32 upcast, logsumexp and
softmax-minus-one-hot read the 16-bit logits once; no fp32 logits are stored). Chunks stay at or
below 2^30 logits, so no tensor reaches the 2^31 elements where a compiled kernel's 32-bit indexing
fails (batch 64 x 1024 x 50304 is 3.3 G). The eager form runs its chunks as separate Python-level
steps that a compiler cannot fuse, and the custom backward cannot be traced into the step's graph.

Padded vocabularies: when the model's config has `unpadded_vocab_size` (set by `pad_vocab`), head
rows past it are padding: their logits are masked to -inf, so they take no probability mass.

Soft-capped logits: when the model's config has `final_logit_softcapping` (transformers' name for
it, set by `logit_softcap`), each chunk's logits become cap * tanh(logits / cap) before the loss,
and the gradient takes the tanh's derivative, so the loss is that of the capped model.
"""

from __future__ import annotations

from typing import NamedTuple

import pydantic
import torch
import torch.nn.functional as F
from transformers.models.gpt2.modeling_gpt2 import GPT2Model

from composerlite import ModelConverter, State
from composerlite.core.attention import ATTENTION_NAME


class FusedCrossEntropyOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    chunk_elements: int | None = pydantic.Field(
        None, ge=2**12,
        description="logit elements per chunk (tokens per chunk = this / vocab); default 2^28 on CUDA, 2^25 on CPU, "
        "2^30 under torch.compile (whole sequences per chunk)",
    )
    compile_chunk: bool = pydantic.Field(
        True, description="on CUDA, run each chunk's softmax and gradient as one torch.compile'd kernel"
    )


class HiddenStates(NamedTuple):
    """What `hidden_states_forward` returns: the last hidden states and the head that scores them."""

    hidden: torch.Tensor  # [batch, seq, d_model]
    head_weight: torch.Tensor  # [vocab (maybe padded), d_model]
    valid_vocab: int  # head rows from here on are padding
    softcap: float | None = None  # logits are cap * tanh(logits / cap) when set


def valid_vocab_size(model: torch.nn.Module) -> int:
    """Tokens the loss may predict: the config's vocabulary, or the size before `pad_vocab` padded it."""
    config = model.config
    return int(getattr(config, "unpadded_vocab_size", None) or config.vocab_size)


def logit_softcap_of(model: torch.nn.Module) -> float | None:
    """The soft-cap the model's head applies to its logits (`config.final_logit_softcapping`), if any."""
    return getattr(model.config, "final_logit_softcapping", None)


def softcapped(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return logits if cap is None else cap * torch.tanh(logits / cap)


# Attention functions that make plain causal attention from `attention_mask=None`: transformers'
# sdpa (`is_causal`) and composerlite's hook (which adds the causal part to its own masks). Others
# (eager, flash_attention_2) get causality from the mask transformers builds, so they keep it.
_CAUSAL_WITHOUT_MASK = ("sdpa", ATTENTION_NAME)


def _plain_trunk(transformer: torch.nn.Module) -> bool:
    """Whether `plain_trunk` computes what this GPT2Model's own forward would."""
    from torch.nn.modules import module as hooks

    return (type(transformer) is GPT2Model and not transformer.config.add_cross_attention
            and transformer.config._attn_implementation in _CAUSAL_WITHOUT_MASK
            and not (transformer._forward_hooks or transformer._forward_pre_hooks
                     or hooks._global_forward_hooks or hooks._global_forward_pre_hooks))


def plain_trunk(transformer: torch.nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """GPT2Model's forward for a training batch (no padding mask, no KV cache, positions from 0),
    without transformers' mask and cache machinery. Transformers 5.2x checks every such batch for
    packed sequences: eagerly that is a host-device sync per forward, and under torch.compile,
    where the check cannot run, it always builds a [batch, 1, seq, seq] mask (no flash kernel).
    The same modules run on the same inputs (the mask transformers would pass here is None), so
    the result is the same to the bit; dropout with p = 0 is the identity and is not called."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    hidden = transformer.wte(input_ids) + transformer.wpe(positions)
    if transformer.drop.p > 0 and transformer.training:
        hidden = transformer.drop(hidden)
    for block in transformer.h:  # as GPT2Model calls them: (hidden, cache, mask, encoder states, ...)
        out = block(hidden, None, None, None, encoder_attention_mask=None, use_cache=False, position_ids=positions)
        hidden = out[0] if isinstance(out, tuple) else out
    return transformer.ln_f(hidden)


def hidden_states_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> HiddenStates:
    """Forward through the trunk only (`plain_trunk` where it applies, else transformers' own with
    `use_cache=False`: training never needs HF's KV cache)."""
    transformer = model.transformer
    if _plain_trunk(transformer):
        hidden = plain_trunk(transformer, batch["input_ids"])
    else:
        hidden = transformer(input_ids=batch["input_ids"], use_cache=False).last_hidden_state
    return HiddenStates(hidden, model.get_output_embeddings().weight, valid_vocab_size(model), logit_softcap_of(model))


def default_chunk_elements(device: torch.device) -> int:
    """Per chunk the head's weight gradient is accumulated once (a vocab x d_model pass), so chunks
    must be large on a GPU (2^28 logits: ~7 chunks at 32 x 1024, 0.5 GB of bf16 logits each) and
    can be small on a CPU, where a cache-sized working set is what pays."""
    return 2**28 if device.type == "cuda" else 2**25


# Compiled chunks: half of 2^31, the element count past which a kernel's 32-bit offsets overflow.
COMPILED_CHUNK_ELEMENTS = 2**30


def traceable_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, valid_vocab: int,
                   sequences_per_chunk: int, softcap: float | None = None) -> torch.Tensor:
    """Mean loss of `hidden` [batch, seq, d] against `targets` [batch, seq] as plain differentiable
    ops, chunked over whole sequences, for torch.compile to fuse (autograd derives the backward)."""
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for h, t in zip(hidden.split(sequences_per_chunk), targets.split(sequences_per_chunk)):
        logits = h.reshape(-1, h.size(-1)) @ weight.t()
        total = total + F.cross_entropy(softcapped(logits[:, :valid_vocab].float(), softcap), t.reshape(-1), reduction="sum")
    return total / targets.numel()


def chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, valid_vocab: int, scale: float,
                        softcap: float | None = None):
    """Sum of the chunk's token losses and d(scale * loss_sum)/d(logits), with fp32 statistics.
    The gradient is returned in the logits' dtype (the dtype of the matmuls that consume it).
    With `softcap`, the loss is of cap * tanh(logits / cap) and the gradient is through the tanh."""
    out_dtype = logits.dtype
    logits = logits.float()  # a copy for 16-bit logits; for fp32 the matmul output, ours to overwrite
    if softcap is not None:
        squashed = torch.tanh(logits / softcap)
        logits = squashed * softcap
    if valid_vocab < logits.size(-1):
        logits[:, valid_vocab:] = float("-inf")
    lse = torch.logsumexp(logits, dim=-1)
    loss_sum = (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()
    probs = logits.sub_(lse[:, None]).exp_()
    probs.scatter_add_(1, targets[:, None], torch.full((targets.numel(), 1), -1.0, device=probs.device))
    if softcap is not None:  # d(cap * tanh(x / cap))/dx = 1 - tanh(x / cap)^2
        probs.mul_(1 - squashed.square_())
    return loss_sum, probs.mul_(scale).to(out_dtype)


def chunk_loss(logits: torch.Tensor, targets: torch.Tensor, valid_vocab: int, softcap: float | None = None) -> torch.Tensor:
    logits = softcapped(logits.float(), softcap)
    if valid_vocab < logits.size(-1):
        logits = logits[:, :valid_vocab]
    return (torch.logsumexp(logits, dim=-1) - logits.gather(1, targets[:, None]).squeeze(1)).sum()


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, valid_vocab, rows_per_chunk, kernel, compute_dtype, softcap):
        h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
        n = h.size(0)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32)
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, rows_per_chunk):
            h_chunk = h[start : start + rows_per_chunk]
            chunk_sum, grad_logits = kernel(h_chunk @ w.t(), targets[start : start + rows_per_chunk], valid_vocab, 1.0 / n,
                                            softcap)
            loss_sum += chunk_sum
            grad_hidden[start : start + rows_per_chunk] = grad_logits @ w
            if compute_dtype == torch.float32:
                grad_weight.addmm_(grad_logits.t(), h_chunk)
            else:  # the product in 16 bits (fp32 accumulation inside the GEMM), summed over chunks in fp32
                grad_weight += grad_logits.t() @ h_chunk
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return loss_sum / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_loss, grad_weight * grad_loss, None, None, None, None, None, None


class FusedLinearCrossEntropyLoss:
    """`loss_fn(outputs: HiddenStates, batch) -> mean next-token loss`, chunked over tokens."""

    # `compile` traces this loss and the forward as one function (one graph): its input, the hidden
    # states, is small enough that the zero gradient autograd gives that unused output costs nothing.
    compile_with_forward = True

    def __init__(self, chunk_elements: int | None = None, compile_chunk: bool = True, max_seq_len: int | None = None):
        """`max_seq_len` bounds the sequence length when torch.compile traces it as a dynamic size
        (sequence-length warmup): the chunking must be a static choice."""
        self.chunk_elements = chunk_elements
        self.compile_chunk = compile_chunk
        self.max_seq_len = max_seq_len
        self._compiled = None  # compiled lazily on the first CUDA call; one per loss instance

    def _kernel(self, device: torch.device):
        if not (self.compile_chunk and device.type == "cuda"):
            return chunk_loss_and_grad
        if self._compiled is None:
            self._compiled = torch.compile(chunk_loss_and_grad, dynamic=False)
        return self._compiled

    def __call__(self, outputs: HiddenStates, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden, weight, valid_vocab, softcap = outputs
        if torch.compiler.is_compiling():
            return self._traced(hidden, weight, batch["input_ids"], valid_vocab, softcap)
        hidden = hidden[:, :-1].reshape(-1, hidden.size(-1))  # position t predicts token t + 1
        targets = batch["input_ids"][:, 1:].reshape(-1)
        device = hidden.device
        compute_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        rows = max(1, (self.chunk_elements or default_chunk_elements(device)) // weight.size(0))
        with torch.autocast(device.type, enabled=False):  # dtypes are chosen explicitly below
            if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
                return _FusedLinearCrossEntropy.apply(
                    hidden, weight, targets, valid_vocab, rows, self._kernel(device), compute_dtype, softcap
                )
            h, w = hidden.to(compute_dtype), weight.to(compute_dtype)
            total = sum(chunk_loss(h[s : s + rows] @ w.t(), targets[s : s + rows], valid_vocab, softcap)
                        for s in range(0, h.size(0), rows))
            return total / h.size(0)


    def _traced(self, hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor, valid_vocab: int,
                softcap: float | None) -> torch.Tensor:
        seq_len = hidden.size(1) if isinstance(hidden.size(1), int) else self.max_seq_len
        if seq_len is None:
            raise ValueError("a dynamic sequence length under torch.compile needs max_seq_len")
        sequences = max(1, (self.chunk_elements or COMPILED_CHUNK_ELEMENTS) // (seq_len * weight.size(0)))
        return traceable_loss(hidden[:, :-1], weight, input_ids[:, 1:], valid_vocab, sequences, softcap)


def apply_fused_cross_entropy(state: State, chunk_elements: int | None = None, compile_chunk: bool = True) -> None:
    """Route the run's forward through the trunk and its loss through the chunked fused head.
    The fused loss is the plain next-token cross-entropy, so evaluation reports it too."""
    state.forward_fn = hidden_states_forward
    state.loss_fn = state.eval_loss_fn = FusedLinearCrossEntropyLoss(chunk_elements, compile_chunk, max_seq_len=state.seq_len)


class FusedCrossEntropy(ModelConverter):
    """Chunked fused lm_head + cross-entropy: never materializes the batch x seq x vocab logits."""

    name = "fused_cross_entropy"
    Options = FusedCrossEntropyOptions
    provides = ("loss",)

    def convert(self, state: State) -> None:
        apply_fused_cross_entropy(state, **self.options.model_dump())
