"""Algorithms written against Composer 0.32's public API, as a Composer user writes them, then
ported by changing their import lines (each `# was:` shows Composer's) and nothing else, bar the
one renamed algorithm class. tests/test_composer_port.py trains each on a tiny model and checks
that it did what it says.
"""

import torch

from composerlite import Algorithm, Event  # was: from composer.core import Algorithm, Event
from composerlite.algorithms.seq_len_warmup import SeqLenWarmup  # was: from composer.algorithms import SeqLengthWarmup


class FreezeEmbeddings(Algorithm):
    """Stop training the token embedding once `start_batch` batches are done: take it out of every
    optimizer's parameter groups."""

    def __init__(self, start_batch: int = 1):
        self.start_batch = start_batch
        self.frozen = False

    def match(self, event, state):
        return event == Event.BATCH_START and not self.frozen and state.timestamp.batch >= self.start_batch

    def apply(self, event, state, logger):
        embedding = state.model.get_input_embeddings().weight
        for optimizer in state.optimizers:
            for group in optimizer.param_groups:
                group["params"] = [param for param in group["params"] if param is not embedding]
            optimizer.state.pop(embedding, None)
        embedding.requires_grad_(False)
        self.frozen = True


class PlainSGD(Algorithm):
    """Train with plain SGD at peak LR `lr` instead of the run's optimizer."""

    def __init__(self, lr: float = 0.1):
        self.lr = lr

    def match(self, event, state):
        return event == Event.FIT_START

    def apply(self, event, state, logger):
        state.optimizers = torch.optim.SGD(state.model.parameters(), lr=self.lr)


class ShortContextFirst(Algorithm):
    """Train on the first `short_len` tokens of every sequence for the first `fraction` of training."""

    def __init__(self, fraction: float = 0.5, short_len: int = 8):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.short_len = short_len

    def match(self, event, state):
        return event == Event.AFTER_DATALOADER and state.get_elapsed_duration() < self.fraction

    def apply(self, event, state, logger):
        state.batch = {key: value[:, :self.short_len] for key, value in state.batch.items()}
        logger.log_metrics({"short_context/elapsed": state.get_elapsed_duration().value,
                            "short_context/budget": f"{state.max_duration.value}{state.max_duration.unit.value}"})


class ShortEveryNth(Algorithm):
    """Every `every`-th batch, train on the first `short_len` tokens only."""

    def __init__(self, every: int = 2, short_len: int = 8):
        self.every = every
        self.short_len = short_len

    def match(self, event, state):
        return event == Event.AFTER_DATALOADER and (state.timestamp.batch + 1) % self.every == 0

    def apply(self, event, state, logger):
        state.batch = {key: value[:, :self.short_len] for key, value in state.batch.items()}
        timestamp = state.timestamp
        logger.log_metrics({"short_every/batch": timestamp.batch.value, "short_every/unit": timestamp.batch.unit.value,
                            "short_every/tokens_before": timestamp.token.value,
                            "short_every/samples_before": int(timestamp.sample), "short_every/epoch": timestamp.epoch.value})


class ZLoss(Algorithm):
    """Add `weight` x mean(logsumexp(logits)^2) to the loss (PaLM's z-loss), which keeps the
    softmax normaliser near 1."""

    def __init__(self, weight: float = 1e-2):
        self.weight = weight

    def match(self, event, state):
        return event == Event.AFTER_LOSS

    def apply(self, event, state, logger):
        z = torch.logsumexp(state.outputs.float(), dim=-1).pow(2).mean()
        state.loss = state.loss + self.weight * z
        logger.log_metrics({"z_loss/z": z.item()})


class TokenNoise(Algorithm):
    """Replace a fraction `p` of the input tokens with random ones, reproducibly from the run's seed."""

    def __init__(self, p: float = 0.25):
        self.p = p

    def match(self, event, state):
        return event == Event.AFTER_DATALOADER

    def apply(self, event, state, logger):
        ids = state.batch["input_ids"]
        generator = torch.Generator(device=ids.device).manual_seed(state.rank_zero_seed + state.timestamp.batch.value)
        noise = torch.randint(0, state.model.config.vocab_size, ids.shape, generator=generator, device=ids.device)
        replaced = torch.rand(ids.shape, generator=generator, device=ids.device) < self.p
        state.batch = {**state.batch, "input_ids": torch.where(replaced, noise, ids)}
        logger.log_metrics({"token_noise/replaced": int(replaced.sum())})


class LoggedSeqLenWarmup(SeqLenWarmup):  # was: class LoggedSeqLenWarmup(SeqLengthWarmup)
    """Sequence-length warmup that also logs each batch's length under `key`."""

    def __init__(self, key: str = "warmup/seq_len", **kwargs):
        super().__init__(**kwargs)
        self.key = key

    def apply(self, event, state, logger):
        super().apply(event, state, logger)
        logger.log_metrics({self.key: state.batch["input_ids"].shape[1]})


class StopAfter(Algorithm):
    """End training once `batches` batches are done, from `event`: at BATCH_END of the last one, or
    at AFTER_DATALOADER of the last one (which still trains)."""

    def __init__(self, batches: int = 2, event: str = "batch_end"):
        self.batches = batches
        self.event = Event(event)

    def match(self, event, state):
        done = state.timestamp.batch + (1 if event == Event.AFTER_DATALOADER else 0)
        return event == self.event and done >= self.batches

    def apply(self, event, state, logger):
        state.stop_training()


class ShortRowsByKey(Algorithm):
    """Train on the first `short_len` tokens of every sequence, read and written through the batch
    helpers: by key, or with a (getter, setter) pair."""

    def __init__(self, short_len: int = 8, pair: bool = False):
        self.short_len = short_len
        self.pair = pair

    def match(self, event, state):
        return event == Event.AFTER_DATALOADER

    def apply(self, event, state, logger):
        key = "input_ids"
        if self.pair:
            key = (lambda batch: batch["input_ids"], lambda batch, value: {**batch, "input_ids": value})
        state.batch_set_item(key, state.batch_get_item(key)[:, :self.short_len])
