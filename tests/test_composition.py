"""Composition: the provides/requires/conflicts rules, the ordering rule, and the pairwise matrix
over every registered algorithm (those added later are picked up automatically)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from tinyrun import CHEAP_ON_CPU, tiny_trainer

from composerlite import Algorithm, Event, Order
from composerlite.core.composition import compose
from composerlite.errors import ConfigError
from composerlite.registry import build_algorithm, registered_algorithms


CPU = torch.device("cpu")


def algorithm(name: str, **declarations) -> Algorithm:
    """An algorithm that does nothing but declare `declarations` (provides, requires, ...)."""
    cls = type(name.title(), (Algorithm,), {"name": name, "match": lambda self, event, state: False, **declarations})
    return cls()


def names(algorithms) -> list[str]:
    return [a.name for a in algorithms]


# --- the rules ---------------------------------------------------------------------------------


def test_two_providers_of_one_capability_are_rejected_naming_both():
    with pytest.raises(ConfigError, match=r"'rope' and 'alibi' both take over position_embedding"):
        compose([algorithm("rope", provides=("position_embedding",)), algorithm("alibi", provides=("position_embedding",))])


def test_an_algorithm_listed_twice_is_rejected_when_it_provides_something():
    with pytest.raises(ConfigError, match=r"'ema' is listed twice"):
        compose([algorithm("ema", provides=("eval_weights",)), algorithm("ema", provides=("eval_weights",))])
    assert len(compose([algorithm("recorder"), algorithm("recorder")])) == 2  # nothing exclusive: allowed


def test_requires_is_met_by_a_name_or_a_capability_of_another_algorithm():
    needy = algorithm("needy", requires=("attention_scores",))
    with pytest.raises(ConfigError, match=r"'needy' requires 'attention_scores', which no other"):
        compose([needy])
    with pytest.raises(ConfigError, match="requires"):
        compose([algorithm("selfish", requires=("selfish",), provides=("selfish",))])  # not by itself
    assert names(compose([needy, algorithm("alibi", provides=("attention_scores",))])) == ["needy", "alibi"]
    assert names(compose([algorithm("a", requires=("b",)), algorithm("b")])) == ["a", "b"]


def test_conflicts_by_name_or_capability_are_rejected_both_ways_round():
    compile_ = algorithm("compile", conflicts=("layernorm",))
    lpln = algorithm("low_precision_layernorm", provides=("layernorm",))
    for pair in ([compile_, lpln], [lpln, compile_]):
        with pytest.raises(ConfigError, match=r"'compile' cannot run with 'low_precision_layernorm' \(both touch layernorm\)"):
            compose(pair)
    with pytest.raises(ConfigError, match=r"'x' cannot run with 'y'; keep only one"):
        compose([algorithm("x", conflicts=("y",)), algorithm("y")])


def test_order_classes_first_then_the_users_order_stable():
    listed = [
        algorithm("compile", order=Order.WRAP),
        algorithm("clip"),
        algorithm("glu", order=Order.SURGERY),
        algorithm("ema"),
        algorithm("scale", order=Order.SCHEDULE),
        algorithm("lpln", order=Order.SURGERY),
        algorithm("between", order=Order.SURGERY + 1),  # the gaps let a plugin slot in anywhere
    ]
    assert names(compose(listed)) == ["scale", "glu", "lpln", "between", "clip", "ema", "compile"]
    assert names(compose(reversed(listed))) == ["scale", "lpln", "glu", "between", "ema", "clip", "compile"]


def test_the_trainer_rejects_a_bad_combination_before_init_and_runs_in_composed_order(tmp_path):
    seen = []

    class Probe(Algorithm):
        def __init__(self, name, order):
            self.name, self.order = name, order

        def match(self, event, state):
            return event is Event.INIT

        def apply(self, event, state, logger):
            seen.append(self.name)

    with pytest.raises(ConfigError, match="both take over"):
        tiny_trainer(tmp_path / "a", [Probe("p", Order.SURGERY), algorithm("q", provides=("mlp",)),
                                      algorithm("r", provides=("mlp",))], vocab_size=512)
    assert seen == [], "INIT must not run for a rejected combination"
    trainer = tiny_trainer(tmp_path / "b", [Probe("late", Order.WRAP), Probe("early", Order.SURGERY)], vocab_size=512)
    assert seen == ["early", "late"] and names(trainer.state.algorithms) == ["early", "late"]


def test_builtin_declarations():
    declared = {name: build_algorithm(name) for name in
                ("gated_linear_units", "low_precision_layernorm", "ema", "scale_schedule", "gradient_clipping")}
    assert declared["gated_linear_units"].provides == ("mlp",) and declared["gated_linear_units"].order == Order.SURGERY
    assert declared["low_precision_layernorm"].provides == ("layernorm",)
    assert declared["ema"].provides == ("eval_weights",)
    assert declared["scale_schedule"].order == Order.SCHEDULE
    assert names(compose(declared.values())) == [
        "scale_schedule", "gated_linear_units", "low_precision_layernorm", "ema", "gradient_clipping"]


# --- the pairwise matrix -----------------------------------------------------------------------


def test_every_registered_algorithm_builds_with_its_defaults():
    for name in registered_algorithms():
        assert build_algorithm(name).name == name, f"{name}: entry-point name and Algorithm.name differ"


PAIRS = list(itertools.combinations(sorted(registered_algorithms()), 2))


@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_every_pair_composes_and_trains_a_step_or_is_rejected_up_front(tmp_path, first, second):
    """Each pair either trains one step on gpt2-tiny (seq 16, batch 2) with a finite loss, or is
    refused while the Trainer is built (before any step) with a one-line ConfigError."""
    algorithms = [build_algorithm(first, CHEAP_ON_CPU.get(first)), build_algorithm(second, CHEAP_ON_CPU.get(second))]
    try:
        trainer = tiny_trainer(tmp_path, algorithms, max_duration="1ba", vocab_size=512, evaluate=False)
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and message, f"{first}+{second}: rejection must be one clear line"
        return
    summary = trainer.fit()
    assert summary["steps"] == 1
    assert math.isfinite(summary["final_train_loss"])


# --- bundles -------------------------------------------------------------------------------------


def test_a_bundle_composes_as_the_members_it_applies_each_in_its_own_order():
    """fused_kernels on a CPU in fp32 applies the lean blocks (surgery), the padded vocabulary, the
    fused loss and fused AdamW (default order); it skips fused LayerNorm, flash attention and compile."""
    from composerlite.algorithms.fused_kernels import FusedKernelsOptions, plan

    applied, skipped = plan(CPU, "fp32", FusedKernelsOptions())
    assert {"fused_layernorm", "flash_attention", "compile"} <= set(skipped)
    listed = [build_algorithm("logit_softcap"), build_algorithm("fused_kernels"), build_algorithm("alibi")]
    default = [name for name in ("pad_vocab", "fused_cross_entropy", "fused_adamw") if name in applied]  # fused AdamW: if this PyTorch has it
    # the lean blocks are surgery, so they run before logit_softcap though listed after it, as if
    # the user had listed the members themselves in the bundle's place
    assert names(compose(listed, CPU, "fp32")) == ["fused_gpt2_blocks", "alibi", "logit_softcap", "fused_kernels", *default]


def test_a_skipped_or_excluded_member_claims_nothing_and_an_applied_one_is_named():
    lpln = build_algorithm("low_precision_layernorm")
    compose([build_algorithm("fused_kernels"), lpln], CPU, "fp32")  # fused_layernorm is skipped in fp32
    compose([build_algorithm("fused_kernels", {"exclude": ["fused_layernorm"]}), lpln], CPU, "bf16")
    with pytest.raises(ConfigError, match="'fused_kernels/fused_layernorm' and 'low_precision_layernorm' both take over layernorm"):
        compose([build_algorithm("fused_kernels"), lpln], CPU, "bf16")
    with pytest.raises(ConfigError, match="'fused_kernels/fused_gpt2_blocks' cannot run with 'gated_linear_units'"):
        compose([build_algorithm("fused_kernels"), build_algorithm("gated_linear_units")], CPU, "fp32")
    compose([build_algorithm("fused_kernels", {"exclude": ["fused_gpt2_blocks"]}), build_algorithm("gated_linear_units")],
            CPU, "fp32")


def test_a_run_reports_each_members_time_and_each_skip_with_its_reason(tmp_path):
    trainer = tiny_trainer(tmp_path, [build_algorithm("fused_kernels", {"exclude": ["pad_vocab"]})],
                           max_duration="1ba", vocab_size=512, evaluate=False)
    summary = trainer.fit()
    bundle = trainer.state.algorithms[[a.name for a in trainer.state.algorithms].index("fused_kernels")]
    assert bundle.skipped["pad_vocab"] == "excluded by the user" and "flash_attention" in bundle.skipped
    assert set(summary["seconds_per_algorithm"]) == {"fused_kernels", *bundle.applied}
    first = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][0]
    assert first["fused_kernels/applied"] == ",".join(bundle.applied)
    assert first["fused_kernels/skipped/pad_vocab"] == "excluded by the user"
