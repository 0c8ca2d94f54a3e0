"""ALiBi: slopes and biases against the closed form, equivalence with the base model when switched
off, Composer's reshaping of training batches (`train_sequence_length_scaling`), length
extrapolation past training length and past n_positions, and `composerlite eval`."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tinyrun import tiny_trainer

from composerlite import Algorithm, Callback, Event
from composerlite.algorithms.alibi import Alibi, AlibiBias, alibi_slopes, apply_alibi, reshape_for_training, scaled_shape
from composerlite.cli import main as cli
from composerlite.core.attention import (NoPositionEmbedding, add_score_modifier, attention_layers, remove_score_modifier,
                                   score_modifiers)
from composerlite.core.composition import compose
from composerlite.core.logger import Logger
from composerlite.data import BatchStream
from composerlite.errors import ConfigError
from composerlite.models import ModelSpec, build_model, count_parameters
from composerlite.registry import build_algorithm
from composerlite.run.loop import Trainer, seed_everything

# An ALiBi model trained at length L must evaluate at 2L within this many nats/token of its loss at
# L. Measured on the grammar below (see the report in docs/attention.md): the 2x loss came out
# *lower* than 1x; the margin allows for run-to-run noise on other CPUs/BLAS builds.
EXTRAPOLATION_MARGIN = 0.10


def closed_form_slopes(n: int) -> list[float]:
    """Press et al.'s rule written out: m = largest power of two <= n; 2^(-8i/m) for i = 1..m, then
    the odd-indexed slopes of 2m, 2^(-8(2k-1)/(2m)) for k = 1..n-m."""
    m = 2 ** math.floor(math.log2(n))
    return [2 ** (-8 * i / m) for i in range(1, m + 1)] + [2 ** (-8 * (2 * k - 1) / (2 * m)) for k in range(1, n - m + 1)]


@pytest.mark.parametrize("n_heads", [8, 10, 12])
def test_slopes_match_the_closed_form(n_heads):
    assert alibi_slopes(n_heads) == pytest.approx(closed_form_slopes(n_heads), rel=1e-12)
    assert len(set(alibi_slopes(n_heads))) == n_heads


def test_ten_heads_interleave_the_sixteen_head_slopes():
    slopes = alibi_slopes(10)
    assert slopes[:8] == [2.0**-i for i in range(1, 9)]
    assert slopes[8:] == pytest.approx([2**-0.5, 2**-1.5])


@pytest.mark.parametrize("n_heads", [8, 10, 12])
def test_bias_in_the_model_is_minus_slope_times_distance(n_heads):
    model = build_model(ModelSpec(f"h{n_heads}", 1, 8 * n_heads, 16 * n_heads, n_heads), vocab_size=64, dropout=0.0)
    apply_alibi(model, max_sequence_length=32)
    layer = attention_layers(model)[0]
    mask = layer.attention_changes.additive_mask(layer, 7, 7, torch.device("cpu"), torch.float32)
    assert mask.shape == (n_heads, 7, 7)
    i, j = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
    slopes = torch.tensor(closed_form_slopes(n_heads))[:, None, None]
    expected = torch.where(j <= i, -slopes * (i - j), torch.finfo(torch.float32).min)
    torch.testing.assert_close(mask, expected, atol=1e-6, rtol=1e-6)


def test_alibi_switched_off_is_the_base_model_without_position_embeddings():
    torch.manual_seed(0)
    base = build_model("gpt2-tiny", vocab_size=128, dropout=0.0).eval()
    converted = apply_alibi(copy.deepcopy(base), max_sequence_length=64)
    input_ids = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(1))
    with_bias = converted(input_ids=input_ids).logits
    remove_score_modifier(converted, "alibi")
    add_score_modifier(converted, AlibiBias(torch.zeros(base.config.n_head)))
    switched_off = converted(input_ids=input_ids).logits
    no_positions = copy.deepcopy(base)
    no_positions.transformer.wpe.weight.data.zero_()
    for implementation in ("sdpa", "eager"):
        no_positions.set_attn_implementation(implementation)
        torch.testing.assert_close(switched_off, no_positions(input_ids=input_ids).logits, atol=1e-5, rtol=0)
    assert not torch.allclose(with_bias, switched_off, atol=1e-3)


def test_apply_alibi_removes_wpe_and_runs_past_n_positions():
    model = build_model("gpt2-tiny", vocab_size=128, n_positions=16, dropout=0.0).eval()
    apply_alibi(model, max_sequence_length=48)
    assert isinstance(model.transformer.wpe, NoPositionEmbedding)
    assert model.config.n_positions == 48
    assert not any("wpe" in key for key in model.state_dict())
    assert [m.name for m in score_modifiers(model)] == ["alibi"]
    # Kaplan's N: the same non-embedding count as before, the total less the wpe table
    assert count_parameters(model, non_embedding=True) == count_parameters("gpt2-tiny", non_embedding=True)
    assert count_parameters(model) == count_parameters(model, non_embedding=True) + 128 * model.config.n_embd
    logits = model(input_ids=torch.randint(0, 128, (1, 200))).logits  # 4x max_sequence_length, 12x the old table
    assert logits.shape == (1, 200, 128) and torch.isfinite(logits).all()
    model.double()
    assert model(input_ids=torch.randint(0, 128, (1, 8))).logits.dtype == torch.float64


def test_apply_alibi_rejects_twice_and_non_gpt2():
    model = apply_alibi(build_model("gpt2-tiny", vocab_size=128))
    with pytest.raises(ValueError, match="already uses ALiBi"):
        apply_alibi(model)
    with pytest.raises(ValueError, match="expects a GPT-2 model"):
        apply_alibi(torch.nn.Linear(2, 2))


def test_algorithm_converts_at_init_and_rejects_a_second_position_scheme():
    algorithm = build_algorithm("alibi", {"max_sequence_length": 96})
    assert isinstance(algorithm, Alibi) and algorithm.match(Event.INIT, None) and not algorithm.match(Event.FIT_START, None)

    class RotaryStandIn(Algorithm):
        name = "rope"
        provides = ("position_embedding",)

    with pytest.raises(ConfigError, match="position_embedding"):
        compose([algorithm, RotaryStandIn()])
    with pytest.raises(ConfigError):
        build_algorithm("alibi", {"max_sequence_length": 0})


# -- Composer's train_sequence_length_scaling ----------------------------------------------------


@pytest.mark.parametrize("scaling", [0.25, 0.5, 2.0])
def test_scaling_reshapes_a_batch_exactly_as_composer_does(scaling):
    batch = {"input_ids": torch.arange(8 * 16).reshape(8, 16)}
    reshaped = reshape_for_training(batch, scaling)["input_ids"]
    # Composer's Alibi, at AFTER_DATALOADER: v.reshape(int(batch_len / s), int(sequence_len * s))
    assert torch.equal(reshaped, batch["input_ids"].reshape(int(8 / scaling), int(16 * scaling)))
    if scaling == 0.25:  # every sequence cut into four, in order
        assert reshaped[:5].tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]


@pytest.mark.parametrize("rows, length, scaling", [(8, 16, 0.3), (8, 16, 1 / 16), (3, 16, 2.0)])
def test_a_scaling_that_does_not_cut_the_batch_exactly_is_refused(rows, length, scaling):
    with pytest.raises(ValueError, match=f"cannot reshape a batch of {rows} x {length} tokens"):
        scaled_shape(rows, length, scaling)


class Shapes(Callback):
    """The batches the model is trained on, and the shapes it is evaluated on."""

    def __init__(self):
        self.train, self.eval = [], []

    def before_forward(self, state, logger):
        self.train.append(state.batch["input_ids"].clone())

    def eval_before_forward(self, state, logger):
        self.eval.append(tuple(state.batch["input_ids"].shape))


@pytest.mark.parametrize("microbatch_size, microbatches", [(None, 4), (8, 1)])
def test_scaling_trains_on_the_batch_cut_short_and_evaluates_at_full_length(tmp_path, microbatch_size, microbatches):
    shapes = Shapes()
    trainer = tiny_trainer(tmp_path, [Alibi(train_sequence_length_scaling=0.25)], max_duration="2ba", seq_len=16,
                           batch_size=2, microbatch_size=microbatch_size, eval_interval="2ba", callbacks=[shapes],
                           vocab_size=512)
    data = next(iter(trainer.train_data.epoch(0)))["input_ids"]
    trainer.fit()
    # Rows of a quarter the length; the microbatch size counts rows, as Composer's does (default: the
    # data's batch size, so the reshaped batch runs as four microbatches)
    assert [tuple(batch.shape) for batch in shapes.train] == [(8 // microbatches, 4)] * 2 * microbatches
    assert torch.equal(torch.cat(shapes.train[:microbatches]), data.reshape(8, 4))
    assert set(shapes.eval) == {(2, 16)}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [record for record in records if record["event"] == "train"]
    # As Composer counts after AFTER_DATALOADER: four times the samples, the same tokens
    assert [(r["seq_len"], r["samples"], r["tokens"]) for r in train] == [(4, 8, 32), (4, 16, 64)]


def test_scaling_one_leaves_batches_alone_and_composes_with_the_other_batch_shapers():
    assert not Alibi().match(Event.AFTER_DATALOADER, None) and Alibi().provides == ("position_embedding",)
    compose([Alibi(), build_algorithm("seq_len_warmup"), build_algorithm("batch_size_warmup")])
    scaling = Alibi(train_sequence_length_scaling=0.25)
    assert scaling.match(Event.AFTER_DATALOADER, None)
    with pytest.raises(ConfigError, match="'alibi' and 'seq_len_warmup' both take over sequence_length"):
        compose([scaling, build_algorithm("seq_len_warmup")])
    with pytest.raises(ConfigError, match="'alibi' and 'batch_size_warmup' both take over batch_size"):
        compose([scaling, build_algorithm("batch_size_warmup")])


def test_a_scaling_that_cannot_cut_the_runs_batches_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"algorithm 'alibi': train_sequence_length_scaling=0.3 cannot reshape a batch "
                                          r"of 2 x 16 tokens"):
        tiny_trainer(tmp_path, [build_algorithm("alibi", {"train_sequence_length_scaling": 0.3})], seq_len=16,
                     batch_size=2, vocab_size=512)


# -- training short, evaluating long -------------------------------------------------------------

GRAMMAR_VOCAB = 48


def grammar_tokens(n_sentences: int, seed: int) -> np.ndarray:
    """A tiny language with real structure: "the ADJ NOUN VERB the ADJ NOUN ." as token ids, where
    the noun class depends on the adjective. Predicting it needs relative position, not absolute."""
    rng = np.random.default_rng(seed)
    the, dot = 0, 1
    adjectives, verbs = np.arange(2, 10), np.arange(10, 18)
    sentences = []
    for _ in range(n_sentences):
        sentence = [the]
        for slot in range(2):
            adjective = rng.choice(adjectives)
            sentence += [adjective, 18 + 4 * (adjective - 2) + rng.integers(4) if adjective < 9 else 18 + rng.integers(30)]
            if slot == 0:
                sentence += [rng.choice(verbs), the]
        sentences.append(sentence + [dot])
    return np.array([token for sentence in sentences for token in sentence], dtype=np.uint16) % GRAMMAR_VOCAB


def trained(tmp_path: Path, algorithms, n_positions: int, steps: int = 60) -> Trainer:
    seed_everything(0)
    trainer = Trainer(
        {"max_duration": f"{steps}ba", "run_dir": str(tmp_path / "run"), "lr": 3e-3, "warmup": "6ba", "device": "cpu",
         "precision": "fp32", "seed": 0},
        model=build_model("gpt2-tiny", vocab_size=GRAMMAR_VOCAB, n_positions=n_positions, dropout=0.0),
        train_data=BatchStream(grammar_tokens(3000, seed=0), seq_len=32, batch_size=16, seed=0),
        logger=Logger([]),
        algorithms=algorithms,
    )
    trainer.fit()
    return trainer


def eval_loss(trainer: Trainer, seq_len: int) -> float:
    trainer.eval_data = BatchStream(grammar_tokens(600, seed=1), seq_len=seq_len, batch_size=4, shuffle=False)
    trainer.eval_batches = 8
    return trainer.evaluate()["eval_loss"]


def test_alibi_trained_short_evaluates_at_twice_the_length_and_past_n_positions(tmp_path):
    trainer = trained(tmp_path, [Alibi(max_sequence_length=48)], n_positions=48)
    at_1x, at_2x, at_4x = (eval_loss(trainer, n) for n in (32, 64, 128))  # 64 and 128 exceed n_positions=48
    assert math.isfinite(at_2x) and math.isfinite(at_4x)
    assert at_1x < math.log(GRAMMAR_VOCAB) - 1.0, "the model did not learn the grammar; the comparison would be empty"
    assert at_2x <= at_1x + EXTRAPOLATION_MARGIN
    assert at_4x <= at_1x + 2 * EXTRAPOLATION_MARGIN


def test_without_alibi_past_n_positions_fails_clearly(tmp_path):
    trainer = trained(tmp_path, [], n_positions=48, steps=2)  # the failure is structural: no need to train long
    with pytest.raises(IndexError, match="index out of range"):
        eval_loss(trainer, 64)


# -- composerlite eval through the CLI -----------------------------------------------------------


@pytest.fixture(scope="module")
def jsonl_corpus(tmp_path_factory) -> Path:
    """1200 short stories (about 130k GPT-2 tokens), so the 2% held-out split holds more than 2048 tokens."""
    rng = np.random.default_rng(0)
    nouns = "fox dog cat bird river mountain king queen city road tree stone ship star".split()
    verbs = "sees finds follows carries watches builds crosses remembers".split()
    adjectives = "quick lazy old young bright dark silent golden".split()
    path = tmp_path_factory.mktemp("corpus") / "stories.jsonl"
    with path.open("w") as file:
        for story in range(1200):
            sentences = " ".join(
                f"The {rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice(verbs)} the "
                f"{rng.choice(adjectives)} {rng.choice(nouns)}." for _ in range(rng.integers(10, 20))
            )
            file.write(json.dumps({"text": f"Story {story}. {sentences}"}) + "\n")
    return path


def run_cli(tmp_path: Path, corpus: Path, name: str, *algos: str) -> Path:
    run_dir = tmp_path / name
    args = ["run", "--model", "gpt2-tiny", "--data", str(corpus), "--max-duration", "4ba", "--seq-len", "32",
            "--batch-size", "4", "--device", "cpu", "--precision", "fp32", "--eval-batches", "1",
            "--run-dir", str(run_dir)]
    for algo in algos:
        args += ["--algo", algo]
    assert cli(args) == 0
    return run_dir


def test_eval_cli_on_an_alibi_run_at_2x_and_past_n_positions(tmp_path, jsonl_corpus, capsys):
    run_dir = run_cli(tmp_path, jsonl_corpus, "alibi", "alibi:max_sequence_length=64")
    capsys.readouterr()
    assert cli(["eval", str(run_dir), "--seq-len", "64", "--batch-size", "2", "--max-batches", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["seq_len"] == 64 and result["tokens"] == 2 * 2 * 63
    assert result["checkpoint"].endswith("ba00000004") and result["algorithms"] == ["alibi"]
    assert math.isfinite(result["eval_loss"]) and result["eval_ppl"] == pytest.approx(math.exp(result["eval_loss"]))
    # gpt2-tiny's n_positions is 1024; ALiBi removed that limit.
    assert cli(["eval", str(run_dir), "--seq-len", "2048", "--batch-size", "1", "--max-batches", "1"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["eval_loss"])


def test_eval_cli_matches_the_runs_own_final_eval(tmp_path, jsonl_corpus, capsys):
    run_dir = run_cli(tmp_path, jsonl_corpus, "plain")
    final = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final_eval = [record for record in final if record["event"] == "eval"][-1]
    capsys.readouterr()
    assert cli(["eval", str(run_dir), "--batch-size", "4", "--max-batches", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["eval_loss"] == pytest.approx(final_eval["eval_loss"], abs=1e-6)
    assert cli(["eval", str(run_dir), "--seq-len", "2048", "--batch-size", "1"]) == 2
    assert "learned position embeddings cover 1024 positions" in capsys.readouterr().err


@pytest.mark.parametrize("setup, message", [
    ("missing", "run directory not found"),
    ("empty", "not a composerlite run directory"),
    ("no_checkpoint", "no valid checkpoint"),
])
def test_eval_cli_bad_run_dir_is_one_line_exit_2(tmp_path, capsys, setup, message):
    run_dir = tmp_path / "run"
    if setup != "missing":
        run_dir.mkdir()
    if setup == "no_checkpoint":
        (run_dir / "config.yaml").write_text("model: gpt2-tiny\n")
    assert cli(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
