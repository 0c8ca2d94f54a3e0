"""A Composer-style algorithm ported by changing its imports.

Written against Composer's API, this file began with

    from composer.core import Algorithm, Event, State
    from composer.loggers import Logger

and runs in composerlite with the one import line below instead; nothing else changed. It only
touches the batch (`state.batch`, a dict of [batch, seq] tensors in both libraries for Hugging Face
language models), which is what makes it portable. Its options come from `__init__`'s signature,
as in Composer: `--algo ./examples/composer_port.py:TruncateSequences:max_seq_len=32`.
"""

from composerlite import Algorithm, Event, Logger, State  # was: composer.core + composer.loggers


def truncate_batch(batch, max_seq_len):
    """Cut every [batch, seq] tensor in `batch` to its first `max_seq_len` positions."""
    return {key: tensor[:, :max_seq_len] for key, tensor in batch.items()}


class TruncateSequences(Algorithm):
    """Train on the first `max_seq_len` tokens of every sequence (a fixed short-context baseline)."""

    def __init__(self, max_seq_len: int = 64):
        if max_seq_len < 1:
            raise ValueError(f"max_seq_len must be at least 1, got {max_seq_len}")
        self.max_seq_len = max_seq_len

    def match(self, event: Event, state: State) -> bool:
        return event == Event.AFTER_DATALOADER

    def apply(self, event: Event, state: State, logger: Logger) -> None:
        state.batch = truncate_batch(state.batch, self.max_seq_len)
        logger.log_metrics({"truncate_sequences/seq_len": self.max_seq_len})
