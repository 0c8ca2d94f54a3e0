"""`evaluate_run(run_dir)`: the held-out loss of a run's latest checkpoint at any sequence length.

The model is rebuilt from the run's config.yaml as `train` built it: the same family member and
the same algorithms with the same options, converted at Event.INIT, so an ALiBi model gets its
attention hook back before the weights are loaded. No Trainer: no optimizer, no training data, no
optimizer state loaded. The checkpoint's weights, algorithm state and time are restored, and the
evaluation is the Trainer's own (`held_out_loss`), so algorithms that act at eval events (EMA's
averaged weights) act here too. Nothing is written to the run directory.
"""

from __future__ import annotations

from typing import Any

from composerlite.errors import ConfigError
from composerlite.run.settings import algorithm_specs

DEFAULT_BATCH_SIZE = 8


def evaluate_run(run_dir: str, *, data: str | None = None, seq_len: int | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, max_batches: int | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """Held-out loss and perplexity of `run_dir`'s newest valid checkpoint (or of the checkpoint
    folder given), on `data`'s held-out split (default: the run's), at `seq_len` (default: the
    run's), in the run's precision where this device computes it natively, else fp32."""
    from composerlite.core.composition import compose
    from composerlite.core.logger import Logger
    from composerlite.core.schedule import WarmupDecaySchedule
    from composerlite.core.time import Time
    from composerlite.data import BatchStream, DataError, prepare_corpus
    from composerlite.models import build_model
    from composerlite.registry import build_algorithm
    from composerlite.run.checkpoint import load_checkpoint
    from composerlite.run.loop import held_out_loss, init_state, position_limit, seed_everything
    from composerlite.run.run_directory import find_run, load_run_config, run_algorithm_specs  # torch: not for `eval --help`
    from composerlite.system.runtime import default_threads, native_precisions, pinned_runtime, resolve_device

    run_dir, checkpoint = find_run(str(run_dir))
    config = load_run_config(run_dir)
    seq_len = seq_len if seq_len is not None else config.data.seq_len
    if seq_len is None or seq_len < 2:
        raise ConfigError(f"`seq_len` must be at least 2 (a token and the one it predicts), got {seq_len}")
    if batch_size < 1:
        raise ConfigError(f"`batch_size` must be positive, got {batch_size}")
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"`max_batches` must be positive, got {max_batches}")
    torch_device = resolve_device(device)
    training = config.training
    precision = training.precision if training.precision in native_precisions(torch_device) else "fp32"
    algorithms = [build_algorithm(target, options) for target, options in run_algorithm_specs(config, run_dir)]
    compose(algorithms, torch_device, precision)  # refused before the data is read; init_state composes them again
    data = data if data is not None else config.data.source
    try:
        corpus = prepare_corpus(data)
        stream = BatchStream(corpus.eval, seq_len=seq_len, batch_size=batch_size, shuffle=False)
    except DataError as error:
        raise ConfigError(f"held-out split of {data or 'the default corpus'}: {error}") from None
    seed_everything(training.seed)
    # Dropout is off in eval mode; the state_dict does not depend on it.
    model = build_model(config.model.name, dropout=0.0)
    # The run's thread count: its recorded eval losses are then reproduced bit for bit.
    with pinned_runtime(training.threads or default_threads(), torch_device):
        # The state the run's algorithms saw, less what only training needs (no optimizer, no
        # callbacks), shaped by the held-out stream: INIT-time conversions and eval-time algorithms read it.
        state, engine = init_state(
            model, stream, algorithms=algorithms, max_duration=Time.parse(training.max_duration), device=torch_device,
            precision=precision, seed=training.seed, run_dir=run_dir, logger=Logger([]),
            schedule=WarmupDecaySchedule(warmup=Time.parse(config.schedule.warmup), decay=config.schedule.decay),
        )
        limit = position_limit(state.model)
        if limit is not None and seq_len > limit:
            raise ConfigError(
                f"cannot evaluate {config.model.name} at {seq_len} tokens: its learned position embeddings cover "
                f"{limit} positions (n_positions); a model trained with `algorithms=alibi` has no such limit"
            )
        load_checkpoint(state, checkpoint)  # weights, algorithm state, time; no optimizer to restore
        metrics = held_out_loss(state, engine, stream, max_batches)
    n_batches = len(stream) if max_batches is None else min(len(stream), max_batches)
    return {
        "run_dir": run_dir.url,
        "checkpoint": checkpoint.url,
        "step": state.timestamp.batch.value,
        "model": config.model.name,
        "algorithms": [target for target, _ in algorithm_specs(config)],
        "data": corpus.name,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "batches": n_batches,
        "tokens": n_batches * batch_size * (seq_len - 1),  # predicted tokens
        "device": str(torch_device),
        "precision": state.precision,
        "eval_loss": metrics["eval_loss"],
        "eval_ppl": metrics["eval_ppl"],
    }
