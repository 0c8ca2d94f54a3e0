"""A run's settings: sections declared once, the one flat-key mapping (documented in the README),
validation at the edge, and the defaults filled in by `resolve`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from composerlite.run.run_directory import load_run_config
from composerlite.run.settings import (FLAT_KEYS, PLUGIN_LISTS, SECTIONS, ConfigError, RunConfig, load_config, resolve,
                                 validated)
from composerlite.system.storage import location

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_documents_the_one_mapping():
    """The README's settings table, row by row, is `FLAT_KEYS`: every field of every section, its
    flat key where that is not the field's name, and nothing else."""
    table = README.read_text().split("| section | settings", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.+) \|$", table, re.MULTILINE)
    documented = {}
    for section, cells in rows:
        for field, flat in re.findall(r"`(\w+)`(?: \(flat key `(\w+)`\))?", cells):
            documented[flat or field] = (section, field)
    assert documented == FLAT_KEYS
    assert set(SECTIONS) == {section for section, _ in FLAT_KEYS.values()}


def test_flat_keys_sections_and_a_mix_give_one_configuration():
    flat = {"model": "gpt2-tiny", "data": "corpus.txt", "lr": 3e-3, "max_duration": "10ba", "parallel": "fsdp",
            "algorithms": ["alibi"]}
    sections = {"model": {"name": "gpt2-tiny"}, "data": {"source": "corpus.txt"}, "optimizer": {"lr": 3e-3},
                "training": {"max_duration": "10ba"}, "parallelism": {"strategy": "fsdp"}, "algorithms": ["alibi"]}
    mixed = {"model": "gpt2-tiny", "data": {"source": "corpus.txt"}, "optimizer": {"lr": 3e-3}, "max_duration": "10ba",
             "parallel": "fsdp", "algorithms": ["alibi"]}
    assert validated(flat) == validated(sections) == validated(mixed)
    config = validated(mixed)
    assert (config.model.name, config.data.source, config.optimizer.lr, config.parallelism.strategy) == (
        "gpt2-tiny", "corpus.txt", 3e-3, "fsdp")
    assert validated(config.flat()) == config  # the records' flat view reads back as the same configuration
    assert list(config.flat()) == [*FLAT_KEYS, *PLUGIN_LISTS]


@pytest.mark.parametrize("values, message", [
    ({"lr": 1e-3, "optimizer": {"lr": 2e-3}}, "`optimizer.lr` and `lr` are the same setting; give it once"),
    ({"training": "fast"}, "`training` must be a mapping of its settings"),
    ({"learning_rate": 1}, "unknown option 'learning_rate'"),
    ({"optimizer": {"learning_rate": 1}}, "unknown option 'optimizer.learning_rate'"),
    ({"training": {"max_duration": "0.5dur"}}, "invalid max_duration: cannot be in 'dur'"),  # named by its flat key
    ({"model": {"name": "gpt2-huge"}}, "invalid model: unknown model 'gpt2-huge'"),
    ({"microbatch_size": "some"}, "invalid microbatch_size: expected a positive integer or 'auto'"),
])
def test_mistakes_are_one_line_naming_the_setting(values, message):
    with pytest.raises(ConfigError) as error:
        validated(values)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_flags_override_a_sectioned_recipe_setting_by_setting(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"name": "gpt2-tiny", "dropout": 0.1}, "optimizer": {"lr": 1e-2},
                                      "training": {"batch_size": 4}}))
    config = load_config(recipe, {"lr": 3e-3, "seed": 5, "model": None, "algorithms": []})
    assert (config.model.name, config.model.dropout, config.optimizer.lr) == ("gpt2-tiny", 0.1, 3e-3)
    assert (config.training.batch_size, config.training.seed) == (4, 5)
    assert config.is_set("batch_size") and not config.is_set("eval_batches")


def test_defaults_that_depend_on_the_model_and_device_are_filled_in_once():
    tiny, notes = resolve(validated({"model": "gpt2-tiny", "max_duration": "4ba", "device": "cpu", "run_dir": "r"}))
    assert (tiny.optimizer.lr, tiny.model.dropout, tiny.schedule.warmup) == (1e-3, 0.0, "0.05dur")
    assert (tiny.training.batch_size, tiny.data.seq_len, notes) == (8, 128, [])
    card, _ = resolve(validated({"model": "gpt2-52m", "max_duration": "4ba", "device": "cpu", "run_dir": "r"}))
    assert (card.optimizer.lr, card.model.dropout) == (1.5e-3, 0.1)  # the card's, without the card's recipe
    demo, notes = resolve(validated({"model": "gpt2-tiny", "device": "cpu", "batch_size": 2}))
    assert (demo.training.max_duration, demo.training.batch_size, demo.data.seq_len) == ("20ba", 2, 128)
    assert "CPU demo" in notes[0] and demo.checkpointing.run_dir.startswith("runs/gpt2-tiny-")
    assert resolve(demo)[0] == demo


def test_an_older_flat_config_yaml_and_a_sectioned_one_load_alike(tmp_path):
    flat = {"model": "gpt2-tiny", "algorithms": [], "data": None, "max_duration": "2ba", "batch_size": 2, "seq_len": 16,
            "lr": 1e-3, "warmup": "1ba", "device": "cpu", "precision": "fp32", "threads": 2, "world_size": 1}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.yaml").write_text(yaml.safe_dump(flat))
    sectioned = {"model": {"name": "gpt2-tiny"}, "training": {"max_duration": "2ba", "batch_size": 2, "device": "cpu",
                                                              "precision": "fp32", "threads": 2},
                 "data": {"seq_len": 16, "source": None}, "optimizer": {"lr": 1e-3}, "schedule": {"warmup": "1ba"},
                 "world_size": 1}
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "config.yaml").write_text(yaml.safe_dump(sectioned))
    assert load_run_config(location(str(tmp_path / "old"))) == load_run_config(location(str(tmp_path / "new")))


def test_a_configuration_is_a_frozen_value():
    config = RunConfig()
    with pytest.raises(Exception):
        config.optimizer.lr = 1.0  # type: ignore[misc]
    assert config.updated({"lr": 2e-3}).optimizer.lr == 2e-3 and config.optimizer.lr is None


def test_bench_takes_what_run_takes_for_a_shared_setting():
    from composerlite.cli import build_parser
    from composerlite.commands.bench import base_config

    args = build_parser().parse_args(["bench", "--model", "gpt2-tiny", "--budget", "2ba", "--microbatch-size", "auto"])
    assert base_config(args).training.microbatch_size == "auto"
