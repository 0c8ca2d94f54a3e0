import math

import pytest

from composerlite.models import FAMILY, KAPLAN, count_parameters, predicted_loss, predicted_ppl, propose


def test_constants():
    assert (KAPLAN.alpha_n, KAPLAN.alpha_d, KAPLAN.n_c, KAPLAN.d_c) == (0.076, 0.095, 8.8e13, 5.4e13)


def test_closed_form_by_hand():
    # N = 8.8e11 = N_c/100, D = 5.4e11 = D_c/100: [100^0.8 + 100]^0.095 = (39.81072 + 100)^0.095
    assert predicted_loss(8.8e11, 5.4e11) == pytest.approx(139.81072**0.095, rel=1e-7)
    assert predicted_loss(8.8e11, 5.4e11) == pytest.approx(1.59892, abs=1e-5)
    assert predicted_ppl(8.8e11, 5.4e11) == pytest.approx(math.exp(1.59892), rel=1e-5)
    with pytest.raises(ValueError):
        predicted_loss(0, 1e9)


def test_monotone_decreasing_in_n_and_d():
    grid = [1e6, 1e7, 1e8, 1e9, 1e10]
    for d in grid:
        losses = [predicted_loss(n, d * 10) for n in grid]
        assert losses == sorted(losses, reverse=True) and len(set(losses)) == len(losses)
    for n in grid:
        losses = [predicted_loss(n, d * 10) for d in grid]
        assert losses == sorted(losses, reverse=True) and len(set(losses)) == len(losses)


@pytest.mark.parametrize("compute", [1e15, 1e17, 3.4e18, 1e21])
def test_propose_is_the_constrained_minimum(compute):
    p = propose(compute)
    assert 6 * p.n_params * p.tokens == pytest.approx(compute, rel=1e-12)
    assert p.loss == pytest.approx(predicted_loss(p.n_params, p.tokens))
    assert p.ppl == pytest.approx(math.exp(p.loss))
    for f in (0.9, 0.99, 1.01, 1.1):  # neighbours on C = 6ND are worse
        n = p.n_params * f
        assert predicted_loss(n, compute / (6 * n)) > p.loss
    grid = [10 ** (4 + i / 1000) for i in range(10_000)]  # brute force agrees: N in 1e4..1e14
    best = min(grid, key=lambda n: predicted_loss(n, compute / (6 * n)))
    assert best == pytest.approx(p.n_params, rel=3e-3)


def test_propose_nearest_member():
    assert propose(1e15).nearest == "gpt2-cpu-6l"  # N* = 2.6M: gpt2-cpu-6l has 2.7M
    assert propose(1e17).nearest == "gpt2-52m"
    assert propose(3.4e18).nearest == "gpt2-125m"  # the 125m card budget: N* = 239M, D = 2.4B
    assert propose(1e13).nearest == "gpt2-tiny"
    assert propose(1e15).n_params < propose(1e17).n_params  # grows as C^(1/1.8)
    assert propose(1e17).n_params / propose(1e15).n_params == pytest.approx(100 ** (1 / 1.8))


def test_card_predictions_match_non_embedding_n_up_to_a_constant():
    """Which N did the card use for its predicted ppl? Neither exactly; non-embedding fits the shape."""
    rows = {name: s for name, s in FAMILY.items() if s.card_predicted_ppl}
    ours_ne = {n: predicted_ppl(count_parameters(s, non_embedding=True), s.card_tokens) for n, s in rows.items()}
    ours_tot = {n: predicted_ppl(count_parameters(s), s.card_tokens) for n, s in rows.items()}
    assert [round(v, 2) for v in ours_ne.values()] == [23.62, 20.35, 18.12]
    assert [round(v, 2) for v in ours_tot.values()] == [20.27, 18.37, 16.86]
    gap_ne = [math.log(s.card_predicted_ppl / ours_ne[n]) for n, s in rows.items()]  # nats/token
    gap_tot = [math.log(s.card_predicted_ppl / ours_tot[n]) for n, s in rows.items()]
    assert [round(g, 3) for g in gap_ne] == [0.320, 0.313, 0.307]
    assert [round(g, 3) for g in gap_tot] == [0.474, 0.416, 0.380]
    assert max(gap_ne) - min(gap_ne) < 0.015 < 0.09 < max(gap_tot) - min(gap_tot)
