"""Refusals a fault soak found (issue 13): each is one line on stderr, exit 2 for bad input or 1 for
a runtime failure (a plugin's exception, a store that is down), and nothing is written before it."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import pytest
import torch

from composerlite import cli
from composerlite.run.checkpoint import MANIFEST_FILE, MODEL_FILE, STATE_FILE

PLUGINS = '''
from composerlite import Algorithm, Event

class BrokenInit(Algorithm):
    name = "broken_init"
    def __init__(self):
        raise ZeroDivisionError("division by zero in the plugin's constructor")
    def match(self, event, state): return False

class BrokenAtInit(Algorithm):
    name = "broken_at_init"
    def match(self, event, state): return event is Event.INIT
    def apply(self, event, state, logger): raise KeyError("no_such_layer")
'''


def args(text_file, run_dir, *extra, duration="2ba"):
    return ["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", duration,
            "--batch-size", "4", "--seq-len", "32", "--device", "cpu", "--precision", "fp32",
            "--eval-interval", "1dur", "--eval-batches", "1", "--run-dir", str(run_dir), *extra]


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, argv, code, *expected) -> str:
    """Runs the CLI and checks for exactly one stderr line, no traceback, the exit code and the fragments."""
    capsys.readouterr()
    assert cli.main(argv) == code
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Traceback" not in error, error
    assert error.startswith("composerlite: error:"), error
    for fragment in expected:
        assert fragment in error, error
    return error


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 2-step gpt2-tiny run (checkpoint ba00000002), shared: tests copy it before damaging it."""
    from conftest import SAMPLE_TEXT

    folder = tmp_path_factory.mktemp("finished")
    text_file = folder / "corpus.txt"
    text_file.write_text(SAMPLE_TEXT)
    with pytest.MonkeyPatch.context() as patch:  # before the per-test cache isolation of conftest
        patch.setenv("COMPOSERLITE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert cli.main(args(text_file, folder / "run")) == 0
    return folder / "run"


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(finished, tmp_path / "copy"))


def rewrite_manifest(folder: Path, edit=None) -> None:
    """Re-hash the files into the manifest (damage done before the save hashed them), then `edit` it."""
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    for name in (MODEL_FILE, STATE_FILE):
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    if edit is not None:
        edit(manifest)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def flip_pickle_byte(path: Path) -> None:
    """Flip a byte near the end of the pickle inside torch.save's zip (flipped tensor bytes would
    load fine: only the manifest's hash, which here agrees with the damage, could tell)."""
    data = bytearray(path.read_bytes())
    pickle_entry = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0]  # data.pkl comes first
    header = pickle_entry.header_offset  # a zip local header: 30 bytes, then the name and the extra field
    start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little") + int.from_bytes(data[header + 28 : header + 30], "little")
    data[start + pickle_entry.file_size - 20] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped bytes in state.pt": (lambda f: flip_pickle_byte(f / STATE_FILE), None, "state.pt is unreadable"),
    "truncated model.safetensors": (lambda f: (f / MODEL_FILE).write_bytes((f / MODEL_FILE).read_bytes()[:5000]), None,
                                    "model.safetensors is unreadable"),
    "a list saved as state.pt": (lambda f: torch.save([1, 2, 3], f / STATE_FILE), None, "holds a list"),
    "entry without bytes": (None, lambda m: m["files"][STATE_FILE].pop("bytes"), "lacks 'bytes'"),
    "manifest without step": (None, lambda m: m.pop("step"), "no valid 'step'"),
    "files as a string": (None, lambda m: m.__setitem__("files", "model.safetensors"), "'files' is not a mapping"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_the_manifest_agrees_with_is_refused_in_one_line(run_copy, text_file, tmp_path, capsys, damage):
    change_files, edit_manifest, expected = DAMAGE[damage]
    folder = run_copy / "checkpoints" / "ba00000002"
    if change_files:
        change_files(folder)
    rewrite_manifest(folder, edit_manifest)
    new_run = tmp_path / "branch"
    refused(capsys, args(text_file, new_run, "--resume", str(folder), duration="4ba"), 2, "ba00000002", expected)
    assert not new_run.exists()
    # `eval` refuses it too (it exited 0 on a manifest without a step), and `--autoresume` will not
    # start over on top of a run whose only checkpoint is damaged.
    refused(capsys, ["eval", str(folder), "--max-batches", "1"], 2, "ba00000002")
    before = tree_digest(run_copy)
    refused(capsys, args(text_file, run_copy, "--autoresume", duration="4ba"), 2, "every checkpoint", "damaged")
    assert tree_digest(run_copy) == before


def test_bad_sizes_and_data_are_refused_before_the_run_dir_exists(tmp_path, text_file, capsys):
    run_dir = tmp_path / "run"
    refused(capsys, args(text_file, run_dir, duration="1e400ba"), 2, "max_duration", "too large")
    longer = tmp_path / "longer.txt"
    longer.write_text(text_file.read_text() * 20)  # enough held-out tokens for one 2048-token sequence
    refused(capsys, args(longer, run_dir, "--seq-len", "2048", "--batch-size", "1"), 2, "--seq-len 2048", "1024")
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet

    numbers = tmp_path / "numbers.parquet"
    pyarrow.parquet.write_table(pyarrow.table({"text": list(range(5000))}), numbers)
    refused(capsys, args(numbers, run_dir), 2, "numbers.parquet", "'text' column holds int64")
    assert not run_dir.exists()


def test_a_failing_plugin_is_named_in_one_line_and_debug_shows_its_traceback(tmp_path, text_file, capsys):
    plugins = tmp_path / "plugins.py"
    plugins.write_text(PLUGINS)
    run_dir = tmp_path / "run"
    refused(capsys, args(text_file, run_dir, "--algo", f"{plugins}:BrokenInit"), 1,
            "BrokenInit' failed in __init__: ZeroDivisionError", "--debug")
    refused(capsys, args(text_file, run_dir, "--algo", f"{plugins}:BrokenAtInit"), 1,
            "algorithm 'broken_at_init' failed at INIT: KeyError", "--debug")
    assert not run_dir.exists()
    assert cli.main(args(text_file, run_dir, "--algo", f"{plugins}:BrokenAtInit", "--debug")) == 1
    error = capsys.readouterr().err
    assert "Traceback" in error and 'raise KeyError("no_such_layer")' in error
    assert error.strip().splitlines()[-1].startswith("composerlite: error: algorithm 'broken_at_init'")
    assert not run_dir.exists()


def test_runs_that_would_overwrite_another_are_refused_before_writing(run_copy, tmp_path, text_file, capsys):
    other = tmp_path / "other"
    assert cli.main(args(text_file, other)) == 0
    before = tree_digest(run_copy)
    # Branching another run's checkpoint into a run directory that holds a run (it exited 0 and
    # overwrote that run's metrics, config and checkpoints).
    refused(capsys, args(text_file, run_copy, "--resume", str(other / "checkpoints" / "ba00000002"), duration="4ba"),
            2, "already holds a run", "new --run-dir")
    # A changed algorithm list (config.yaml was rewritten before this refusal).
    refused(capsys, args(text_file, run_copy, "--autoresume", "--algo", "gradient_clipping", duration="4ba"),
            2, "algorithms")
    refused(capsys, args(text_file, run_copy, "--autoresume", "--algo", "alibi", "--algo", "alibi", duration="4ba"),
            2, "listed twice")
    assert tree_digest(run_copy) == before
    fresh = tmp_path / "fresh"
    refused(capsys, args(text_file, fresh, "--algo", "alibi", "--algo", "alibi"), 2, "listed twice")
    assert not fresh.exists()


def test_a_run_dir_that_is_a_file_is_refused_at_once(tmp_path, text_file, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    started = time.perf_counter()
    refused(capsys, args(text_file, blocker), 2, "is a file")
    assert time.perf_counter() - started < 20  # no retries: each used to add ~3 s of "retrying" lines
    assert blocker.read_text() == "not a folder"


def test_store_down_at_launch_is_one_line_exit_1(s3_bucket, text_file, monkeypatch, capsys):
    import fsspec
    import socket

    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries would only add time here
    fsspec.filesystem("s3").clear_instance_cache()
    capsys.readouterr()
    try:
        assert cli.main(args(text_file, f"{s3_bucket}/run")) == 1
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
    *retries, error = capsys.readouterr().err.strip().splitlines()
    assert all("retrying in" in line for line in retries), retries  # the transient error was retried, then
    assert error.startswith("composerlite: error: checking s3://") and "EndpointConnectionError" in error, error


def test_store_down_mid_save_names_the_intact_checkpoint(s3_bucket, text_file, monkeypatch, capsys):
    from botocore.exceptions import EndpointConnectionError

    from composerlite.system.storage import location

    run_dir = f"{s3_bucket}/run"
    fs = location(run_dir).fs
    real_pipe, saves = fs.pipe_file, []

    def down_after_first_checkpoint(path, *rest, **kwargs):
        if MANIFEST_FILE in path:
            saves.append(path)
        elif saves:  # the first checkpoint is complete: the store goes away
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1/")
        return real_pipe(path, *rest, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", down_after_first_checkpoint)  # the instance s3fs hands every caller
    capsys.readouterr()
    assert cli.main(args(text_file, run_dir, "--save-interval", "1ba")) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(error)
    assert error[-1].startswith("composerlite: could not save a checkpoint at step 2"), error
    assert "EndpointConnectionError" in error[-1] and "ba00000001 is intact" in error[-1]
