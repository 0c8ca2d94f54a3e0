"""`train(config)`: one training run, everything `composerlite run` does, as a library call.

    import composerlite

    result = composerlite.train({"model": "gpt2-tiny", "max_duration": "20ba", "run_dir": "runs/demo"})
    result.summary["eval_loss"], result.records[-1], result.run_dir

It resolves the device and precision, fills in the defaults (a CPU demo without a budget, the
card's recipe on request), prepares the data, checks everything that can refuse the run before its
first write, resumes (`resume`, `autoresume`), writes the run directory (config.yaml,
metrics.jsonl, checkpoints; local or an fsspec URL, metrics uploaded to a remote one) and trains.
Every record goes to the console's progress bar, metrics.jsonl and the configuration's `loggers`
(TensorBoard, MLflow, W&B, plugins); a caller also follows the run through `callbacks` (events)
and `loggers` (destination objects); the result holds every record of the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import torch
from rich.console import Console
from rich.table import Table

from composerlite.core.callback import Callback
from composerlite.core.composition import compose
from composerlite.core.logger import Logger, LoggerDestination, RunInfo
from composerlite.core.time import Time, TimeUnit
from composerlite.errors import ConfigError
from composerlite.observe.loggers import RecordList
from composerlite.observe.speed_monitor import SpeedMonitor, speed_line
from composerlite.registry import build_algorithm, build_logger
from composerlite.run.checkpoint import check_resumable, read_step
from composerlite.run.loop import Trainer, position_limit, seed_everything
from composerlite.run.run_directory import checkpoint_to_resume, config_record, prepare_run_dir
from composerlite.run.settings import RunConfig, algorithm_specs, plugin_specs, resolve, validated
from composerlite.system import distributed
from composerlite.system.storage import Location, location

if TYPE_CHECKING:
    from composerlite.core.algorithm import Algorithm
    from composerlite.data import BatchStream, Corpus

# Every run shows its progress bar and writes metrics.jsonl (what resume, benchmarks and reports
# read); `loggers` naming one of these sets its options instead of adding a second.
BUILT_IN_LOGGERS = ("console", "jsonl")
T = TypeVar("T")


@dataclasses.dataclass
class RunResult:
    """What a finished run gives back.

    summary   steps, tokens, wall_s, tokens_per_s, final_train_loss, eval_loss and eval_ppl (when
              evaluated), seconds_per_algorithm, run_dir, and speed (the SpeedMonitor's summary:
              throughput/*, memory/peak_gib, step_ms, ...; empty for a run of one step).
              tokens_per_s is the SpeedMonitor's, the rate the progress bar and the speed line
              show too (tokens over whole step periods after warmup); a run of one step has only
              tokens / wall_s
    records   every metrics.jsonl record of the run, in order (train and eval lines; for a resumed
              run those kept from before the resume first); on rank 0, this process's elsewhere
    config    the resolved configuration written to config.yaml, every default filled in
    """

    run_dir: str
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    config: dict[str, Any]
    checkpoint: str | None  # the newest checkpoint, a path or URL

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [record for record in self.records if record["event"] == "eval"]


def logger_specs(config: RunConfig) -> list[tuple[str, dict[str, Any]]]:
    """The run's logger destinations as (target, options): the built-ins, with the options
    `loggers` gives them, then the other `loggers` in order."""
    built_in: dict[str, dict[str, Any]] = {name: {} for name in BUILT_IN_LOGGERS}
    others = []
    for target, options in plugin_specs(config.loggers, "logger"):
        if target not in built_in:
            others.append((target, options))
        elif built_in[target]:
            raise ConfigError(f"logger '{target}' is given options twice; give them once")
        else:
            built_in[target] = options
    return [*built_in.items(), *others]


def build_loggers(config: RunConfig) -> list[LoggerDestination]:
    """The run's destinations, built and their options checked; `Logger.open` starts them."""
    return [build_logger(target, options) for target, options in logger_specs(config)]


def check_budget(config: RunConfig) -> None:
    """A budget in samples or tokens smaller than one batch would train zero steps."""
    training, seq_len = config.training, config.data.seq_len
    budget = Time.parse(training.max_duration)
    per_batch = {TimeUnit.SAMPLE: training.batch_size, TimeUnit.TOKEN: training.batch_size * seq_len}.get(budget.unit)
    if per_batch is not None and budget.value < per_batch:
        raise ConfigError(
            f"`max_duration={training.max_duration}` is shorter than one step ({per_batch} {budget.unit.value} per batch "
            f"of {training.batch_size}x{seq_len})"
        )


def on_rank_zero(check: Callable[[], T]) -> T:
    """`check()` run on rank 0 alone (only rank 0 reads run files); every rank gets its result, or
    the same `ConfigError`."""
    value, problem = None, None
    if distributed.is_rank_zero():
        try:
            value = check()
        except ConfigError as error:
            problem = str(error)
    value, problem = distributed.broadcast_object((value, problem))
    if problem is not None:
        raise ConfigError(problem)
    return value


def train(config: RunConfig | Mapping[str, Any], *, callbacks: Sequence[Callback] = (),
          loggers: Sequence[LoggerDestination] = (), console: Console | None = None) -> RunResult:
    """Train one run as `config` (a `RunConfig`, or a mapping of its settings: flat keys, sections
    or both) says.

    callbacks  observers of the run's events (`Callback` subclasses: `batch_end(state, logger)`...)
    loggers    destinations that receive each metrics record as it is written (`log(record)`), after
               those `config.loggers` names; checked (`check_run_dir`) and opened (`open`) as those are
    console    where the progress bar and notes go (default: stderr on rank 0;
               `Console(quiet=True)` for none)

    Raises `ConfigError` (nothing written) for a configuration that cannot run, `DataError` for
    unusable data, `PluginError` for an algorithm that fails while building or converting the
    model, `RunHalted` when training stops on purpose (a signal, a non-finite loss, a failed save:
    the message says what was kept and how to continue)."""
    config, notes = resolve(validated(config))
    config = joined(config)
    console = console or Console(stderr=True, quiet=not distributed.is_rank_zero())
    # Every check that can refuse the run comes before its first write, so a refused run leaves the
    # run directory exactly as it was; those that need no data come before the data is read too
    # (tokenizing a new corpus takes minutes). The converted model's checks follow the data: the
    # Trainer converts it.
    check_budget(config)
    algorithms = checked_algorithms(config)
    # The caller's destinations are checked and opened as the configured ones are (a failing one is
    # named in one line); every rank checks them, rank 0 opens them and writes.
    run_loggers = [*build_loggers(config), *loggers]
    run_dir = location(config.checkpointing.run_dir)
    Logger(run_loggers).check_run_dir(run_dir)
    # As a URL, not a Location: it travels to the other ranks.
    resume_url = on_rank_zero(lambda: getattr(checkpoint_to_resume(config, run_dir), "url", None))
    resume_from = location(resume_url) if resume_url else None
    corpus, train_data, eval_data = data_streams(config, console)
    records = RecordList()
    logger = Logger([records])  # and, on rank 0, `run_loggers` once opened
    # Every run measures its speed (throughput/* and memory/peak_gib in metrics.jsonl).
    speed = SpeedMonitor(window=20, warmup_steps=1, console=False)
    trainer = build_trainer(config, train_data, eval_data, algorithms, [speed, *callbacks], logger, resume_from)
    resolved = config_record(config, distributed.world_size())
    earlier: list[dict[str, Any]] = []
    if distributed.is_rank_zero():  # the run's first writes
        earlier = open_run(run_dir, config, resolved, resume_from, run_loggers, console)
        logger.destinations.extend(run_loggers)
    announce(config, notes, resume_from, corpus, algorithms, console)
    summary = fit(trainer, logger, speed)
    checkpoint = trainer.last_checkpoint.url if trainer.last_checkpoint else None
    return RunResult(run_dir=run_dir.url, summary=summary, records=[*earlier, *records.records], config=resolved,
                     checkpoint=checkpoint)


def joined(config: RunConfig) -> RunConfig:
    """`config` for this process of a torchrun launch (or a lone process): its rank's device, and
    rank 0's run directory (the default name has a timestamp)."""
    rank_device = distributed.init(torch.device(config.training.device).type)
    if rank_device is not None:
        config = config.updated({"device": str(rank_device)})
    if config.training.microbatch_size == "auto" and distributed.world_size() > 1:
        raise ConfigError("`microbatch_size=auto` works in a single process only; give a number under torchrun")
    return config.updated({"run_dir": distributed.broadcast_object(config.checkpointing.run_dir)})


def checked_algorithms(config: RunConfig) -> list[Algorithm]:
    """The run's algorithms, built, and checked on the run's device and precision, so an impossible
    combination is refused before anything is written; the Trainer expands and orders the list
    itself (expanding twice would list a bundle's members twice)."""
    algorithms = [build_algorithm(target, options) for target, options in algorithm_specs(config)]
    compose(algorithms, torch.device(config.training.device), config.training.precision)
    return algorithms


def open_run(run_dir: Location, config: RunConfig, resolved: dict[str, Any], resume_from: Location | None,
             run_loggers: list[LoggerDestination], console: Console) -> list[dict[str, Any]]:
    """Rank 0's first writes: the run directory prepared (`prepare_run_dir`), then the loggers
    opened; the records kept from before a resume."""
    start_step = read_step(resume_from) if resume_from else 0
    earlier, leftovers = prepare_run_dir(run_dir, config, resolved, start_step)
    if leftovers:
        console.print(f"removed what interrupted writes left: {', '.join(leftovers)}")
    opened = Logger(run_loggers)
    try:
        opened.open(RunInfo(run_dir=run_dir, config=resolved, console=console, start_step=start_step))
    except BaseException:
        with contextlib.suppress(Exception):  # the failure to open is the one to report
            opened.close()
        raise
    return earlier


def announce(config: RunConfig, notes: list[str], resume_from: Location | None, corpus: Corpus,
             algorithms: list[Algorithm], console: Console) -> None:
    """The notes on defaults a user may not expect, and the run in one line."""
    for note in notes:
        console.print(f"[yellow]{note}[/yellow]")
    if resume_from is not None:
        console.print(f"resuming from {resume_from}")
    world_size = distributed.world_size()
    console.print(
        f"[bold]{config.model.name}[/bold] on {corpus.name} ({corpus.train.n_tokens:,} train tokens), "
        f"{config.training.device} {config.training.precision}, "
        f"algorithms: {', '.join(a.name or type(a).__name__ for a in algorithms) or 'none'}"
        + (f", {world_size} processes ({config.parallelism.strategy})" if world_size > 1 else "")
    )


def data_streams(config: RunConfig, console: Console) -> tuple[Corpus, BatchStream, BatchStream]:
    """(corpus, train stream, held-out stream) of this rank. Rank 0 tokenizes and caches the corpus
    first; the others then read the cache. Each rank reads only the blocks it trains on, a batch or
    two ahead on a thread, into pinned memory on a GPU (the Trainer's copies are non-blocking)."""
    from composerlite.data import BatchStream, prepare_corpus

    per_rank_batch = distributed.per_rank_batch_size(config.training.batch_size)  # refuses an uneven split first
    if not distributed.is_rank_zero():
        distributed.barrier()
    corpus = prepare_corpus(config.data.source, console=console)
    if distributed.is_rank_zero():
        distributed.barrier()
    stream = {"rank": distributed.rank(), "world_size": distributed.world_size(), "seq_len": config.data.seq_len,
              "batch_size": per_rank_batch, "pin_memory": torch.device(config.training.device).type == "cuda"}
    train_data = BatchStream(corpus.train, seed=config.training.seed, **stream)
    eval_data = BatchStream(corpus.eval, seed=0, shuffle=False, **stream)
    return corpus, train_data, eval_data


def build_trainer(config: RunConfig, train_data: BatchStream, eval_data: BatchStream, algorithms: list[Algorithm],
                  callbacks: list[Callback], logger: Logger, resume_from: Location | None) -> Trainer:
    """The run's Trainer, its model built after seeding (the same settings give the same initial
    weights anywhere) and converted by the Trainer (`init_state`); then the converted model's
    checks, still before anything is written: the sequence length within its learned positions,
    and the checkpoint to resume from made for it."""
    from composerlite.models import build_model

    seed_everything(config.training.seed)
    model = build_model(config.model.name, dropout=config.model.dropout)
    trainer = Trainer(config, model=model, train_data=train_data, eval_data=eval_data, logger=logger,
                      algorithms=algorithms, callbacks=callbacks, load_path=resume_from)
    seq_len = config.data.seq_len
    limit = position_limit(trainer.state.model)
    if limit is not None and seq_len > limit:
        raise ConfigError(f"`seq_len={seq_len}` is longer than {config.model.name}'s {limit} learned positions "
                          "(n_positions); train at most that long, or with `algorithms=alibi`, which has no such limit")
    if resume_from is not None:
        check_resumable(trainer.state, resume_from)
    return trainer


def fit(trainer: Trainer, logger: Logger, speed: SpeedMonitor) -> dict[str, Any]:
    """Train to the end, then flush and close the loggers (also when training fails); the summary
    with the speed monitor's."""
    try:
        summary = {**trainer.fit(), "speed": speed.summary}
        if speed.summary:  # one definition of tokens/s for the summary, the speed line and the progress bar
            summary["tokens_per_s"] = speed.summary["throughput/tokens_per_s"]
    except BaseException:
        # Best effort: the error being raised is the one to report; records past the newest
        # checkpoint are replayed on resume anyway.
        with contextlib.suppress(Exception):
            logger.sync()
        with contextlib.suppress(Exception):
            logger.close()
        raise
    try:
        logger.sync()
    finally:
        logger.close()
    return summary


def print_summary(summary: dict[str, Any], console: Console) -> None:
    """What `composerlite run` ends with: the speed line (a run of one step has none) and the table."""
    if summary["speed"]:
        console.print(speed_line(summary["speed"]))
    console.print(summary_table(summary))


def summary_table(summary: dict[str, Any]) -> Table:
    """A `RunResult.summary` as the table `composerlite run` ends with."""
    table = Table(title="run summary", show_header=False)
    table.add_row("steps / tokens", f"{summary['steps']:,} / {summary['tokens']:,}")
    speed = summary.get("speed") or {}
    rate = "" if speed else f" ({summary['tokens_per_s']:,.0f} tokens/s)"  # else the throughput row has it
    table.add_row("time in training steps", f"{summary['wall_s']:.1f} s{rate}")
    if speed:
        table.add_row("throughput", f"{speed['throughput/tokens_per_s']:,.0f} tokens/s, {speed['throughput/samples_per_s']:,.1f} "
                      f"samples/s ({speed['measured_steps']} steps after warmup, data and logging included)")
        if "throughput/mfu" in speed:
            table.add_row("model FLOPs utilization", f"{speed['throughput/mfu']:.1%} (peak {speed['peak_flops_source']})")
        else:
            table.add_row("model FLOPs utilization", f"unknown ({speed['peak_flops_source']})")
        table.add_row("peak memory", f"{speed['memory/peak_gib']:.2f} GiB ({speed['memory_kind']})")
    table.add_row("final train loss", f"{summary['final_train_loss']:.4f}")
    if "eval_loss" in summary:
        table.add_row("final eval loss / ppl", f"{summary['eval_loss']:.4f} / {summary['eval_ppl']:.2f}")
    for name, seconds in summary["seconds_per_algorithm"].items():
        table.add_row(f"time in {name}", f"{seconds:.3f} s")
    table.add_row("run directory", summary["run_dir"])
    return table
