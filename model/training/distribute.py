"""Training on several devices or machines with tf.distribute: the strategy, who writes, whose batches.

    strategy = make_strategy("mirrored", classes_per_batch=16)    # None: the default (one device)
    is_chief(strategy)                                             # whether this process writes the run folder
    dataset = distribute_batches(strategy, batches, split, start_step)

"multi_worker" reads the cluster from the TF_CONFIG environment variable (Slurm:
`tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=tf.distribute.cluster_resolver.
SlurmClusterResolver())` gives the same from Slurm's variables).

"multi_worker" checks TF_CONFIG first (`cluster_config`): unset, empty, not JSON, without "cluster" or
without a "task" of the cluster is an error naming the variable (without a cluster every machine would train
a model of its own, and say nothing).
"""

import json
import logging
import os

import tensorflow as tf

from model.registry import NONE, STR, Option
from model.training.model import multi_worker

STRATEGIES = {"mirrored": tf.distribute.MirroredStrategy, "multi_worker": tf.distribute.MultiWorkerMirroredStrategy}

logger = logging.getLogger(__name__)

_TF_CONFIG_FORM = '{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}'


def make_strategy(distribute=None, classes_per_batch=None, mining="global"):
    """The tf.distribute strategy named by `distribute` (None: the default one), checked against the batches
    (P = `classes_per_batch` must split evenly among the replicas); its replicas announced.

    "multi_worker" first checks TF_CONFIG (`cluster_config`).

    Raises:
        ValueError: TF_CONFIG is missing or malformed, or P does not split among the replicas.
    """
    if distribute == "multi_worker":
        cluster_config()
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


def cluster_config(environ=None):
    """(cluster {task type: [addresses]}, task type, task index) of the TF_CONFIG variable of `environ`
    (default `os.environ`); ValueError naming TF_CONFIG when it is unset, empty, not JSON, or lacks a cluster
    of workers or this process's task in it."""
    environ = os.environ if environ is None else environ
    value = environ.get("TF_CONFIG", "")
    expected = f"expected TF_CONFIG='{_TF_CONFIG_FORM}' on every worker, each with its own task index"
    if not value.strip():
        raise ValueError(f'"distribute": "multi_worker" needs the cluster in the TF_CONFIG environment variable, '
                         f"which is {'empty' if 'TF_CONFIG' in environ else 'not set'} (without it every machine "
                         f"would train a model of its own): {expected}")
    try:
        config = json.loads(value)
    except ValueError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {expected}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f'TF_CONFIG has no "cluster" (got {value[:200]!r}): {expected}')
    for name, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and _split_address(a) for a in addresses):
            raise ValueError(f'TF_CONFIG: cluster "{name}" is {addresses!r}; expected a list of "host:port" addresses')
    if not cluster.get("worker") and not cluster.get("chief"):
        raise ValueError(f'TF_CONFIG: the cluster has no "worker" (nor "chief") addresses: {expected}')
    task = config.get("task")
    task_type = task.get("type") if isinstance(task, dict) else None
    task_index = task.get("index", 0) if isinstance(task, dict) else None
    if (task_type not in cluster or isinstance(task_index, bool) or not isinstance(task_index, int)
            or not 0 <= task_index < len(cluster[task_type])):
        raise ValueError(f'TF_CONFIG: "task" is {task!r}; expected {{"type": one of {sorted(cluster)}, "index": '
                         "this worker's position in its list}")
    return cluster, task_type, task_index


def _split_address(address):
    """(host, port) of "host:port" ("[::1]:port" for IPv6), or None."""
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


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
