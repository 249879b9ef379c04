"""The steps of a run besides its epochs (a network family's, `model.nets.family.Step`): the one loop before
fit and the one after it.

    context = StepContext(run, splits, dataset=lambda split: make_dataset(split, ...), seed=230)
    run_before_fit(before, network, context)     # e.g. NetVLAD's k-means; the steps' summaries
    run_after_fit(after, context, epoch)         # e.g. NetVLAD's whitening; recorded in steps.json
"""

import dataclasses
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StepContext:
    """What a step may use: the run folder, the splits trained on, their evaluation batches, the seed."""

    run: object
    splits: dict
    dataset: Callable  # dataset(split) -> the evaluation batches of a Split (in order, no augmentation)
    seed: int = 0


def run_before_fit(steps, network, context):
    """Run each step before fit on `network`; returns their one-line summaries (those that have one)."""
    return [summary for summary in (step.run(network, context) for step in steps) if summary]


def run_after_fit(steps, context, epoch):
    """After the last epoch: run the steps not yet recorded for `epoch` (steps.json), record them; returns
    whether any ran. Only the process that writes the run folder runs them (they work on its checkpoints)."""
    done = context.run.steps()
    pending = [step for step in steps if done.get(step.name, {}).get("epoch") != int(epoch)]
    for step in pending:
        if context.run.writer:
            logger.info("%s", step.run(context))
        context.run.record_step(step.name, epoch=int(epoch))
    return bool(pending)
