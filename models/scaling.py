"""Kaplan et al. 2020, "Scaling Laws for Neural Language Models": what loss to expect.

Losses are nats/token on WebText2 with GPT-2's tokenizer, so they compare (roughly) with
OpenWebText losses. N is always the *non-embedding* parameter count, as in the paper.

How this lines up with the model card, at the card's token budgets with our measured N:

    model      N non-emb  Kaplan ppl  | N total  Kaplan ppl  | card predicted ppl
    gpt2-52m   25.2M      23.62       | 51.5M    20.27       | 32.54
    gpt2-83m   49.2M      20.35       | 82.1M    18.37       | 27.84
    gpt2-125m  85.1M      18.12       | 124.4M   16.86       | 24.64

Neither N reproduces the card's numbers; the card predicts ~0.31 nats/token more loss.
Non-embedding N matches the card's *shape*: its gap is constant (0.320, 0.313, 0.307 nats),
while with total N the gap drifts (0.47, 0.42, 0.38). So the card most likely used Kaplan's
non-embedding N plus an offset (or different constants) we cannot recover; see tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .family import FAMILY
from .gpt2 import count_parameters


@dataclass(frozen=True)
class KaplanConstants:
    """alpha_N, N_c from eq. 1.1 L(N); alpha_D, D_c from eq. 1.2 L(D); eq. 1.5 combines them."""

    alpha_n: float
    alpha_d: float
    n_c: float  # non-embedding parameters
    d_c: float  # tokens


KAPLAN = KaplanConstants(alpha_n=0.076, alpha_d=0.095, n_c=8.8e13, d_c=5.4e13)


def predicted_loss(n_params_non_embedding: float, tokens: float) -> float:
    """Eq. 1.5: L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, in nats/token."""
    if n_params_non_embedding <= 0 or tokens <= 0:
        raise ValueError("n_params_non_embedding and tokens must be positive")
    k = KAPLAN
    return ((k.n_c / n_params_non_embedding) ** (k.alpha_n / k.alpha_d) + k.d_c / tokens) ** k.alpha_d


def predicted_ppl(n_params_non_embedding: float, tokens: float) -> float:
    return math.exp(predicted_loss(n_params_non_embedding, tokens))


@dataclass(frozen=True)
class Proposal:
    compute_flops: float
    n_params: float  # non-embedding
    tokens: float
    loss: float
    ppl: float
    nearest: str  # family member with the closest non-embedding N (log scale)


def propose(compute_flops: float) -> Proposal:
    """The N, D minimising eq. 1.5 under the paper's C = 6ND (Sec. 2.1), in closed form.

    With D = C/(6N) and p = alpha_N/alpha_D, minimise a*N^-p + b*N (a = N_c^p, b = 6 D_c/C):
    N* = (p*a/b)^(1/(1+p)), so N* grows as C^(1/(1+p)) = C^0.56. This is L(N, D) at fixed
    compute, not the paper's compute-efficient frontier (eq. 1.7, N ~ C_min^0.73), which
    stops training well before convergence.
    """
    if compute_flops <= 0:
        raise ValueError("compute_flops must be positive")
    k = KAPLAN
    p = k.alpha_n / k.alpha_d
    n = (p * k.n_c**p * compute_flops / (6 * k.d_c)) ** (1 / (1 + p))
    d = compute_flops / (6 * n)
    loss = predicted_loss(n, d)
    nearest = min(FAMILY, key=lambda name: abs(math.log(count_parameters(name, non_embedding=True) / n)))
    return Proposal(compute_flops, n, d, loss, math.exp(loss), nearest)
