"""Two processes on CPU with gloo, launched as torchrun would (RANK/WORLD_SIZE/MASTER_* env): the same
global batch follows the one-process loss curve; metrics and checkpoints are written once; DDP resumes
from its checkpoint; an FSDP2 run's checkpoint is sharded (DCP, a file per rank), resumes in two
processes and in one, exports to one safetensors file, and is refused when damaged."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.multiprocessing as mp

from composerlite import cli
from composerlite.run.checkpoint import MANIFEST_FILE, MODEL_FILE, SHARDED_FORMAT_VERSION, read_checkpoint
from composerlite.run.run_directory import find_checkpoints
from composerlite.system.storage import location

WORLD = 2
TERM_AT = '''
import os, signal
from composerlite import Algorithm, Event
from composerlite.system import distributed

class TermAt(Algorithm):
    """SIGTERMs rank 1 after the first batch (a preemption notice that reached one process)."""
    name = "term_at"
    def match(self, event, state): return event is Event.BATCH_END and state.timestamp.batch == 1
    def apply(self, event, state, logger):
        if distributed.rank() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
'''


def args(text_file, run_dir, *extra, duration="4ba"):
    return ["run", "--model", "gpt2-tiny", "--data", str(text_file), "--max-duration", duration,
            "--batch-size", "4", "--seq-len", "32", "--device", "cpu", "--precision", "fp32", "--dropout", "0",
            "--eval-interval", "2ba", "--eval-batches", "1", "--save-interval", "2ba", "--run-dir", str(run_dir), *extra]


def _worker(rank: int, port: int, argvs: list[list[str]], results: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    torch.set_num_threads(1)
    from composerlite.system import distributed

    with open(Path(results, f"rank{rank}.err"), "w") as errors, contextlib.redirect_stderr(errors):
        codes = [cli.main(argv) for argv in argvs]
    distributed.shutdown()
    Path(results, f"rank{rank}.json").write_text(json.dumps(codes))


def run_two_processes(tmp_path: Path, argvs: list[list[str]], codes: list[int] | None = None) -> list[str]:
    """Runs each argv on both ranks in turn, checks the exit codes (default: all 0); returns each rank's stderr."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(port, argvs, str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == (codes or [0] * len(argvs))
    return [(tmp_path / f"rank{rank}.err").read_text() for rank in range(WORLD)]


def curve(run_dir: Path, event="train", key="loss") -> list[tuple[int, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r[key]) for r in map(json.loads, lines) if r["event"] == event]


def close(a, b, tolerance=2e-5):
    return [s for s, _ in a] == [s for s, _ in b] and all(abs(x - y) <= tolerance * max(1.0, abs(x)) for (_, x), (_, y) in zip(a, b))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3_endpoint) -> dict[str, Path | str]:
    """One process, then on two ranks: DDP, DDP resumed, FSDP (locally and on an S3 store), FSDP
    resumed in two processes from the S3 run's sharded checkpoint, and a run SIGTERMed on rank 1:
    their run directories, and each rank's stderr."""
    import fsspec
    from conftest import SAMPLE_TEXT

    root = tmp_path_factory.mktemp("distributed")
    text_file = root / "corpus.txt"
    text_file.write_text(SAMPLE_TEXT)
    dirs = {name: root / name for name in ("single", "ddp", "ddp2", "fsdp", "fsdp2", "stopped")}
    stop = root / "stop.py"
    stop.write_text(TERM_AT)
    with pytest.MonkeyPatch.context() as patch:  # before the per-test cache isolation of conftest
        patch.setenv("COMPOSERLITE_CACHE", str(root / "cache"))
        for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}.items():
            patch.setenv(key, value)  # the spawned ranks inherit it
        fsspec.filesystem("s3", skip_instance_cache=True).mkdir("distributed")
        s3_run = "s3://distributed/fsdp"
        assert cli.main(args(text_file, dirs["single"], duration="6ba")) == 0
        errors = run_two_processes(root, [
            args(text_file, dirs["ddp"], duration="6ba"),
            # Same budget (the LR schedule depends on it), continued from step 4 of the run above.
            args(text_file, dirs["ddp2"], "--resume", str(dirs["ddp"] / "checkpoints" / "ba00000004"), duration="6ba"),
            args(text_file, dirs["fsdp"], "--parallel", "fsdp", duration="6ba"),
            args(text_file, s3_run, "--parallel", "fsdp", duration="6ba"),
            args(text_file, dirs["fsdp2"], "--parallel", "fsdp", "--resume", f"{s3_run}/checkpoints/ba00000004", duration="6ba"),
            args(text_file, dirs["stopped"], "--algo", f"{stop}:TermAt", duration="6ba"),
        ], codes=[0, 0, 0, 0, 0, 128 + signal.SIGTERM])
        s3_records = location(s3_run).child("metrics.jsonl").read_bytes().decode()
        s3_objects = location(s3_run).fs.find("distributed/fsdp")
    return {**dirs, "text_file": text_file, "errors": errors, "s3_records": s3_records, "s3_objects": s3_objects}


def test_two_processes_match_one_and_resume(runs):
    single, ddp, ddp_resumed, stopped = runs["single"], runs["ddp"], runs["ddp2"], runs["stopped"]
    # A SIGTERM on rank 1 alone stops both ranks at the same step; each names the shared checkpoint
    # (rank 1 said "checkpoint saved in None").
    for rank_errors in runs["errors"]:
        assert f"stopped by SIGTERM at step 1; checkpoint saved in {stopped / 'checkpoints' / 'ba00000001'}" in rank_errors
    assert [f.name for f in find_checkpoints(location(str(stopped)))] == ["ba00000001"]
    reference = curve(single)
    assert close(curve(ddp), reference), (curve(ddp), reference)
    assert close(curve(ddp, "eval", "eval_loss"), curve(single, "eval", "eval_loss"))
    train = [r for r in map(json.loads, (ddp / "metrics.jsonl").read_text().splitlines()) if r["event"] == "train"]
    assert [r["tokens"] for r in train] == [step * 4 * 32 for step in range(1, 7)]  # global counts, written once
    assert [f.name for f in find_checkpoints(location(str(ddp)))] == ["ba00000002", "ba00000004", "ba00000006"]
    assert close(curve(ddp_resumed), reference[4:])
    assert close(curve(runs["fsdp"]), reference)


def test_fsdp_checkpoints_are_sharded_by_every_rank_and_resume_in_any_number_of_processes(runs, tmp_path):
    fsdp, checkpoint = runs["fsdp"], runs["fsdp"] / "checkpoints" / "ba00000004"
    manifest = json.loads((checkpoint / MANIFEST_FILE).read_text())
    # Each rank wrote its own shard file (DCP), rank 0 the index, state.pt and the manifest over all.
    assert (manifest["format"], manifest["world_size"]) == (SHARDED_FORMAT_VERSION, 2)
    assert sorted(manifest["files"]) == ["shards/.metadata", "shards/__0_0.distcp", "shards/__1_0.distcp", "state.pt"]
    assert not (checkpoint / MODEL_FILE).exists()
    # The same run on an S3 store: the same records, bit for bit; every rank's shard there, no temporary.
    assert [(r["event"], r["step"], r.get("loss"), r.get("eval_loss")) for r in map(json.loads, runs["s3_records"].splitlines())] \
        == [(r["event"], r["step"], r.get("loss"), r.get("eval_loss")) for r in map(json.loads, (fsdp / "metrics.jsonl").read_text().splitlines())]
    assert "distributed/fsdp/checkpoints/ba00000004/shards/__1_0.distcp" in runs["s3_objects"]
    assert not [path for path in runs["s3_objects"] if ".tmp-" in path]
    # Two processes continue it (from the store) bit for bit; one process continues it (a different summation order).
    assert curve(runs["fsdp2"]) == curve(fsdp)[4:] and curve(runs["fsdp2"], "eval", "eval_loss") == curve(fsdp, "eval", "eval_loss")[2:]
    one = tmp_path / "one"
    assert cli.main(args(runs["text_file"], one, "--resume", str(checkpoint), duration="6ba")) == 0
    assert close(curve(one), curve(runs["single"])[4:])

    # Assembled in one process: export writes one safetensors file with the full weights, head tied.
    weights, _ = read_checkpoint(location(str(checkpoint)))
    assert weights["lm_head.weight"] is weights["transformer.wte.weight"]
    assert cli.main(["export", str(checkpoint), "--to", "hf", str(tmp_path / "hf")]) == 0
    assert sorted(path.name for path in (tmp_path / "hf").glob("*.safetensors")) == ["model.safetensors"]
    exported = safetensors.torch.load_file(tmp_path / "hf" / "model.safetensors")
    assert exported.keys() == weights.keys() - {"lm_head.weight"}  # transformers stores the tied head once
    assert all(torch.equal(exported[key], weights[key]) for key in exported)


def test_damaged_sharded_checkpoints_are_refused_without_running_code(runs, tmp_path, capsys):
    pwned = tmp_path / "pwned"

    class Payload:  # what a crafted index could make torch's own DCP reader do
        def __reduce__(self):
            return os.mkdir, (str(pwned),)

    def rehashed(folder, name, data):  # damage done before hashing: the manifest agrees with it
        (folder / name).write_bytes(data)
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))

    def rename_in_manifest(folder, old, new):
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        manifest["files"][new] = manifest["files"].pop(old)
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))

    shard = "shards/__1_0.distcp"
    cases = {
        "truncated": (lambda f: (f / shard).write_bytes((f / shard).read_bytes()[:-100]), f"{shard} is truncated"),
        "missing": (lambda f: (f / shard).unlink(), f"missing {shard}"),
        "index that runs code": (lambda f: rehashed(f, "shards/.metadata", pickle.dumps(Payload())), "refusing to unpickle"),
        # The first tensor record's header zeroed (raw float bytes would decode, as in a safetensors file).
        "damaged shard header": (lambda f: rehashed(f, shard, bytes(10) + (f / shard).read_bytes()[10:]), "shards are unreadable"),
        "a file outside the folder": (lambda f: rename_in_manifest(f, shard, "../../metrics.jsonl"), "not a file of a sharded checkpoint"),
    }
    for case, (damage, message) in cases.items():
        folder = tmp_path / case.replace(" ", "-") / "checkpoints" / "ba00000004"
        shutil.copytree(runs["fsdp"] / "checkpoints" / "ba00000004", folder)
        damage(folder)
        run_dir = tmp_path / f"resumed-{case.replace(' ', '-')}"
        capsys.readouterr()
        assert cli.main(args(runs["text_file"], run_dir, "--resume", str(folder), duration="6ba")) == 2, case
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and message in error and str(folder) in error, (case, error)
        assert not run_dir.exists() and not pwned.exists(), case
