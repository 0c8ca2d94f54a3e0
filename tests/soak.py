"""Fault soak: SIGKILL `composerlite run --autoresume` at random moments (startup, training, evaluation,
saves, loads), relaunch the same command after each kill, and check the finished run against an
uninterrupted one: the same metrics records bit for bit (losses, LRs, evaluations), none duplicated
or lost, the same valid checkpoints, and no temporary or unfinished files left in the run directory.

    python tests/soak.py --kills 25                     # the long soak, on demand (local run directory)
    python tests/soak.py --kills 25 --store s3          # the same on an S3 store (a moto server on loopback)

`tests/test_soak.py` runs a few kills of each in the suite. The moments come from `--seed`; a failure
names it, so it can be replayed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from composerlite.run.checkpoint import MANIFEST_FILE, read_checkpoint
from composerlite.run.run_directory import find_checkpoints
from composerlite.system.storage import TEMPORARY_RE, location

RUN = ["--model", "gpt2-tiny", "--max-duration", "8ba", "--batch-size", "4", "--seq-len", "32", "--device", "cpu",
       "--precision", "fp32", "--dropout", "0.1", "--eval-interval", "3ba", "--eval-batches", "1", "--save-interval", "2ba"]
# The fields that must match the uninterrupted run exactly (times and speeds differ from run to run).
COMPARED = ("event", "step", "epoch", "tokens", "samples", "seq_len", "loss", "lr", "eval_loss", "eval_ppl", "skipped_step")
TEXT = "\n\n".join(f"Chapter {i}. The quick brown fox jumps over the lazy dog number {i}, and the patient "
                   "reader counts every word while the model learns to predict the next one." for i in range(400))


def command(data: Path, run_dir: str) -> list[str]:
    return [sys.executable, "-m", "composerlite", "run", *RUN, "--data", str(data), "--run-dir", run_dir, "--autoresume"]


def run_to_end(data: Path, run_dir: str, env: dict[str, str]) -> float:
    """Runs the command until it exits; returns its wall-clock seconds."""
    started = time.perf_counter()
    result = subprocess.run(command(data, run_dir), env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise AssertionError(f"run exited {result.returncode}:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def kill_at_random_moments(data: Path, run_dir: str, env: dict[str, str], kills: int, full_run_s: float,
                           rng: random.Random) -> int:
    """Launches the command `kills` times, each SIGKILLed after a random delay of up to one full
    run's time (a launch that finishes first is simply relaunched); returns how many were killed."""
    killed = 0
    for _ in range(kills):
        process = subprocess.Popen(command(data, run_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            process.wait(timeout=rng.uniform(0.05, 1.0) * full_run_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            killed += 1
        _, stderr = process.communicate()
        if process.returncode not in (0, -signal.SIGKILL):
            raise AssertionError(f"a relaunch exited {process.returncode}:\n{stderr.decode()[-3000:]}")
    return killed


def records(run_dir: str) -> list[dict]:
    text = location(run_dir).child("metrics.jsonl").read_bytes().decode()
    return [{key: record[key] for key in COMPARED if key in record} for record in map(json.loads, text.splitlines())]


def leftovers(run_dir: str) -> list[str]:
    """Temporaries of interrupted writes, and checkpoint folders without a manifest."""
    where = location(run_dir)
    temporaries = [path for path in where.fs.find(where.path) if TEMPORARY_RE.match(path.rsplit("/", 1)[-1])]
    unfinished = [folder.url for folder in find_checkpoints(where) if not folder.child(MANIFEST_FILE).exists()]
    return temporaries + unfinished


def check_same_as(run_dir: str, reference_dir: str, context: str) -> None:
    got, expected = records(run_dir), records(reference_dir)
    keys = [(record["event"], record["step"]) for record in got]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    assert not duplicated, f"{context}: duplicated records {duplicated}"
    missing = [(r["event"], r["step"]) for r in expected if (r["event"], r["step"]) not in keys]
    assert not missing, f"{context}: lost records {missing}"
    if got != expected:
        ours, theirs = next(((a, b) for a, b in zip(got, expected) if a != b), (got[len(expected):], expected[len(got):]))
        raise AssertionError(f"{context}: records differ from the uninterrupted run's; first: {ours} != {theirs}")
    names = lambda where: [folder.name for folder in find_checkpoints(location(where))]
    assert names(run_dir) == names(reference_dir), f"{context}: checkpoints {names(run_dir)} != {names(reference_dir)}"
    for folder in find_checkpoints(location(run_dir)):
        read_checkpoint(folder)  # raises, naming the problem, if one is damaged
    assert not leftovers(run_dir), f"{context}: left behind {leftovers(run_dir)}"


def soak(data: Path, run_dir: str, reference_dir: str, full_run_s: float, kills: int, seed: int,
         env: dict[str, str]) -> dict:
    """`kills` killed launches into `run_dir`, one to finish, then the checks against `reference_dir`,
    the uninterrupted run (`run_to_end`, which took `full_run_s`: kills land anywhere within that)."""
    killed = kill_at_random_moments(data, run_dir, env, kills, full_run_s, random.Random(seed))
    run_to_end(data, run_dir, env)
    check_same_as(run_dir, reference_dir, f"soak with seed {seed} ({killed} of {kills} launches killed)")
    return {"seed": seed, "launches_killed": killed, "launches": kills + 1, "full_run_s": round(full_run_s, 1)}


def moto_server() -> tuple[object, dict[str, str]]:
    """A moto S3 server on a free loopback port, and the environment that points clients at it."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, {"AWS_ACCESS_KEY_ID": "soak", "AWS_SECRET_ACCESS_KEY": "soak", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=25)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--store", choices=["local", "s3"], default="local")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="composerlite-soak-") as scratch:
        data = Path(scratch, "corpus.txt")
        data.write_text(TEXT)
        env = {**os.environ, "COMPOSERLITE_CACHE": str(Path(scratch, "cache"))}
        server = None
        if args.store == "s3":
            import fsspec

            server, s3_env = moto_server()
            env.update(s3_env)
            os.environ.update(s3_env)  # for this process's checks
            fsspec.filesystem("s3").mkdir("soak")
            run_dir, reference_dir = "s3://soak/killed", "s3://soak/reference"
        else:
            run_dir, reference_dir = str(Path(scratch, "killed")), str(Path(scratch, "reference"))
        try:
            full_run_s = run_to_end(data, reference_dir, env)
            print(json.dumps(soak(data, run_dir, reference_dir, full_run_s, args.kills, args.seed, env)))
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
