"""`composerlite bench`: every method under the same budget, data, eval set and seeds, interleaved,
the baseline repeated for an A/A timing-noise measurement; then a report of verdicts (speedups with
95% intervals on wall-clock, tokens and FLOPs to a target loss). Rerunning the same command resumes.
`--tune` gives every method the same tuning grid first and compares each at its best
(`bench.tuning`); `--models` runs the comparison at several sizes (`bench.ladder`).

A bare `composerlite bench` on a machine without a GPU runs `CPU_PRESET`: a setting measured to
learn well past the corpus's unigram model within a few minutes per run on 2 CPU cores."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from composerlite.commands.flags import FLAGS, add_setting_flags, given_settings
from composerlite.errors import ConfigError, RunHalted
from composerlite.run.settings import RunConfig, load_config

# Twenty evaluations per run: enough points to read the cost of the baseline's loss off the curve.
BENCH_EVAL_INTERVAL = "0.05dur"
DEFAULT_ALGOS = "baseline,seq_len_warmup,alibi"
DEFAULT_SEEDS = 3
# The CPU preset (benchmarks/results/cpu-preset-search/ holds the measurements it was chosen by).
CPU_PRESET = {"model": "gpt2-cpu", "max_duration": "400000tok", "batch_size": 8, "seq_len": 128, "lr": 1e-2,
              "warmup": "20ba", "dropout": 0.0, "precision": "fp32", "eval_batches": 8}


# What a benchmark decides for each of its runs, or for all of them with a flag of its own.
DECIDED_PER_RUN = ("run_dir", "resume", "autoresume", "algorithms", "max_duration", "parallel")


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """The settings every run of a benchmark or sweep shares: `run`'s flags but those a benchmark
    decides itself (each run's directory, resumption, the methods' algorithms, one process), the
    budget as `--budget`, and the benchmark's own."""
    parser.add_argument("--config", help="YAML recipe for the shared settings; flags override it. Its algorithms "
                        "are part of every method, the baseline included")
    parser.add_argument("--budget", help="each run's budget: 60ba, 2e6tok, 10min, ... (same for every method); "
                        "with --target-loss, the cap")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                        help=f"seeds per method: --seed, --seed+1, ... (default {DEFAULT_SEEDS}; verdicts need 2+)")
    parser.add_argument("--out", help="benchmark folder; rerun with the same --out to resume (default: bench-MODEL-BUDGET)")
    parser.add_argument("--interleave", choices=["steps", "runs"],
                        help="steps: a seed's runs train side by side, a step each in turn, so a loaded machine slows "
                             "every method alike (all of them in memory at once); runs: one after another "
                             "(default: steps on CPU, runs on a GPU)")
    add_setting_flags(parser, leave_out=DECIDED_PER_RUN)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algos", default=DEFAULT_ALGOS, metavar="A,B,...",
                        help="methods to compare, comma-separated: baseline, registered names with options "
                             f"(seq_len_warmup:duration=0.3), or path/to/file.py:Class (default {DEFAULT_ALGOS})")
    parser.add_argument("--reference-repeats", type=int, default=1, metavar="N",
                        help="extra runs of the baseline per seed, for the A/A timing-noise measurement (default 1)")
    parser.add_argument("--recipe", dest="recipes", action="append", default=[], metavar="NAME=A+B+...",
                        help="a named method combining several algorithms; repeat for several")
    parser.add_argument("--tune", action="append", default=[], metavar="KEY=GRID",
                        help="equal tuning budget: every method trains at each value on a tuning seed (the one before "
                             "--seed) and its verdict runs use its best. KEY: a run setting (lr, warmup, weight_decay, "
                             "batch_size, ...) or ALGO.OPTION (muon.lr: the methods with ALGO); GRID: 3e-3,1e-2,3e-2 or "
                             "log:1e-3..1e-1:5 (5 log-spaced points). Repeat for a product grid. An existing --out's grid "
                             "may widen (every value kept): only the new points train")
    parser.add_argument("--models", metavar="A,B,...",
                        help="the same comparison on several family members (a size ladder: each in OUT/<model>/, "
                             "the report in OUT says how each speedup moves with size); instead of --model")
    add_shared_arguments(parser)
    parser.epilog = (f"Without --config, --model and --budget, a machine without a GPU runs the CPU preset "
                     f"({', '.join(f'{key}={value}' for key, value in CPU_PRESET.items())}) under the flags given. "
                     f"Every run evaluates every {BENCH_EVAL_INTERVAL} unless --eval-interval or the recipe says otherwise.")


def base_config(args: argparse.Namespace) -> RunConfig:
    """The recipe (if any) with the flags over it; the settings all runs share. Without a recipe,
    model and budget, a machine without a GPU gets `CPU_PRESET` under the flags given."""
    overrides = {**given_settings(args), "max_duration": args.budget}
    if args.config is None and args.model is None and args.budget is None and not _has_gpu(args.device):
        overrides = {**CPU_PRESET, **{key: value for key, value in overrides.items() if value is not None}}
    config = load_config(args.config, overrides)
    if config.training.max_duration is None:
        raise ConfigError("give every run the same budget with --budget (e.g. 60ba, 2e6tok, 10min)")
    if not config.is_set("eval_interval"):
        config = config.updated({"eval_interval": BENCH_EVAL_INTERVAL})
    return config


def _has_gpu(device: str | None) -> bool:
    if device is not None:
        return device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def seeds_of(args: argparse.Namespace, config: RunConfig) -> list[int]:
    if args.seeds < 1:
        raise ConfigError("--seeds must be at least 1")
    return [config.training.seed + i for i in range(args.seeds)]


def out_dir(args: argparse.Namespace, config: RunConfig, kind: str, model: str | None = None) -> Path:
    return Path(args.out or f"{kind}-{model or config.model.name}-{config.training.max_duration}")


def command_line(args: argparse.Namespace) -> str:
    """The command as typed, rebuilt from the parsed flags (so it is exact whatever the entry point)."""
    words = ["composerlite", args.command]
    for key, value in vars(args).items():
        if key in ("command", "handler") or value is None or value is False or value == []:
            continue
        flag = {**FLAGS, "recipes": "--recipe"}.get(key, "--" + key.replace("_", "-"))
        for item in value if isinstance(value, list) else [value]:
            words += [flag] if item is True else [flag, str(item)]
    return shlex.join(words)


def parse_models(text: str) -> list[str]:
    models = [name.strip() for name in text.split(",") if name.strip()]
    if len(models) < 2 or len(set(models)) < len(models):
        raise ConfigError(f"--models needs two or more different family members, comma-separated, not '{text}'")
    return models


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from composerlite.bench.report import build_report, print_verdicts
    from composerlite.bench.runner import check_bench, parse_algos, parse_recipe, run_bench
    from composerlite.bench.tuning import parse_tune

    config = base_config(args)
    if args.reference_repeats < 0:
        raise ConfigError("--reference-repeats must be 0 or more")
    methods = parse_algos(args.algos) + [parse_recipe(text) for text in args.recipes]
    tuning = [parse_tune(text) for text in args.tune]
    for key in tuning:
        if key.algorithm is None and getattr(args, key.key, None) is not None:
            raise ConfigError(f"--{key.key.replace('_', '-')} fixes what --tune {key.key} varies; give only the grid")
    seeds = seeds_of(args, config)
    if tuning and seeds[0] == 0:
        raise ConfigError("--tune runs its grid on the seed before the first verdict seed: give --seed 1 or more")
    if args.models is None:
        out = out_dir(args, config, "bench")
        run_bench(out, config, methods, seeds, command_line(args), reference_repeats=args.reference_repeats,
                  interleave=args.interleave, tuning=tuning)
        print(f"report: {out / 'report.md'} and {out / 'report.html'}")
        return 0
    # A size ladder: every model's comparison checked before any run, then one model after another
    # in the order listed, each a complete benchmark in its own folder. Failed runs in one model
    # leave the others to run (as a failed run leaves the other methods); a signal stops them all.
    if args.model is not None:
        raise ConfigError("--model and --models: give one")
    models = parse_models(args.models)
    configs = {model: config.updated({"model": model}) for model in models}
    for model_config in configs.values():
        check_bench(model_config, methods, tuning)
    out = out_dir(args, config, "bench", "+".join(models))
    failed: list[RunHalted] = []
    for model, model_config in configs.items():
        try:
            run_bench(out / model, model_config, methods, seeds, command_line(args),
                      reference_repeats=args.reference_repeats, interleave=args.interleave, tuning=tuning)
        except RunHalted as halted:
            if halted.exit_code != 1:
                raise
            failed.append(halted)
    print_verdicts(build_report([out / model for model in models], out), Console(stderr=True))
    print(f"report across sizes: {out / 'report.md'} and {out / 'report.html'} (each size's in {out}/<model>/)")
    if failed:
        raise RunHalted(" ".join(str(halted) for halted in failed), exit_code=1)
    return 0
