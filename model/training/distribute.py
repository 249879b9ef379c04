"""Training on several devices or machines with tf.distribute: the strategy, who writes, whose batches.

    strategy = make_strategy("mirrored", classes_per_batch=16)    # None: the default (one device)
    is_chief(strategy)                                             # whether this process writes the run folder
    dataset = distribute_batches(strategy, batches, split, start_step)

"multi_worker" reads the cluster from the TF_CONFIG environment variable (Slurm:
`tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=tf.distribute.cluster_resolver.
SlurmClusterResolver())` gives the same from Slurm's variables).
"""

import logging

import tensorflow as tf

from model.registry import NONE, STR, Option
from model.training.model import multi_worker

STRATEGIES = {"mirrored": tf.distribute.MirroredStrategy, "multi_worker": tf.distribute.MultiWorkerMirroredStrategy}

logger = logging.getLogger(__name__)


def make_strategy(distribute=None, classes_per_batch=None, mining="global"):
    """The tf.distribute strategy named by `distribute` (None: the default one), checked against the batches
    (P = `classes_per_batch` must split evenly among the replicas); its replicas announced."""
    strategy = STRATEGIES[distribute]() if distribute is not None else tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if replicas > 1:
        if classes_per_batch is not None and classes_per_batch % replicas:
            raise ValueError(
                f'classes_per_batch (P) = {classes_per_batch} is not divisible by the {replicas} replicas: '
                "each replica receives whole classes of the class-major P×K batch, P / replicas of them; set P to "
                f"a multiple of {replicas}"
            )
        logger.info("training on %d worker(s), %d replicas (%s mining): %s on this worker", workers(strategy),
                    replicas, mining, list(strategy.extended.worker_devices))
    return strategy


def _cluster(strategy):
    """(cluster resolver or None, {task type: addresses}): the cluster of a multi-worker strategy, else empty."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver, resolver.cluster_spec().as_dict() if resolver is not None else {}


def workers(strategy):
    """The number of workers (chief included) of `strategy`'s cluster, 1 without one."""
    _, cluster = _cluster(strategy)
    return sum(len(tasks) for name, tasks in cluster.items() if name in ("chief", "worker")) or 1


def is_chief(strategy):
    """Whether this process writes the run folder: always, but under multi-worker training, where only
    the chief does (the task "chief", or worker 0 of a cluster without one)."""
    resolver, cluster = _cluster(strategy)
    if not cluster or resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def distribute_batches(strategy, batches, split, start_step):
    """The training batches `fit` reads, from batch `start_step` of the stream on (a resumed run goes on with
    the batches an uninterrupted one would have seen); `batches` is a `model.data.TrainingBatches`.

    On one worker, the global batch: Keras splits it among the replicas, each a contiguous share, so whole
    classes of the class-major P×K batch. On several workers, each worker makes its own replicas' batches
    (`batches.share(replicas)`, a seed of its own) with `distribute_datasets_from_function`.
    """
    if not multi_worker(strategy):
        return batches.dataset(split, start_step)
    share = batches.share(strategy.num_replicas_in_sync)

    def worker_batches(context):
        return share.reseeded(context.input_pipeline_id).dataset(split, start_step)  # distinct streams

    return strategy.distribute_datasets_from_function(worker_batches)


DISTRIBUTE = Option("distribute", (STR, NONE), None,
                    'null; "mirrored" (the GPUs of one machine); "multi_worker" (machines of TF_CONFIG)',
                    choices=tuple(STRATEGIES))
