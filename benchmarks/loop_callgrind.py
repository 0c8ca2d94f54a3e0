"""Instructions per step of loop_overhead.py's loops, counted by valgrind callgrind (load-independent).

CPU time on a shared machine varies by ~1 ms a step between runs of the same loop; an instruction
count does not depend on the load. This script runs one loop of a given `loop_overhead.py` (any
version of it: the path is an argument, so two checkouts can be compared) on the nano model
(batch 2 x 16, 1 torch thread, fp32 on the CPU) and switches callgrind's instrumentation on at the
15th batch fetch and off at the 39th, so that the process's callgrind total is exactly 24 steps
(a step is the period between two batch fetches, as in loop_overhead.py). The switch is a tiny
shared library compiled with gcc from callgrind.h's client requests and loaded with ctypes.

Loops: `hand` (loop_overhead.hand_loop), `full` (loop_overhead.trainer_loop: the Trainer as
`composerlite.train` builds it, with the default logger destinations and the SpeedMonitor) and
`bare` (the same Trainer with `Logger([])` and no callbacks, built the way that version's Trainer
API takes it; see `bare_loop`).

The progress bar's redraws are kept out of the count: they are paced by the wall clock (at most
twice a second), and under valgrind a step takes long enough that every step would redraw. The
ConsoleLogger's `refresh_per_second` is set to 1e-9, so it draws at the first record (before the
window) and at the end of the run (after it); its per-record pacing check still runs and is
counted. The console writes to /dev/null as a terminal, as loop_overhead.py builds it.

    # one loop, 24 steps counted (the total is in the out file's "totals:" line); `python` must be the
    # interpreter itself, not a launcher script such as a pyenv shim (valgrind does not follow the exec):
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/full.out \\
        python benchmarks/loop_callgrind.py --loop-overhead benchmarks/loop_overhead.py --loop full
    # every (version, loop), four times, each under valgrind; one JSON record:
    python benchmarks/loop_callgrind.py --compare BEFORE_PYTHON:BEFORE_SCRIPT AFTER_PYTHON:AFTER_SCRIPT \\
        --repeats 4 --out benchmarks/results/loop_overhead_callgrind_cpu_DATE.json

Each process takes about a minute under valgrind (torch's import dominates). Two runs of the same
loop differ by up to ~25k instructions a step (standard deviation 5-10k: Python's hash seed, left
random, and allocation addresses), so `--compare` runs each loop `--repeats` times (default 2).
The hand loop's count also shifts between two versions of the package although its code is the
same (2026-12-07: 18k a step, from a garbage collection of an older generation falling inside one
version's window and dictionary lookups): read the Trainer loops' own counts next to their extra
over the hand loop (the record's `after_minus_before` has both).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import importlib.util
import inspect
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

START_FETCH, STOP_FETCH = 15, 39  # instrumentation on at the 15th batch fetch, off at the 39th
STEPS = 45  # the run's length: the window lies inside it, the end-of-run work after it
LOOPS = ("hand", "full", "bare")

SHIM_SOURCE = r"""
#include <valgrind/callgrind.h>
void start(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void stop(void) { CALLGRIND_STOP_INSTRUMENTATION; }
int on_valgrind(void) { return RUNNING_ON_VALGRIND; }
"""


def shim_path() -> Path:
    """The client-request shim, compiled once into a cache folder (keyed by its source)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "composerlite-callgrind"
    path = cache / f"shim-{hashlib.sha256(SHIM_SOURCE.encode()).hexdigest()[:12]}.so"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as build:
            source = Path(build, "shim.c")
            source.write_text(SHIM_SOURCE)
            subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(Path(build, "shim.so")), str(source)], check=True)
            os.replace(Path(build, "shim.so"), path)  # atomic: a concurrent run sees the whole file or none
    return path


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("loop_overhead", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["loop_overhead"] = module
    spec.loader.exec_module(module)
    return module


def bare_loop(mod, model, data, steps: int) -> None:
    """mod.trainer_loop's Trainer without logger destinations and without the SpeedMonitor."""
    import torch
    try:
        from composerlite.core.logger import Logger
    except ImportError:  # a checkout from before composerlite/ had rooms (issue 25)
        from composerlite.loggers import Logger

    with tempfile.TemporaryDirectory(prefix="composerlite-overhead-") as run_dir:
        if "settings" in inspect.signature(mod.Trainer).parameters:  # Trainer(settings, model=, ...)
            settings = {"max_duration": f"{steps}ba", "run_dir": run_dir, "lr": mod.LR, "warmup": "0.05dur",
                        "device": "cpu", "precision": "fp32", "threads": torch.get_num_threads()}
            trainer = mod.Trainer(settings, model=model, train_data=data, logger=Logger([]))
        else:  # the keyword API (before 7e01c8d)
            trainer = mod.Trainer(model=model, train_data=data, max_duration=f"{steps}ba", logger=Logger([]),
                                  run_dir=run_dir, optimizer=mod.OptimizerConfig(lr=mod.LR),
                                  schedule=mod.WarmupDecaySchedule(warmup=mod.Time.parse("0.05dur")),
                                  device="cpu", precision="fp32", threads=torch.get_num_threads())
        trainer.fit()


def run_loop(script: str, loop: str, shim: str | None) -> dict:
    """Run one loop with the instrumentation window; meant to run under valgrind."""
    library = ctypes.CDLL(shim or str(shim_path()))
    mod = load_module(script)
    import torch
    import transformers
    import composerlite
    try:
        from composerlite.observe import loggers
    except ImportError:  # a checkout from before composerlite/ had rooms (issue 25)
        from composerlite import loggers

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    console_init = loggers.ConsoleLogger.__init__

    def no_redraws(self, *args, **kwargs):  # drawn at the first record and at the end only
        console_init(self, *args, **kwargs)
        self.refresh_per_second = 1e-9

    loggers.ConsoleLogger.__init__ = no_redraws

    class WindowTokens(mod.TimedTokens):
        def epoch(self, epoch: int, start_batch: int = 0):
            for batch in super().epoch(epoch, start_batch):  # appends this fetch to self.fetched
                if len(self.fetched) == START_FETCH:
                    library.start()
                elif len(self.fetched) == STOP_FETCH:
                    library.stop()
                yield batch

    mod.seed_everything(0)
    _, vocab_size = mod.MODELS["nano"]
    data = WindowTokens(2, 16, vocab_size, STEPS, seed=0)
    model = mod.new_model("nano")
    if loop == "hand":
        mod.hand_loop(model, data, STEPS)
    elif loop == "full":
        mod.trainer_loop(model, data, STEPS)
    else:
        bare_loop(mod, model, data, STEPS)
    if len(data.fetched) < STOP_FETCH:
        raise RuntimeError(f"only {len(data.fetched)} batches fetched: the window never closed")
    return {"loop": loop, "steps_counted": STOP_FETCH - START_FETCH, "fetched": len(data.fetched),
            "on_valgrind": bool(library.on_valgrind()), "torch": torch.__version__,
            "composerlite": os.path.dirname(composerlite.__file__)}


def callgrind_total(out_file: Path) -> int:
    """The Ir total of a callgrind out file (its "totals:" line, or "summary:" in older files)."""
    text = out_file.read_text()
    match = re.search(r"^totals:\s+(\d+)", text, re.M) or re.search(r"^summary:\s+(\d+)", text, re.M)
    return int(match.group(1))


def callgrind(python: str, script: str, loop: str, out_file: Path, shim: Path) -> dict:
    """One valgrind process: `loop` of `script` under `python`, in a neutral working directory (a
    checkout's source folder would shadow its installed package), without writing bytecode."""
    # The interpreter itself, not a launcher script (a pyenv shim): valgrind follows no exec.
    python = subprocess.run([python, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True,
                            check=True, cwd=out_file.parent).stdout.strip()
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
               python, "-B", os.path.abspath(__file__), "--loop-overhead", script, "--loop", loop, "--shim", str(shim)]
    done = subprocess.run(command, cwd=out_file.parent, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if not report["on_valgrind"]:
        raise RuntimeError("the shim did not see valgrind")
    total = callgrind_total(out_file)
    return {"instructions": total, "per_step": round(total / report["steps_counted"]), "torch": report["torch"],
            "composerlite": report["composerlite"]}


def git_commit(script: str) -> str:
    folder = os.path.dirname(os.path.abspath(script))
    done = subprocess.run(["git", "-C", folder, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def compare(versions: list[str], out: str, repeats: int, keep: str | None) -> dict:
    shim = shim_path()
    names = ("before", "after") if len(versions) == 2 else tuple(f"v{i}" for i in range(len(versions)))
    pairs = dict(zip(names, (v.split(":", 1) for v in versions)))
    counts = {name: {loop: [] for loop in LOOPS} for name in names}
    torch_versions, packages = {}, {}
    with tempfile.TemporaryDirectory(prefix="loop-callgrind-") as scratch:
        folder = Path(keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for repeat in range(repeats):  # repeat-major: each version's repeats are apart in time
            for name, (python, script) in pairs.items():
                for loop in LOOPS:
                    result = callgrind(python, script, loop, folder / f"callgrind.{name}.{loop}.{repeat}.out", shim)
                    counts[name][loop].append(result["per_step"])
                    torch_versions[name], packages[name] = result["torch"], result["composerlite"]
                    print(f"{name} {loop} repeat {repeat + 1}: {result['per_step']:,} instructions a step", flush=True)
    per_version, spreads = {}, []
    for name in names:
        c = counts[name]
        extras = {kind: [t - h for t, h in zip(c[kind], c["hand"])] for kind in ("full", "bare")}
        spreads += [max(values) - min(values) for values in c.values()]
        per_version[name] = {
            "script": pairs[name][1], "python": pairs[name][0], "commit": git_commit(pairs[name][1]),
            "composerlite_package": packages[name],
            **{loop: c[loop] for loop in LOOPS},
            "mean": {loop: round(sum(c[loop]) / len(c[loop])) for loop in LOOPS},
            "trainer_extra_over_hand": {kind: round(sum(v) / len(v)) for kind, v in extras.items()},
            "trainer_extra_over_hand_per_repeat": extras,
        }
    with open("/proc/cpuinfo") as info:
        cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.processor())
    record = {
        "how": f"valgrind --tool=callgrind --instr-atstart=no; instrumentation on at batch fetch {START_FETCH}, off at "
               f"{STOP_FETCH} ({STOP_FETCH - START_FETCH} steps) of a {STEPS}-step run, by {os.path.basename(__file__)}; "
               "one process per (version, loop, repeat); nano model, batch 2 x 16, 1 torch thread, fp32, CPU; progress "
               "bar redraws only at the first record and at the end (refresh_per_second=1e-9), console to /dev/null as "
               "a terminal; Python's hash seed random",
        "units": "instructions per step (user space only)",
        "cpu": cpu, "cpu_cores": os.cpu_count(), "torch": torch_versions,
        "date": datetime.date.today().isoformat(),
        "versions": per_version,
        "spread": {"max_between_repeats": max(spreads),
                   "max_between_repeats_of_trainer_extra": max(max(v) - min(v) for p in per_version.values()
                                                               for v in p["trainer_extra_over_hand_per_repeat"].values()),
                   "note": "largest difference between two repeats of the same (version, loop), and of the same "
                           "(version, Trainer extra over hand), instructions per step"},
    }
    if names == ("before", "after"):
        before, after = per_version["before"], per_version["after"]
        record["after_minus_before"] = {
            **{loop: after["mean"][loop] - before["mean"][loop] for loop in LOOPS},
            "trainer_extra_over_hand": {kind: after["trainer_extra_over_hand"][kind] - before["trainer_extra_over_hand"][kind]
                                        for kind in ("full", "bare")},
        }
    Path(out).write_text(json.dumps(record, indent=1) + "\n")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop-overhead", help="path of the loop_overhead.py whose loop runs")
    parser.add_argument("--loop", choices=LOOPS, default="full")
    parser.add_argument("--shim", help="a compiled shim (default: compiled into the cache folder)")
    parser.add_argument("--compare", nargs="+", metavar="PYTHON:SCRIPT",
                        help="run every loop of each version under valgrind and write the record")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--keep", help="keep the callgrind out files in this folder")
    parser.add_argument("--out", help="the record (with --compare)")
    args = parser.parse_args(argv)
    if args.compare:
        if not args.out:
            parser.error("--compare needs --out")
        compare(args.compare, args.out, args.repeats, args.keep)
    elif args.loop_overhead:
        print(json.dumps(run_loop(args.loop_overhead, args.loop, args.shim)))
    else:
        parser.error("give --loop-overhead PATH (under valgrind) or --compare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
