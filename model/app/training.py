"""Training an experiment: params.json -> an `Experiment` -> the resumable run, into a run folder.

    result = train(Params.load("experiments/base_model/params.json"), "experiments/base_model")
    print("\n".join(summary("experiments/base_model", result)))

What a run folder holds is `model.run`'s business; what a run is made of is the experiment the adapter
builds (`model.app.adapter.experiment`); training it is `model.training.runner.train`. Running the same
command again resumes from the last completed epoch and finishes the steps after the last epoch that an
interruption left undone; a finished run is left untouched, or trained on when num_epochs was raised.
"""

import dataclasses
import logging

import tensorflow as tf

from model.app import adapter
from model.run import RunFolder
from model.training import distribute, runner

logger = logging.getLogger(__name__)


def train(params, model_dir, restore_from=None, worker_timeout=distribute.DEFAULT_WORKER_TIMEOUT):
    """Train the experiment of `params` in `model_dir` (`model.training.runner.train`); returns its
    `TrainingResult` (the rows of history.csv, the metric that picked best.keras). Under "multi_worker" each
    worker waits up to `worker_timeout` seconds for the others (`model.training.distribute`).

    Raises what `model.training.runner.train` raises: RunComplete, RunStateError, RunLocked,
    TrainingDiverged, ValueError (params that do not fit the data, a change of what trained the epochs),
    and `distribute.ClusterError` (a worker that never started, or was lost mid-run).
    """
    for note in params.ignored():
        logger.warning("%s: %s", params.source, note)
    experiment = dataclasses.replace(adapter.experiment(params), worker_timeout=worker_timeout)
    try:
        return runner.train(experiment, model_dir, restore_from)
    except tf.errors.OpError as error:
        lost = distribute.lost_worker(error) if params.distribute == "multi_worker" else None
        if lost is None:
            raise
        raise lost from None


def summary(model_dir, result):
    """The last lines of a run: its best epoch by the metric that picked best.keras (the validation metric, or
    "loss"), where the checkpoints are, what to run next."""
    run, rows, metric = RunFolder(model_dir), result.rows, result.best_key
    lines = []
    if result.replicas > 1:
        lines.append(f"trained on {result.workers} worker(s) with {result.replicas} replicas in all")
    if not rows:
        return lines
    if not all(row.get(metric) for row in rows):  # epochs recorded before the run had this validation
        metric = "loss"
    pick = max if metric != "loss" else min
    best = pick(rows, key=lambda row: float(row[metric]))
    lines.append(f"best epoch {best['epoch']} of {len(rows)}: {metric} {float(best[metric]):.4g}")
    lines.append(f"checkpoints: {run.checkpoint_path('best')} and {run.checkpoint_path('latest')}")
    lines.append(f"next: python evaluate.py --model_dir {run.root}   (and visualize_embeddings.py --model_dir "
                 f"{run.root})")
    return lines
