"""Training on several devices or machines with tf.distribute: the strategy, who writes, whose batches.

    strategy = make_strategy("mirrored", classes_per_batch=16)    # None: the default (one device)
    is_chief(strategy)                                             # whether this process writes the run folder
    dataset = distribute_batches(strategy, batches, split, start_step)

"multi_worker" reads the cluster from the TF_CONFIG environment variable (Slurm:
`tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=tf.distribute.cluster_resolver.
SlurmClusterResolver())` gives the same from Slurm's variables).

Starting and stopping several workers. TensorFlow's coordination service and collective ops block in C++:
a worker whose peer never starts used to wait inside `MultiWorkerMirroredStrategy()` without a word, and
Python's signal handlers, which run only when the main thread comes back to the interpreter, never ran
(TensorFlow's preemption notifier also takes SIGTERM for itself): only `kill -9` ended it. So, for
"multi_worker", `make_strategy` does three things before the strategy exists:
  1. `cluster_config` reads and checks TF_CONFIG: unset, empty, not JSON, without "cluster" or without a
     "task" of the cluster is an error naming the variable (without a cluster every machine would train a
     model of its own, and say nothing);
  2. `exit_on_signals` carries SIGTERM and SIGINT through `signal.set_wakeup_fd` to a watcher thread, which
     logs one line and ends the process with `os._exit` (143 or 130) whatever the main thread is blocked in.
     Ending there loses nothing: every file of a run folder is written to a temporary name and renamed
     (model/atomic.py, the state's checkpoint manager), leftovers are removed at the next start, and a
     lock whose process is gone is taken over, so the run folder stays resumable. The handlers are installed
     again once the strategy exists, over TensorFlow's;
  3. `wait_for_peers` listens on this worker's own address (so that the others see it waiting) and connects
     to every other worker's address until each answers, saying "waiting for worker 1 at host:port (n s)"
     every 5 seconds, and gives up after `worker_timeout` seconds with `WorkerTimeout` naming the worker.
Then the strategy is created and its server takes the port over. A worker lost mid-run (crashed, killed)
makes TensorFlow's heartbeat check abort the others' collective ops with an `UnavailableError` naming its
task, some seconds later; `lost_worker` turns it into `WorkerLost`: one line naming the worker, its address
and how to resume.
"""

import json
import logging
import os
import re
import signal
import socket
import threading
import time

import tensorflow as tf

from model.registry import NONE, STR, Option
from model.training.model import multi_worker

STRATEGIES = {"mirrored": tf.distribute.MirroredStrategy, "multi_worker": tf.distribute.MultiWorkerMirroredStrategy}

logger = logging.getLogger(__name__)

# How long a worker waits for the others to start (seconds): train.py --worker_timeout.
DEFAULT_WORKER_TIMEOUT = 300.0
_SAY_EVERY = 5.0  # seconds between the "waiting for worker ..." lines
_TF_CONFIG_FORM = '{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}'


class ClusterError(RuntimeError):
    """The workers of a multi-worker run cannot train together (one never started, or one was lost)."""


class WorkerTimeout(ClusterError):
    """A worker of TF_CONFIG did not answer within the timeout."""


class WorkerLost(ClusterError):
    """A worker stopped answering while the run trained."""


def make_strategy(distribute=None, classes_per_batch=None, mining="global", worker_timeout=DEFAULT_WORKER_TIMEOUT):
    """The tf.distribute strategy named by `distribute` (None: the default one), checked against the batches
    (P = `classes_per_batch` must split evenly among the replicas); its replicas announced.

    "multi_worker" first checks TF_CONFIG, makes SIGTERM and SIGINT end the process at any moment, and waits
    up to `worker_timeout` seconds for the other workers (see the module docstring).

    Raises:
        ValueError: TF_CONFIG is missing or malformed, or P does not split among the replicas.
        WorkerTimeout: a worker did not start within `worker_timeout` seconds.
    """
    if distribute == "multi_worker":
        cluster, task_type, task_index = cluster_config()
        exit_on_signals()
        wait_for_peers(cluster, task_type, task_index, worker_timeout)
        strategy = STRATEGIES[distribute]()
        exit_on_signals()  # again, over the SIGTERM handler of TensorFlow's preemption notifier
    else:
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


def _peers(cluster, task_type, task_index):
    """[(name, index, address)] of the other chief and workers of `cluster`."""
    return [(name, index, address) for name in ("chief", "worker")
            for index, address in enumerate(cluster.get(name, ())) if (name, index) != (task_type, task_index)]


def _answers(address):
    try:
        with socket.create_connection(_split_address(address), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for_peers(cluster, task_type, task_index, timeout=DEFAULT_WORKER_TIMEOUT):
    """Wait until every other worker of `cluster` answers at its address, listening at this one's meanwhile
    (see the module docstring); log "waiting for worker 1 at host:port (n s)" every few seconds.

    Raises:
        ValueError: this worker's port is taken by another process.
        WorkerTimeout: naming the workers that did not answer within `timeout` seconds.
    """
    own = cluster[task_type][task_index]
    waiting = _peers(cluster, task_type, task_index)
    if not waiting:
        return
    host, port = _split_address(own)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", port))
        listener.listen(64)
    except OSError as error:
        listener.close()
        raise ValueError(f"TF_CONFIG: this worker's address {own} ({task_type} {task_index}) cannot be listened "
                         f"on: {error.strerror or error} (is another process using port {port}?)") from None
    try:
        start = said = time.monotonic()
        first = True
        while True:
            waiting = [peer for peer in waiting if not _answers(peer[2])]
            elapsed = time.monotonic() - start
            if not waiting:
                if elapsed >= _SAY_EVERY:
                    logger.info("every worker answered after %d s", elapsed)
                return
            if elapsed >= timeout:
                listed = ", ".join(f"{name} {index} at {address}" for name, index, address in waiting)
                raise WorkerTimeout(f"{listed} did not answer within {timeout:g} s (--worker_timeout): start "
                                    f"{'it' if len(waiting) == 1 else 'them'} with the same command and TF_CONFIG "
                                    "(its own task index), or give a longer --worker_timeout")
            if first or time.monotonic() - said >= _SAY_EVERY:
                first, said = False, time.monotonic()
                for name, index, address in waiting:
                    logger.info("waiting for %s %d at %s (%d s)", name, index, address, elapsed)
            time.sleep(0.5)
    finally:
        listener.close()


_signals = {"pipe": None}


def exit_on_signals():
    """End the process at once on SIGTERM (exit 143) or SIGINT (exit 130), whatever the main thread is doing
    (see the module docstring); call it from the main thread. Calling it again installs the handlers again."""
    if threading.current_thread() is not threading.main_thread():
        return
    if _signals["pipe"] is None:
        read, write = os.pipe()
        os.set_blocking(write, False)
        _signals["pipe"] = read, write
        threading.Thread(target=_exit_on_signal, args=(read,), name="exit-on-signal", daemon=True).start()
    signal.set_wakeup_fd(_signals["pipe"][1], warn_on_full_buffer=False)
    for number in (signal.SIGTERM, signal.SIGINT):
        if number == signal.SIGINT and signal.getsignal(number) is signal.SIG_IGN:
            continue  # a background job of a shell ignores Ctrl-C, as Python leaves it
        signal.signal(number, _carried)


def _carried(number, frame):
    """The Python-level handler: nothing to do, the wakeup fd has carried the signal to the watcher."""


def _exit_on_signal(read):
    while True:
        received = os.read(read, 1)
        if received and received[0] in (signal.SIGTERM, signal.SIGINT):
            break
    number = received[0]
    logger.error("stopped by %s. Every file of the run folder is whole (written atomically): start every worker "
                 "again with the same command to resume after the last completed epoch", signal.Signals(number).name)
    for handler in logging.getLogger().handlers + logging.getLogger("model").handlers:
        handler.flush()
    os._exit(128 + number)


def lost_worker(error, environ=None):
    """`WorkerLost` for TensorFlow's `error` when a worker of TF_CONFIG stopped answering (its task named in the
    error), or None when `error` is not that."""
    text = str(error)
    if not isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)) and \
            "Collective ops is aborted" not in text:
        return None
    try:
        cluster, own_type, own_index = cluster_config(environ)
    except ValueError:
        cluster, own_type, own_index = {}, None, None
    # The tasks the error names, the unhealthy ones first, this worker's own devices left out.
    named = re.findall(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)", text.split("unhealthy", 1)[-1]) + \
        re.findall(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)", text)
    others = [(name, int(index)) for name, index in named if (name, int(index)) != (own_type, own_index)]
    peers = _peers(cluster, own_type, own_index) if cluster else []
    if not others and len(peers) == 1:  # two workers: the other one
        others = [peers[0][:2]]
    if others:
        name, index = others[0]
        addresses = cluster.get(name, [])
        who = f"{name} {index}" + (f" at {addresses[index]}" if index < len(addresses) else "")
    else:
        who = "a worker"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    first = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", first)[:200]
    return WorkerLost(f"{who} stopped answering (it crashed or was stopped; TensorFlow: {first}): the run cannot go "
                      "on without it. Start every worker again with the same command to resume after the last "
                      "completed epoch")


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
