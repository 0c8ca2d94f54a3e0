"""`composerlite scaling`: Kaplan et al. 2020's L(N, D) for the family, and what to train for a compute budget.

Without arguments: each card model's predicted loss at the card's token budget, with N both as the
paper defines it (non-embedding parameters) and as total parameters, beside the card's own
prediction and result. With --compute FLOPS: the N, D that minimise L(N, D) under C = 6ND, and
what each family member would reach with that compute.
"""

from __future__ import annotations

import argparse
import math

from rich.console import Console
from rich.table import Table

from composerlite.errors import ConfigError

N_NOTE = ("N is Kaplan's: non-embedding parameters (token and position embeddings excluded), as in the paper. "
          "The card's predictions sit a nearly constant gap above ours with that N (with total N the gap drifts "
          "with model size; `composerlite scaling` shows both), so the card most likely used non-embedding N "
          "plus an offset or other constants it does not state.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compute", help="training compute in FLOPs (e.g. 3.4e18): propose model size and tokens")


def main(args: argparse.Namespace) -> int:
    console = Console()
    if args.compute is None:
        console.print(card_table())
        console.print(N_NOTE)
        return 0
    try:
        compute = float(args.compute)
    except ValueError:
        raise ConfigError(f"--compute takes a number of FLOPs (e.g. 3.4e18), not '{args.compute}'") from None
    if not math.isfinite(compute) or compute <= 0:
        raise ConfigError("--compute must be a positive number of FLOPs")
    table, note = compute_table(compute)
    console.print(table)
    console.print(note)
    return 0


def card_table() -> Table:
    from composerlite.models import FAMILY, count_parameters, predicted_loss

    table = Table(title="Kaplan L(N, D) at each model card's token budget (nats/token; ppl in brackets)")
    for column in ("model", "N non-emb", "N total", "card tokens", "Kaplan (non-emb N)", "Kaplan (total N)",
                   "card predicted", "gap to card (nats)", "card actual"):
        table.add_column(column, justify="right")
    for spec in FAMILY.values():
        if not spec.card_tokens:
            continue
        non_embedding, total = count_parameters(spec, non_embedding=True), count_parameters(spec)
        ours, ours_total = predicted_loss(non_embedding, spec.card_tokens), predicted_loss(total, spec.card_tokens)
        card_predicted = math.log(spec.card_predicted_ppl)
        table.add_row(
            spec.name, f"{non_embedding / 1e6:.1f}M", f"{total / 1e6:.1f}M", f"{spec.card_tokens / 1e9:.1f}B",
            f"{ours:.3f} ({math.exp(ours):.2f})", f"{ours_total:.3f} ({math.exp(ours_total):.2f})",
            f"{card_predicted:.3f} ({spec.card_predicted_ppl:.2f})", f"{card_predicted - ours:+.3f}",
            f"{spec.card_final_loss:.2f} ({spec.card_ppl:.2f})",
        )
    return table


def compute_table(compute: float) -> tuple[Table, str]:
    from composerlite.models import FAMILY, count_parameters, predicted_loss, propose

    proposal = propose(compute)
    table = Table(title=f"{compute:.3g} FLOPs under C = 6·N·D (N non-embedding)")
    for column in ("model", "N non-emb", "tokens D = C/6N", "predicted loss", "ppl"):
        table.add_column(column, justify="right")
    table.add_row("[bold]proposed[/bold]", f"{proposal.n_params / 1e6:.2f}M", f"{proposal.tokens:.3g}",
                  f"{proposal.loss:.3f}", f"{proposal.ppl:.2f}")
    for spec in FAMILY.values():
        n = count_parameters(spec, non_embedding=True)
        loss = predicted_loss(n, compute / (6 * n))
        marker = " (nearest)" if spec.name == proposal.nearest else ""
        table.add_row(f"{spec.name}{marker}", f"{n / 1e6:.2f}M", f"{compute / (6 * n):.3g}", f"{loss:.3f}",
                      f"{math.exp(loss):.2f}")
    note = (f"Proposal: {proposal.n_params / 1e6:.1f}M non-embedding parameters trained on {proposal.tokens:.3g} tokens "
            f"(nearest family member: {proposal.nearest}). This minimises L(N, D) at fixed compute; it is not the "
            "paper's compute-efficient frontier, which stops well before convergence. N is non-embedding parameters.")
    return table, note
