"""Composer plugins port by changing their imports: the `State`, `Timestamp` and `Time` surface
they use (`stop_training()` and the batch helpers included), a subclass that forwards `**kwargs` to
its parent's options, Composer's option names in a recipe (gated_linear_units' and alibi's too), and
a run directory a plugin writes into, local or fsspec. Each plugin in tests/composer_plugins.py
trains a few steps on gpt2-tiny and its effect is checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from tinyrun import tiny_trainer, weights

import composerlite
from composerlite import Callback, Event, State, Time, TimeUnit, Timestamp
from composerlite.algorithms.gated_linear_units import GatedLinearUnits
from composerlite.errors import ConfigError, PluginError
from composerlite.registry import build_algorithm, build_from_spec, options_model
from composerlite.run.settings import validated
from composerlite.run.train import algorithm_specs
from composerlite.system.storage import location

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = Path(__file__).with_name("composer_plugins.py")
RECORDER = ROOT / "examples" / "recorder.py"
TINY = {"vocab_size": 512, "evaluate": False}


def plugin(spec: str):
    return build_from_spec(f"{PLUGINS}:{spec}")


def train_records(run_dir: Path, algorithms, **kwargs) -> list[dict]:
    tiny_trainer(run_dir, algorithms, **{**TINY, **kwargs}).fit()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record for record in records if record["event"] == "train"]


def test_the_plugins_import_composerlite_where_they_imported_composer():
    imports = [line for line in PLUGINS.read_text().splitlines() if line.startswith(("from ", "import "))]
    assert imports == [
        "import torch",
        "from composerlite import Algorithm, Event  # was: from composer.core import Algorithm, Event",
        "from composerlite.algorithms.seq_len_warmup import SeqLenWarmup  # was: from composer.algorithms import SeqLengthWarmup",
    ]


# --- Time and Timestamp ------------------------------------------------------------------------


def test_time_compares_and_computes_with_numbers_as_composer_does():
    batch = Time(6, "ba")
    assert batch.unit is TimeUnit.BATCH and batch.value == 6 and int(batch) == 6 and float(batch) == 6.0
    assert batch == 6 and batch < 7 and batch >= 6 and batch == "6ba" and batch != Time(6, TimeUnit.TOKEN)
    assert batch + 1 == Time(7, TimeUnit.BATCH) and 10 - batch == Time(4, TimeUnit.BATCH)
    assert batch % 4 == 2 and not batch % 3
    assert batch / Time(12, "ba") == Time(0.5, TimeUnit.DURATION) and batch * Time(0.5, "dur") == Time(3, "ba")
    assert batch * 0.5 == 3 and batch / 2 == 3
    assert Time.from_timestring("0.25dur") == Time(0.25, TimeUnit.DURATION)
    with pytest.raises(ValueError, match="units differ"):
        batch < Time(3, TimeUnit.EPOCH)  # noqa: B015 - the comparison is the test
    timestamp = Timestamp(batch=3, token=96)
    timestamp.batch += 1
    assert timestamp.batch == Time(4, TimeUnit.BATCH) and timestamp.get(TimeUnit.TOKEN) == Time(96, "tok")
    with pytest.raises(ValueError, match="counts ba"):
        timestamp.batch = Time(1, TimeUnit.EPOCH)


# --- State: optimizers, elapsed duration, timestamp, loss, outputs, seed ------------------------


class Snapshot(Callback):
    """The token embedding as it is at the end of batch `at`."""

    def __init__(self, at: int):
        self.at, self.embedding = at, None

    def batch_end(self, state, logger):
        if state.timestamp.batch == self.at:
            self.embedding = state.model.get_input_embeddings().weight.detach().clone()


def test_freeze_embeddings_through_state_optimizers_keeps_them_fixed_from_its_start(tmp_path):
    snapshot = Snapshot(at=1)
    trainer = tiny_trainer(tmp_path, [plugin("FreezeEmbeddings:start_batch=1")], max_duration="3ba",
                           callbacks=[snapshot], **TINY)
    before = weights(trainer.state.model)
    trainer.fit()
    after = weights(trainer.state.model)
    assert not torch.equal(snapshot.embedding, before["transformer.wte.weight"])  # batch 1 trained it
    assert torch.equal(after["transformer.wte.weight"], snapshot.embedding)  # batches 2 and 3 did not
    assert not torch.equal(after["transformer.h.0.mlp.c_fc.weight"], before["transformer.h.0.mlp.c_fc.weight"])


def test_an_optimizer_set_through_state_optimizers_trains_at_its_own_peak_lr(tmp_path):
    baseline = train_records(tmp_path / "base", [], max_duration="3ba")
    trainer = tiny_trainer(tmp_path / "sgd", [plugin("PlainSGD:lr=0.1")], max_duration="3ba", **TINY)
    before = weights(trainer.state.model)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "sgd" / "metrics.jsonl").read_text().splitlines()]
    assert type(trainer.state.optimizer) is torch.optim.SGD and trainer.state.optimizers == (trainer.state.optimizer,)
    # the run's schedule drives it: the baseline's multipliers (its peak is 1e-3), times 0.1
    assert [r["lr"] for r in records if r["event"] == "train"] == pytest.approx([100 * r["lr"] for r in baseline])
    assert not torch.equal(weights(trainer.state.model)["lm_head.weight"], before["lm_head.weight"])


def test_state_optimizers_at_init_says_to_use_the_optimizer_factory(tmp_path):
    class WrapAtInit(composerlite.Algorithm):
        def match(self, event, state):
            return event == Event.INIT

        def apply(self, event, state, logger):
            state.optimizers = [torch.optim.SGD(state.model.parameters(), lr=0.1)]

    with pytest.raises(PluginError, match="built after INIT.*optimizer_factory"):
        tiny_trainer(tmp_path, [WrapAtInit()], **TINY)


def test_get_elapsed_duration_and_max_duration_drive_a_plugin(tmp_path):
    records = train_records(tmp_path, [plugin("ShortContextFirst:fraction=0.5,short_len=8")], max_duration="4ba")
    assert [r["seq_len"] for r in records] == [8, 8, 16, 16]
    assert [r.get("short_context/elapsed") for r in records] == [0.0, 0.25, None, None]
    assert records[0]["short_context/budget"] == "4ba"


def test_timestamp_fields_are_times_a_plugin_can_do_arithmetic_with(tmp_path):
    records = train_records(tmp_path, [plugin("ShortEveryNth:every=2,short_len=8")], max_duration="4ba")
    assert [r["seq_len"] for r in records] == [16, 8, 16, 8]
    second = records[1]
    assert second["short_every/batch"] == 1 and second["short_every/unit"] == "ba" and second["short_every/epoch"] == 0
    assert second["short_every/tokens_before"] == records[0]["tokens"]
    assert second["short_every/samples_before"] == records[0]["samples"]


def test_a_plugin_adds_to_the_loss_from_the_outputs(tmp_path):
    baseline = train_records(tmp_path / "base", [])
    records = train_records(tmp_path / "z", [plugin("ZLoss:weight=0.01")])
    # Step 1 starts from the same weights, so the loss is the baseline's plus the z term exactly.
    assert records[0]["z_loss/z"] > 0
    assert records[0]["loss"] == pytest.approx(baseline[0]["loss"] + 0.01 * records[0]["z_loss/z"], rel=1e-5)


def test_a_plugin_seeded_from_rank_zero_seed_repeats_and_changes_the_batch(tmp_path):
    baseline = train_records(tmp_path / "base", [])
    first = train_records(tmp_path / "a", [plugin("TokenNoise:p=0.25")])
    again = train_records(tmp_path / "b", [plugin("TokenNoise:p=0.25")])
    other_seed = train_records(tmp_path / "c", [plugin("TokenNoise:p=0.25")], seed=1)
    assert all(r["token_noise/replaced"] > 0 for r in first)
    assert [r["loss"] for r in first] == [r["loss"] for r in again]
    assert [r["token_noise/replaced"] for r in first] != [r["token_noise/replaced"] for r in other_seed]
    assert first[0]["loss"] != baseline[0]["loss"]


def test_a_composer_style_init_that_declares_options_is_refused_cleanly():
    with pytest.raises(ConfigError, match="fraction must be in"):
        plugin("ShortContextFirst:fraction=2")
    with pytest.raises(ConfigError, match="option 'short_len'"):
        plugin("ShortContextFirst:short_len=eight")


@pytest.mark.parametrize("event", ["batch_end", "after_dataloader"])
def test_stop_training_ends_after_the_current_batch_as_any_run_ends(tmp_path, text_file, event):
    result = composerlite.train({"model": "gpt2-tiny", "data": str(text_file), "max_duration": "6ba", "batch_size": 2,
                                 "seq_len": 16, "eval_interval": "4ba", "eval_batches": 1, "precision": "fp32",
                                 "device": "cpu", "run_dir": str(tmp_path / "run"),
                                 "algorithms": [f"{PLUGINS}:StopAfter:batches=2,event={event}"]},
                                console=Console(quiet=True))
    assert result.summary["steps"] == 2 and result.config["max_duration"] == "6ba"
    assert [(r["event"], r["step"]) for r in result.records] == [("train", 1), ("train", 2), ("eval", 2)]
    assert result.summary["eval_loss"] == result.records[-1]["eval_loss"]  # the final evaluation, at the stop
    assert result.checkpoint.endswith("ba00000002")  # the final checkpoint, at the stop
    written = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert written == result.records  # metrics.jsonl closed with every record in it


def test_setting_stop_training_as_the_earlier_flag_still_stops(tmp_path):
    class SetFlag(Callback):
        def batch_end(self, state, logger):
            state.stop_training = True

    trainer = tiny_trainer(tmp_path, max_duration="4ba", callbacks=[SetFlag()], **TINY)
    trainer.fit()
    assert trainer.state.timestamp.batch == 1 and trainer.state.stop_requested


@pytest.mark.parametrize("pair", [False, True])
def test_a_plugin_reads_and_writes_the_batch_through_composers_helpers(tmp_path, pair):
    records = train_records(tmp_path, [plugin(f"ShortRowsByKey:short_len=8,pair={pair}")], max_duration="2ba")
    assert [r["seq_len"] for r in records] == [8, 8]


def test_batch_helpers_take_keys_getters_and_pairs_and_leave_the_old_batch_alone(tmp_path):
    state = State(model=torch.nn.Linear(1, 1), max_duration=Time(1, "ba"), device=torch.device("cpu"),
                  precision="fp32", seed=0, run_dir=location(str(tmp_path)))
    ids = torch.arange(6).reshape(2, 3)
    state.batch = original = {"input_ids": ids}
    assert state.batch_get_item("input_ids") is ids
    assert state.batch_get_item(lambda batch: batch["input_ids"].shape) == (2, 3)
    state.batch_set_item("input_ids", ids + 1)
    assert torch.equal(state.batch["input_ids"], ids + 1) and original["input_ids"] is ids
    state.batch_set_item(lambda batch, value: {**batch, "input_ids": value}, ids * 2)
    pair = (lambda batch: batch["input_ids"][0], lambda batch, value: {**batch, "input_ids": value.expand(2, 3)})
    assert torch.equal(state.batch_get_item(pair), ids[0] * 2)
    state.batch_set_item(pair, ids[1])
    assert torch.equal(state.batch["input_ids"], ids[1].expand(2, 3))
    with pytest.raises(KeyError, match="the batch has no 'labels' to set; it holds 'input_ids'"):
        state.batch_set_item("labels", ids)  # as Composer's: a key the batch lacks is not added
    with pytest.raises(KeyError, match="the batch has no 'labels'"):
        state.batch_get_item("labels")


def test_batch_get_item_takes_a_list_of_keys_as_composers_batch_get_does(tmp_path):
    state = State(model=torch.nn.Linear(1, 1), max_duration=Time(1, "ba"), device=torch.device("cpu"),
                  precision="fp32", seed=0, run_dir=location(str(tmp_path)))
    ids, mask = torch.arange(6).reshape(2, 3), torch.ones(2, 3)
    state.batch = {"input_ids": ids, "attention_mask": mask}
    # Composer's batch_get: a dict cannot be indexed by a list or tuple, so each key is looked up
    # in turn and the items come back as a list, in the keys' order; a pair of callables stays a
    # (getter, setter) pair.
    got = state.batch_get_item(["attention_mask", "input_ids"])
    assert isinstance(got, list) and got[0] is mask and got[1] is ids
    assert state.batch_get_item(("input_ids",))[0] is ids
    assert state.batch_get_item([]) == []
    with pytest.raises(KeyError, match="the batch has no 'labels'"):
        state.batch_get_item(["input_ids", "labels"])


# --- a subclass forwarding **kwargs, and Composer's option names --------------------------------


def test_a_subclass_forwarding_kwargs_takes_its_own_and_its_parents_options(tmp_path):
    cls = type(plugin("LoggedSeqLenWarmup"))
    assert {"key", "duration", "min_seq_len", "max_seq_len", "step_size"} <= set(options_model(cls).model_fields)
    warmup = plugin("LoggedSeqLenWarmup:key=length,duration=0.5,min_seq_length=8,step_size=4")
    assert warmup.key == "length" and warmup.options.min_seq_len == 8 and warmup.options.duration == 0.5
    records = train_records(tmp_path, [warmup], max_duration="4ba")
    assert [r["length"] for r in records] == [r["seq_len"] for r in records] == [8, 12, 16, 16]
    with pytest.raises(ConfigError, match="unknown option 'keys'"):
        plugin("LoggedSeqLenWarmup:keys=length")
    with pytest.raises(ConfigError, match="option 'duration'"):  # the parent's Options validate its options
        plugin("LoggedSeqLenWarmup:duration=2")


def test_a_composer_recipe_ports_by_renaming_the_algorithm(tmp_path):
    # Composer: SeqLengthWarmup(duration=0.5, min_seq_length=8, max_seq_length=16, step_size=8)
    config = validated({"model": "gpt2-tiny", "algorithms": [
        {"seq_len_warmup": {"duration": 0.5, "min_seq_length": 8, "max_seq_length": 16, "step_size": 8}}]})
    warmup, = [build_algorithm(target, options) for target, options in algorithm_specs(config)]
    assert (warmup.options.min_seq_len, warmup.options.max_seq_len) == (8, 16)
    assert [r["seq_len"] for r in train_records(tmp_path, [warmup], max_duration="4ba")] == [8, 8, 16, 16]
    with pytest.raises(ConfigError, match="option 'max_seq_length'"):
        build_algorithm("seq_len_warmup", {"max_seq_length": 0})


@pytest.mark.parametrize("algorithm, options", [
    ("alibi", {"max_sequence_length": 512, "train_sequence_length_scaling": 0.25}),
    ("gated_linear_units", {"act_fn": "relu", "gated_layer_bias": False, "non_gated_layer_bias": False}),
    ("gradient_clipping", {"clipping_type": "adaptive", "clipping_threshold": 0.05}),
    ("ema", {"half_life": "50ba", "smoothing": None, "ema_start": "0.1dur", "update_interval": "1ba"}),
    ("layer_freezing", {"freeze_start": 0.5, "freeze_level": 1.0}),
    ("scale_schedule", {"ratio": 0.5}),
])
def test_composers_gpt_algorithms_options_are_ours(algorithm, options):
    """The Composer algorithms we also have take Composer's option names (seq_len_warmup's are
    above; low_precision_layernorm's `apply_at` is not, README says why)."""
    built = build_algorithm(algorithm, options)
    assert {key: getattr(built.options, key) for key in options} == options


@pytest.mark.parametrize("act_fn, expected", [
    ("relu", F.relu), (None, lambda x: F.gelu(x, approximate="tanh")), (F.silu, F.silu)])
def test_gated_linear_units_act_fn_is_a_name_none_for_the_mlps_own_or_a_callable(tmp_path, act_fn, expected):
    trainer = tiny_trainer(tmp_path, [GatedLinearUnits(act_fn=act_fn)], **TINY)
    act, x = trainer.state.model.transformer.h[0].mlp.act, torch.linspace(-3, 3, 7)
    torch.testing.assert_close(act(x), expected(x))
    assert isinstance(act, torch.nn.Module) == (act_fn is None)  # None: the MLP's own module, GPT-2's gelu_new
    trainer.fit()  # checkpoints hold plain data: a callable is recorded by its name
    saved = torch.load(trainer.last_checkpoint.child("state.pt").path, weights_only=True)
    assert saved["algorithms"][0]["options"]["act_fn"] == ("torch.nn.functional.silu" if callable(act_fn) else act_fn)


def test_gated_linear_units_reads_its_earlier_activation_name_and_refuses_unknown_ones():
    assert GatedLinearUnits(activation="silu").options.act_fn == "silu"
    with pytest.raises(ConfigError, match="option 'act_fn': 'warp' is not one of gelu_tanh, gelu, silu, relu"):
        build_algorithm("gated_linear_units", {"act_fn": "warp"})


def test_a_callable_in_a_run_config_is_refused_before_anything_is_written(tmp_path, text_file):
    run_dir = tmp_path / "run"  # config.yaml could not record it, nor a resume or `composerlite eval` rebuild it
    with pytest.raises(ConfigError, match="invalid algorithms: holds <function silu .*, which config.yaml cannot record"):
        composerlite.train({"model": "gpt2-tiny", "data": str(text_file), "max_duration": "1ba", "run_dir": str(run_dir),
                            "algorithms": [{"gated_linear_units": {"act_fn": F.silu}}]})
    assert not run_dir.exists()


@pytest.mark.parametrize("gated, non_gated, output", [(False, False, True), (True, False, False)])
def test_gated_linear_units_biases_are_per_projection(tmp_path, gated, non_gated, output):
    algorithm = build_algorithm("gated_linear_units", {"gated_layer_bias": gated, "non_gated_layer_bias": non_gated,
                                                       "output_layer_bias": output})
    mlp = tiny_trainer(tmp_path, [algorithm], **TINY).state.model.transformer.h[0].mlp
    assert (mlp.gate.bias is not None, mlp.up.bias is not None, mlp.down.bias is not None) == (gated, non_gated, output)


# --- the run directory, local or fsspec -----------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "memory"])
def test_the_recorder_writes_into_the_run_directory_wherever_it_is(tmp_path, text_file, where):
    run_dir = str(tmp_path / "run") if where == "local" else f"memory://composerlite-recorder-{tmp_path.name}/run"
    composerlite.train({"model": "gpt2-tiny", "data": str(text_file), "max_duration": "2ba", "batch_size": 2,
                        "seq_len": 16, "eval_batches": 1, "precision": "fp32", "device": "cpu", "run_dir": run_dir,
                        "algorithms": [f"{RECORDER}:Recorder:filename=seen.txt"]},
                       console=Console(quiet=True))
    folder = location(run_dir)
    events = folder.child("seen.txt").read_bytes().decode().split()
    assert events[:4] == ["init", "before_load", "after_load", "fit_start"] and events[-1] == "fit_end"
    if where == "local":
        assert (tmp_path / "run" / "seen.txt").is_file()
    else:
        folder.remove()
