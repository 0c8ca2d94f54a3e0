"""The GPT-2 family composerlite trains: shapes, the model cards' results and recipes. Plain data,
no torch, so a model name is checked (`composerlite run --model ...`) without importing it.

The three card models are the MosaicML Composer v0.8 GPT-2 runs on OpenWebText
(8xA100); gpt2-tiny exists so tests and CPU demos run in seconds, gpt2-cpu is the model of
the CPU benchmark preset (`composerlite bench` without a GPU), and with gpt2-cpu-6l they are a
ladder of sizes for a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass


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


# One shape rule makes every member from its layer count L: L heads, width = L x head width, MLP
# 4 x width. The card's members have 64-wide heads (8, 10, 12 layers: widths 512, 640, 768); the
# CPU members 32-wide ones (2, 4, 6 layers: widths 64, 128, 192), so a ladder of sizes fits a CPU
# (`composerlite bench --models gpt2-tiny,gpt2-cpu,gpt2-cpu-6l`).
FAMILY: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("gpt2-tiny", 2, 64, 256, 2),
    # Built for the CPU benchmark preset: wider than gpt2-tiny, so it learns past word counts in
    # a few hundred thousand tokens, and still small enough for minutes per run on 2 cores.
    ModelSpec("gpt2-cpu", 4, 128, 512, 4),
    # The CPU ladder's top rung, for speedups across sizes on a CPU.
    ModelSpec("gpt2-cpu-6l", 6, 192, 768, 6),
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
