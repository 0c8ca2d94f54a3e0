"""The events of a training run, in the order the trainer fires them (Composer's set).

    INIT                              model built; algorithms convert it here (surgery)
    BEFORE_LOAD, AFTER_LOAD           around restoring a checkpoint (fired even when none)
    FIT_START
    for epoch:
        EPOCH_START
        for batch:
            BEFORE_DATALOADER, AFTER_DATALOADER     state.batch holds the full batch after
            BATCH_START
            BEFORE_TRAIN_BATCH
            for microbatch:                         once per microbatch:
                BEFORE_FORWARD, AFTER_FORWARD           state.outputs
                BEFORE_LOSS, AFTER_LOSS                 state.loss
                BEFORE_BACKWARD, AFTER_BACKWARD
            AFTER_TRAIN_BATCH                       gradients complete, before optimizer.step
            BATCH_END                               after optimizer.step and scheduler.step
            [EVAL_START
             for eval batch:
                 EVAL_BATCH_START, EVAL_BEFORE_FORWARD, EVAL_AFTER_FORWARD, EVAL_BATCH_END
             EVAL_END]                              at each eval interval
            BATCH_CHECKPOINT                        after a checkpoint is due / saved (after the
                                                    step's evaluation, as in Composer, so a saved
                                                    step's eval record is never lost to a kill)
        EPOCH_END
        EPOCH_CHECKPOINT
    FIT_END
"""

import enum


class Event(str, enum.Enum):
    INIT = "init"
    BEFORE_LOAD = "before_load"
    AFTER_LOAD = "after_load"
    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    BEFORE_DATALOADER = "before_dataloader"
    AFTER_DATALOADER = "after_dataloader"
    BATCH_START = "batch_start"
    BEFORE_TRAIN_BATCH = "before_train_batch"
    BEFORE_FORWARD = "before_forward"
    AFTER_FORWARD = "after_forward"
    BEFORE_LOSS = "before_loss"
    AFTER_LOSS = "after_loss"
    BEFORE_BACKWARD = "before_backward"
    AFTER_BACKWARD = "after_backward"
    AFTER_TRAIN_BATCH = "after_train_batch"
    BATCH_END = "batch_end"
    BATCH_CHECKPOINT = "batch_checkpoint"
    EPOCH_END = "epoch_end"
    EPOCH_CHECKPOINT = "epoch_checkpoint"
    EVAL_START = "eval_start"
    EVAL_BATCH_START = "eval_batch_start"
    EVAL_BEFORE_FORWARD = "eval_before_forward"
    EVAL_AFTER_FORWARD = "eval_after_forward"
    EVAL_BATCH_END = "eval_batch_end"
    EVAL_END = "eval_end"
    FIT_END = "fit_end"
