"""Flags generated from the settings' one declaration: every setting has exactly one flag on `run`,
`bench` and `sweep` share theirs identically, and a flag sets its setting."""

from __future__ import annotations

import argparse

import pytest

from composerlite.cli import build_parser
from composerlite.commands.bench import DECIDED_PER_RUN, base_config
from composerlite.commands.flags import FIELDS, FLAGS, as_flags, given_settings
from composerlite.run.settings import FLAT_KEYS, PLUGIN_LISTS, load_config


def subcommand(name: str) -> argparse.ArgumentParser:
    subparsers = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return subparsers.choices[name]


def setting_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> action, for the flags that set a run setting."""
    return {action.dest: action for action in parser._actions if action.dest in FIELDS}


def described(action: argparse.Action) -> tuple:
    return (action.option_strings, type(action).__name__, action.type, action.choices, action.default,
            action.metavar, action.help)


def test_every_setting_has_exactly_one_flag_on_run():
    run = subcommand("run")
    flags = setting_flags(run)
    assert set(flags) == {*FLAT_KEYS, *PLUGIN_LISTS}
    assert all(len(action.option_strings) == 1 for action in flags.values())
    assert {action.dest for action in run._actions} == {*FLAT_KEYS, *PLUGIN_LISTS, "help", "config", "debug"}
    assert FLAGS["algorithms"] == "--algo" and FLAGS["loggers"] == "--logger" and FLAGS["max_duration"] == "--max-duration"


def test_run_bench_and_sweep_declare_each_shared_setting_alike():
    run = setting_flags(subcommand("run"))
    for command in ("bench", "sweep"):
        shared = setting_flags(subcommand(command))
        assert set(shared) == set(run) - set(DECIDED_PER_RUN), command
        for dest, action in shared.items():
            assert described(action) == described(run[dest]), (command, dest)


@pytest.mark.parametrize("argv, expected", [
    (["--lr", "3e-3", "--batch-size", "4"], {"lr": 3e-3, "batch_size": 4}),
    (["--algo", "alibi", "--algo", "rotary", "--logger", "tensorboard"],
     {"algorithms": ["alibi", "rotary"], "loggers": ["tensorboard"]}),
    (["--autoresume", "--card-recipe", "--parallel", "fsdp"], {"autoresume": True, "card_recipe": True, "parallel": "fsdp"}),
    (["--microbatch-size", "auto", "--max-duration", "10ba"], {"microbatch_size": "auto", "max_duration": "10ba"}),
    ([], {}),
])
def test_a_flag_sets_its_setting_and_nothing_else(argv, expected):
    args = build_parser().parse_args(["run", *argv])
    assert given_settings(args) == expected
    config = load_config(None, given_settings(args))
    assert {key: config.flat()[key] for key in expected} == expected


def test_a_flag_that_is_not_given_leaves_the_recipe_alone(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optimizer: {lr: 0.02}\ntraining: {seed: 3}\n")
    args = build_parser().parse_args(["run", "--config", str(recipe), "--seed", "5"])
    config = load_config(args.config, given_settings(args))
    assert (config.optimizer.lr, config.training.seed) == (0.02, 5)


def test_bench_sets_the_budget_with_its_own_flag_and_takes_the_shared_ones():
    args = build_parser().parse_args(["bench", "--model", "gpt2-tiny", "--budget", "2ba", "--weight-decay", "0.1",
                                      "--microbatch-size", "auto"])
    config = base_config(args)
    assert (config.training.max_duration, config.optimizer.weight_decay) == ("2ba", 0.1)
    assert config.training.microbatch_size == "auto"
    with pytest.raises(SystemExit):  # a benchmark decides each run's directory itself
        build_parser().parse_args(["bench", "--run-dir", "x"])


def test_messages_name_settings_as_their_flags():
    assert as_flags("give `max_duration=10ba` with `algorithms=alibi` or `autoresume`") == (
        "give --max-duration 10ba with --algo alibi or --autoresume")
