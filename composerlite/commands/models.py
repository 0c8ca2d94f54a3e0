"""`composerlite models`: the family table, measured from the built models."""

from __future__ import annotations

import argparse
import math

from rich.console import Console
from rich.table import Table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq-len", type=int, default=1024, help="sequence length for FLOPs per token")


def main(args: argparse.Namespace) -> int:
    from composerlite.models import FAMILY, build_model, count_parameters, flops_per_token
    from composerlite.commands.scaling import N_NOTE
    from composerlite.models.scaling import predicted_loss

    table = Table(title=f"GPT-2 family (FLOPs per training token at seq {args.seq_len})")
    for column in ("name", "params", "non-emb", "shape L/d/ff/h", "GFLOPs/tok", "card tokens",
                   "card loss (ppl)", "card predicted ppl", "Kaplan loss (ppl)", "card predicted - Kaplan"):
        table.add_column(column, justify="right")
    for spec in FAMILY.values():
        model = build_model(spec.name)
        params, non_embedding = count_parameters(model), count_parameters(model, non_embedding=True)
        card, kaplan, gap = "-", "-", "-"
        if spec.card_tokens:
            card = f"{spec.card_final_loss:.2f} ({spec.card_ppl:.2f})"
            loss = predicted_loss(non_embedding, spec.card_tokens)
            kaplan = f"{loss:.2f} ({math.exp(loss):.2f})"
            gap = f"{math.log(spec.card_predicted_ppl) - loss:+.2f} nats"
        table.add_row(
            spec.name, f"{params / 1e6:.1f}M", f"{non_embedding / 1e6:.1f}M",
            f"{spec.n_layer}/{spec.d_model}/{spec.d_ff}/{spec.n_heads}",
            f"{flops_per_token(model, args.seq_len) / 1e9:.3f}",
            f"{spec.card_tokens / 1e9:.1f}B" if spec.card_tokens else "-", card,
            f"{spec.card_predicted_ppl:.2f}" if spec.card_predicted_ppl else "-", kaplan, gap,
        )
    console = Console()
    console.print(table)
    console.print(f"Kaplan loss: L(N, D) at the card's tokens. {N_NOTE} See `composerlite scaling`.")
    console.print("gpt2-tiny, gpt2-cpu and gpt2-cpu-6l have no card. gpt2-tiny is for tests and CPU demos; gpt2-cpu was "
                  "built for the CPU benchmark preset (batch 8 x 128, LR 1e-2, 400,000 tokens), where it learns past the "
                  "corpus's unigram model within minutes on 2 cores (benchmarks/results/cpu-preset-search/); the three "
                  "are the CPU size ladder (`composerlite bench --models gpt2-tiny,gpt2-cpu,gpt2-cpu-6l`).")
    return 0
