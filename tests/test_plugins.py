"""The plugin system: file plugins, entry-point plugins, options from the CLI and YAML recipes,
one-line errors, the documented Recorder through the real CLI, the Composer port, and surgery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.nn as nn
from tinyrun import tiny_trainer

from composerlite import cli
from composerlite.commands.listing import algorithm_rows
from composerlite.core.surgery import count_modules, replace_modules, replace_modules_by_type
from composerlite.errors import ConfigError
from composerlite.registry import build_algorithm, build_from_spec, options_model, registered, registered_algorithms, split_spec
from composerlite.run.settings import load_config
from composerlite.run.train import algorithm_specs

ROOT = Path(__file__).resolve().parents[1]
RECORDER = ROOT / "examples" / "recorder.py"
PORT = ROOT / "examples" / "composer_port.py"

# The event order docs/writing-an-algorithm.md promises for a 2-step run, eval after step 2,
# one microbatch per batch.
SETUP = ["init", "before_load", "after_load", "fit_start", "epoch_start"]
STEP = ["before_dataloader", "after_dataloader", "batch_start", "before_train_batch",
        "before_forward", "after_forward", "before_loss", "after_loss", "before_backward", "after_backward",
        "after_train_batch", "batch_end", "batch_checkpoint"]
EVAL = ["eval_start", "eval_batch_start", "eval_before_forward", "eval_after_forward", "eval_batch_end", "eval_end"]


def composerlite(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "composerlite", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def tiny_run_args(run_dir: Path, data: Path) -> list[str]:
    return ["run", "--model", "gpt2-tiny", "--data", str(data), "--max-duration", "2ba", "--batch-size", "2",
            "--seq-len", "16", "--eval-interval", "2ba", "--eval-batches", "1", "--precision", "fp32",
            "--device", "cpu", "--run-dir", str(run_dir)]


# --- through the real command line ---------------------------------------------------------------


def test_recorder_from_the_docs_runs_through_the_cli_and_sees_the_documented_order(tmp_path, text_file):
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(RECORDER.read_text())  # a user's copy, outside the package, by relative path
    result = composerlite(*tiny_run_args(tmp_path / "run", text_file), "--algo", "./my_plugin.py:Recorder", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    events = (tmp_path / "run" / "events.txt").read_text().split()
    assert events[: len(SETUP)] == SETUP
    first_step = events[len(SETUP): len(SETUP) + len(STEP)]
    assert first_step == STEP
    assert events.count("batch_end") == 2 and events.count("before_forward") == 2
    assert events[-len(EVAL) - 1:] == EVAL + ["fit_end"] or events[-1] == "fit_end"
    assert EVAL == events[events.index("eval_start"): events.index("eval_start") + len(EVAL)]
    assert events.index("eval_start") > events.index("batch_end", events.index("batch_end") + 1)


def test_bad_options_exit_2_with_one_line_naming_algorithm_and_option(tmp_path, text_file, capsys):
    code = cli.main([*tiny_run_args(tmp_path / "run", text_file), "--algo", "gradient_clipping:clipping_type=l3"])
    line = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in line and "Traceback" not in line
    assert "gradient_clipping" in line and "clipping_type" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_cli_errors_for_plugins_are_one_line_exit_2(tmp_path, capsys):
    broken = tmp_path / "broken.py"
    broken.write_text("from composerlite import Algorithm\n\nclass Oops(Algorithm:\n    pass\n")
    crashing = tmp_path / "crashing.py"
    crashing.write_text("import math\n\nraise RuntimeError('no GPU here')\n")
    cases = {
        "ema:bogus=1": ["ema", "unknown option 'bogus'", "half_life"],
        "ema:half_life=soon": ["ema", "half_life"],
        "ema:smoothing": ["ema", "not key=value"],
        "nosuch": ["unknown algorithm 'nosuch'", "gradient_clipping"],
        f"{broken}:Oops": ["broken.py", "line 3", "SyntaxError"],
        f"{crashing}:X": ["crashing.py", "line 3", "RuntimeError: no GPU here"],
        f"{RECORDER}": ["needs a class", "recorder.py:ClassName"],
        f"{RECORDER}:Missing": ["defines no 'Missing'"],
        f"{RECORDER}:RecorderOptions": ["not a composerlite Algorithm"],
        f"{PORT}:TruncateSequences:max_seq_len=0": ["TruncateSequences", "max_seq_len must be at least 1"],
    }
    for spec, fragments in cases.items():
        code = cli.main(["run", "--model", "gpt2-tiny", "--algo", spec, "--run-dir", str(tmp_path / "never")])
        err = capsys.readouterr().err.strip()
        assert code == 2, spec
        assert err.count("\n") == 0 and err.startswith("composerlite: error:"), err
        for fragment in fragments:
            assert fragment in err, (spec, err)


# --- specs, recipes and options ----------------------------------------------------------------


def test_split_spec_forms():
    assert split_spec("ema") == ("ema", {})
    assert split_spec("ema:half_life=100ba, ema_start=0.1dur") == ("ema", {"half_life": "100ba", "ema_start": "0.1dur"})
    assert split_spec("gradient_clipping:clipping_threshold=0.5") == ("gradient_clipping", {"clipping_threshold": 0.5})
    assert split_spec("./a/b.py:Cls:x=1,y=true,z=null") == ("./a/b.py:Cls", {"x": 1, "y": True, "z": None})
    assert split_spec("./a/b.py:Cls") == ("./a/b.py:Cls", {})
    assert split_spec("fused_kernels:exclude=[compile, pad_vocab],chunk_elements=4096") == (
        "fused_kernels", {"exclude": ["compile", "pad_vocab"], "chunk_elements": 4096})


def test_unparsable_option_value_is_a_one_line_usage_error():
    with pytest.raises(ConfigError, match=r"option exclude='\[compile' is not a valid value"):
        split_spec("fused_kernels:exclude=[compile")


def test_yaml_recipe_sets_algorithm_options_in_all_three_forms(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(f"""\
        model: gpt2-tiny
        algorithms:
          - layer_freezing
          - "gradient_clipping:clipping_type=adaptive,clipping_threshold=0.05"
          - ema: {{half_life: 50ba}}
          - {RECORDER}:Recorder:filename=seen.txt
        """))
    built = [build_algorithm(target, options) for target, options in algorithm_specs(load_config(recipe, {}))]
    assert [a.name for a in built] == ["layer_freezing", "gradient_clipping", "ema", "recorder"]
    assert built[1].options.clipping_type == "adaptive" and built[1].options.clipping_threshold == 0.05
    assert built[2].options.half_life == "50ba"
    assert built[3].options.filename == "seen.txt"


def test_a_plugin_file_loads_once_and_relative_paths_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(RECORDER.parent)
    first = build_from_spec("./recorder.py:Recorder")
    second = build_from_spec(f"{RECORDER}:Recorder:filename=x.txt")
    assert type(first) is type(second)  # one module per file, so one class


def test_options_model_is_read_from_a_composer_style_init():
    cls = type(build_from_spec(f"{PORT}:TruncateSequences"))
    model = options_model(cls)
    assert list(model.model_fields) == ["max_seq_len"] and model.model_fields["max_seq_len"].default == 64
    assert build_from_spec(f"{PORT}:TruncateSequences:max_seq_len=8").max_seq_len == 8
    with pytest.raises(ConfigError, match="option 'max_seq_len'"):
        build_from_spec(f"{PORT}:TruncateSequences:max_seq_len=eight")


def test_unknown_keys_are_refused_even_when_the_plugins_model_would_ignore_them(tmp_path):
    lax = tmp_path / "lax.py"
    lax.write_text(textwrap.dedent("""\
        import pydantic
        from composerlite import Algorithm

        class LaxOptions(pydantic.BaseModel):  # no extra="forbid"
            rate: float = 0.1

        class Lax(Algorithm):
            Options = LaxOptions
            def __init__(self, **options):
                self.options = LaxOptions(**options)
        """))
    with pytest.raises(ConfigError, match=r"unknown option 'rat' \(options: rate\)"):
        build_from_spec(f"{lax}:Lax:rat=0.2")


def test_list_shows_every_algorithm_with_description_and_options():
    rows = {name: (summary, options) for name, summary, options in algorithm_rows()}
    assert set(rows) == set(registered_algorithms())
    for name, (summary, options) in rows.items():
        assert summary and not summary.startswith("unavailable"), name
    assert "clipping_type='norm'" in rows["gradient_clipping"][1] and "AGC" in rows["gradient_clipping"][1]
    assert "half_life='1000ba'" in rows["ema"][1]


# --- third-party packages through the entry-point group ----------------------------------------


def installed_plugin(site: Path, name: str = "toy_plugin", algorithm_name: str = "toy") -> Path:
    """What `pip install` leaves behind: a module and a dist-info with the entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{name}.py").write_text(textwrap.dedent(f"""\
        from composerlite import Algorithm, Event

        class Toy(Algorithm):
            \"\"\"A third-party algorithm that counts batches.\"\"\"
            name = "{algorithm_name}"

            def __init__(self, every: int = 1):
                self.every, self.batches = every, 0

            def match(self, event, state):
                return event is Event.BATCH_END

            def apply(self, event, state, logger):
                self.batches += 1
                logger.log_metrics({{"toy/batches": self.batches}})
        """))
    dist = site / f"{name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[composerlite.algorithms]\n{algorithm_name} = {name}:Toy\n")
    return site


def test_an_installed_package_registers_through_the_entry_point_group(tmp_path, text_file):
    site = installed_plugin(tmp_path / "site")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = composerlite(*tiny_run_args(tmp_path / "run", text_file), "--algo", "toy:every=2", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["toy/batches"] for r in records if r["event"] == "train"] == [1, 2]


def test_two_packages_claiming_one_name_are_refused(tmp_path, monkeypatch):
    installed_plugin(tmp_path / "a", "toy_a", "toy")
    installed_plugin(tmp_path / "b", "toy_b", "toy")
    for site in ("a", "b"):
        monkeypatch.syspath_prepend(str(tmp_path / site))
    registered.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"'toy' is registered by several installed packages \(toy_a:Toy, toy_b:Toy\)"):
            build_algorithm("toy")
    finally:
        monkeypatch.undo()
        registered.cache_clear()


# --- the Composer port -------------------------------------------------------------------------


def test_the_composer_port_changes_only_its_imports_and_trains(tmp_path):
    source = PORT.read_text()
    code = [line for line in source.splitlines() if line.startswith(("from ", "import "))]
    assert code == ["from composerlite import Algorithm, Event, Logger, State  # was: composer.core + composer.loggers"]
    port = build_from_spec(f"{PORT}:TruncateSequences:max_seq_len=8")
    tiny_trainer(tmp_path, [port], max_duration="2ba", vocab_size=512, evaluate=False).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["seq_len"] for r in records if r["event"] == "train"] == [8, 8]


# --- surgery -----------------------------------------------------------------------------------


def toy_model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 4)), nn.ModuleList([nn.Linear(4, 2)]))


def test_replace_by_type_counts_and_replaces_nested_and_listed_modules():
    model = toy_model()
    replaced = replace_modules_by_type(model, {nn.Linear: lambda module, name: nn.Identity()})
    assert list(replaced) == ["0", "1.1", "2.0"]
    assert count_modules(model, nn.Linear) == 0 and count_modules(model, nn.Identity) == 3


def test_a_replaced_module_is_not_revisited_and_a_policy_may_keep_modules():
    model = toy_model()
    calls = []

    def policy(name, module):
        calls.append(name)
        if name == "1":
            return nn.Sequential(nn.Linear(4, 4))  # its inside must not be visited again
        return None

    assert list(replace_modules(model, policy)) == ["1"]
    assert "1.0" not in calls and "1.1" not in calls and calls.count("1") == 1


def test_surgery_that_matches_nothing_raises_unless_allowed():
    model = toy_model()
    with pytest.raises(ConfigError, match="matched no module of Sequential for Conv1d"):
        replace_modules_by_type(model, {nn.Conv1d: lambda module, name: nn.Identity()})
    assert replace_modules_by_type(model, {nn.Conv1d: lambda module, name: nn.Identity()}, allow_zero=True) == {}
    with pytest.raises(TypeError, match="not a Module"):
        replace_modules(model, lambda name, module: "oops")
