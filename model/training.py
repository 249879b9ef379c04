"""Training: an experiment's params -> data, model, mined loss -> Keras fit, into a run folder.

    history = train(Params.load("experiments/base_model/params.json"), "experiments/base_model")

What a run folder holds and how it is written is `model/run.py`'s business; what a model family needs
besides `fit` (a cluster step, a fitted projection) is `model/families.py`'s; what a loss logs and how
its collapse shows is the loss's (`model/losses.py`); how a dataset is evaluated is its protocol's
(`model/data/protocols.py`). This module puts them together and names none of them.

Running the same command again resumes from the last completed epoch (optimizer state included) and
finishes the steps after the last epoch that an interruption left undone; a finished run is left
untouched, or trained on when num_epochs was raised.
"""

import os

import keras
import tensorflow as tf

from model.callbacks import CollapseGuard, EpochEnd, TensorBoard, Validation
from model.data import check_trainable, make_dataset, steps_per_epoch
from model.data.protocols import PROTOCOLS
from model.families import FAMILIES, StepContext, resolve_params
from model.losses import SoftmaxLoss, loss_class
from model.memory import CrossBatchMemory
from model.optimization import learning_rate, make_optimizer
from model.progress import interactive
from model.run import RunFolder, TrainingState
from model.triplet_loss import embedding_statistics

STATISTICS = ("hardest_positive_distance", "hardest_negative_distance", "mean_distance", "embedding_norm")
# With several replicas: mine the global batch, or each replica's share. "cached" (one device) mines the batches
# themselves in a feature cache (model/data/cached.py); the batch is then mined as under "global".
MINING = ("global", "local", "cached")


class RunComplete(Exception):
    """Raised (and reported by train.py) when a finished run is started again unchanged."""


class EmbeddingModel(keras.Model):
    """The embedding network trained with a mined loss; tracks mining statistics while it trains.

    `compute_loss` calls the loss's `compute(labels, embeddings)` once per batch and logs, besides
    the loss, the statistics the loss declares (`loss.statistics`, e.g. batch-all's
    `fraction_positive_triplets`) and the batch's `embedding_statistics` (hardest positive and
    negative distances, mean pairwise distance, embedding norm). A loss with learned parameters
    (Proxy-NCA's proxies) is tracked here so that the optimizer trains them and checkpoints hold them.

    Under a tf.distribute strategy with several replicas, `mining="global"` mines the global batch:
    every replica gathers all replicas' embeddings and labels (`ReplicaContext.all_gather`) and
    evaluates the loss of the whole global batch. The gradient of all_gather sums the replicas'
    upstream gradients and hands each replica its own rows' share, so with the loss divided by the number of replicas,
    the gradients Keras sums across replicas are exactly the single-device gradient of the same
    global batch, for every loss and reduction. The loss is O(B²) in the batch,
    cheap next to the network, so computing it on each replica costs little. `mining="local"` mines
    each replica's share of the batch alone (anchors may lose their positives).

    With a `memory` (`model.memory.CrossBatchMemory`), the batch's anchors are mined against the batch
    and the memory (after its warm-up), the statistics describe what the loss saw, `memory_fill` is
    logged, and the batch (the gathered one under global mining) is enqueued after each training step.

    With a `relation_fn(labels, ref_labels) -> [B, R]` (1 positive, -1 negative, 0 neither; places trained
    by GPS, `Protocol.training_mining`), the loss and the statistics take their pairs from it, not from
    the equality of labels.

    With a `classification` head (a `model.losses.SoftmaxLoss`), `classification_weight` times its
    cross-entropy on the same batch is added to the loss, and `classification_loss` and `train_accuracy`
    are logged; its head is tracked here (trained, in the run's state), not part of the network.
    """

    def __init__(self, network, loss, mining="global", memory=None, relation_fn=None, classification=None,
                 classification_weight=1.0, **kwargs):
        super().__init__(**kwargs)
        if mining not in MINING:
            raise ValueError(f"mining={mining!r}: expected one of {MINING}")
        self.network = network
        self.mined_loss = loss
        self.mining = mining
        self.memory = memory  # a CrossBatchMemory or None; an attribute, so checkpoints hold it
        self.relation_fn = relation_fn
        self.squared = getattr(loss, "squared", False)
        self.proxy_layer = getattr(loss, "proxy_layer", None)
        # A softmax head, beside the loss or as the loss ("softmax"): an attribute, so it trains and is checkpointed.
        self.classification, self.classification_weight = classification, float(classification_weight)
        self.head_layer = getattr(classification or loss, "head_layer", None)
        head_names = ("classification_loss", *classification.statistics) if classification is not None else ()
        names = (*loss.statistics, *head_names, *STATISTICS, *(("memory_fill",) if memory is not None else ()))
        self.statistics = [keras.metrics.Mean(name=name) for name in names]

    def call(self, images, training=False):
        return self.network(images, training=training)

    # --- Keras 3 `fit` under MultiWorkerMirroredStrategy (keras-team/keras issue 20585) -------------
    # Two upstream bugs, worked around here only, each checked by a test of tests/test_distributed.py
    # that fails once Keras changes the code in question (then this workaround can go).

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras builds the model from the first batch reduced across replicas with MEAN, which fails
        on a multi-worker batch ("Attempt to convert a value (PerReplica...) to a Tensor"); this
        model is built before fit, and the first replica's share of the batch is what a build needs."""
        if iterator is not None and _multi_worker(self.distribute_strategy):
            local = self.distribute_strategy.experimental_local_results
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(lambda value: local(value)[0], next(batches))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        """Keras reduces each multi-worker log with `strategy.reduce("MEAN", log, axis=0)`, invalid for
        a scalar ("Invalid reduction dimension 0"); a log of shape [1] reduces to the same scalar."""
        logs = super().train_step(data)
        if _multi_worker(self.distribute_strategy):
            logs = {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        labels, embeddings = y, y_pred
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if self.mining == "global" and replicas > 1:
            context = tf.distribute.get_replica_context()
            embeddings = context.all_gather(embeddings, axis=0)  # [R·b, E], replica 0's rows first
            # Gathered as float32 (exact below 2^24): all_gather of an int32 tensor fails in a multi-worker
            # Keras train step ("destinations can not be empty", TF 2.21; tests/test_distributed.py notices a fix).
            labels = keras.ops.cast(context.all_gather(keras.ops.cast(labels, "float32"), axis=0), "int32")
        references = {}
        if self.memory is not None:  # the batch against the batch and the memory, then the batch is enqueued
            ref_labels, ref_embeddings = self.memory.references(labels, embeddings)
            references = {"ref_labels": ref_labels, "ref_embeddings": ref_embeddings}
        if self.relation_fn is not None:  # pairs by a relation (places: GPS distances), not by equal labels
            references["relation"] = self.relation_fn(labels, references.get("ref_labels", labels))
        loss, stats = self.mined_loss.compute(labels, embeddings, **references)
        if self.classification is not None:  # on the batch alone (gathered under global mining), not the memory
            head_loss, head_stats = self.classification.compute(labels, embeddings)
            loss = loss + self.classification_weight * head_loss
            stats.update(head_stats, classification_loss=head_loss)
        stats.update(embedding_statistics(labels, embeddings, self.squared, **references))
        if self.memory is not None:
            if training:
                self.memory.enqueue(labels, embeddings)
            stats["memory_fill"] = self.memory.fill_fraction()
        for tracker in self.statistics:
            tracker.update_state(stats[tracker.name])
        if self.losses:  # weight regularizers of the network
            loss = loss + keras.ops.sum(self.losses)
        # Keras sums the replicas' gradients under tf.distribute: each replica's loss (of its own share, or
        # of the whole gathered batch) is divided by the number of replicas (Keras's Loss.__call__ does too).
        return loss / replicas


def prepare(params, run):
    """(effective params, data source, splits trained on) of a run: the one way to get a run's data.

    The train split is cut to `train_size` (`RunFolder.load_source`); the class mapping of an earlier
    start of the run is kept; settings that can never form a pair or triplet on it are logged.
    """
    source = run.load_source(params)
    params = resolve_params(params, source)
    splits = source.splits
    check_trainable(params, splits["train"].labels, loss_class(params.loss).mines_in_batch)
    return params, source, splits


def _batch_size(params):
    return params.classes_per_batch * params.images_per_class if params.classes_per_batch else params.batch_size


def training_dataset(params, split, start_step=0, groups=None):
    """The endless training batches of `split` as params ask (P×K or shuffled, augmented), from batch
    `start_step` of the seeded stream on, P×K drawn from `groups` when given (`TrainingMining.groups`);
    (dataset, batch size)."""
    pk_batches = params.classes_per_batch is not None
    dataset = make_dataset(
        split,
        image_size=params.image_size,
        channels=params.channels,
        training=True,
        batch_size=None if pk_batches else params.batch_size,
        classes_per_batch=params.classes_per_batch,
        images_per_class=params.images_per_class,
        augment=params.augment or None,
        seed=params.seed,
        num_parallel_calls=params.num_parallel_calls or tf.data.AUTOTUNE,
        start_batch=start_step,
        groups=groups,
    )
    return dataset, _batch_size(params)


def make_validation(params, protocol, splits):
    """The protocol's validation after each epoch (`Validation`), or None (with the reason printed) when its
    metric cannot be measured."""
    if "validation" not in splits:
        return None
    problem = protocol.validation_problem(splits["validation"], params)
    if problem:
        print(f'warning: {problem}; "best" follows the training loss (raise validation_size)')
        return None
    dataset = make_dataset(splits["validation"], image_size=params.image_size, channels=params.channels, training=False)
    return Validation(protocol, splits["validation"], dataset, params)


def warm_start(network, restore_from):
    """Copy the weights of the best network of the run folder `restore_from` into `network`."""
    path = RunFolder(restore_from).checkpoint_path("best")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--restore_from {restore_from}: no {path} (train that run first)")
    other = keras.models.load_model(path)
    mine = [(w.path, tuple(w.shape)) for w in network.weights]
    theirs = [(w.path, tuple(w.shape)) for w in other.weights]
    if [shape for _, shape in mine] != [shape for _, shape in theirs]:
        differences = [(a, b) for a, b in zip(theirs, mine, strict=False) if a[1] != b[1]]
        first = differences[0] if differences else f"{len(theirs)} weights there, {len(mine)} here"
        raise ValueError(
            f"--restore_from {restore_from}: its network does not match this run's (first difference, "
            f"theirs vs ours: {first}). Warm starting needs the same model and sizes."
        )
    network.set_weights(other.get_weights())
    print(f"warm start: weights from {path}, fresh optimizer")


def train(params, model_dir, restore_from=None):
    """Train the experiment in `model_dir` with `params`; returns the rows of history.csv.

    Under multi-worker training every worker calls this with the same arguments (a shared filesystem);
    only the chief writes the run folder.

    Args:
        params: a validated `Params`.
        model_dir: the run folder (created if missing).
        restore_from: another run folder whose best network starts this one (fresh optimizer).

    Raises:
        RunComplete: the run already has num_epochs epochs and every step after them.
        RunStateError: the run folder's record cannot be read; nothing is overwritten.
        RunLocked: another live process trains the same run folder.
        TrainingDiverged: the loss became NaN or infinite; the run keeps its last good epoch.
        ValueError: params that do not fit the data, or a change of what trained the run's epochs.
    """
    strategy = make_strategy(params)  # first: a multi-worker strategy must exist before other TensorFlow work
    run = RunFolder(model_dir, writer=is_chief(strategy))
    if run.writer:
        os.makedirs(run.root, exist_ok=True)
    keras.utils.set_random_seed(params.seed)
    previous_policy = keras.mixed_precision.global_policy()
    if params.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with run.lock():
            run.remove_partial_files()  # orphans of an interrupted start; nobody else writes here now
            return _train(params, run, strategy, restore_from)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


class TrainingDiverged(Exception):
    """The loss became NaN or infinite: the epoch was not recorded, the run keeps its last good epoch."""


def _train(params, run, strategy, restore_from):
    params, source, splits = prepare(params, run)
    # Pairs by a relation instead of labels where the protocol has one (places trained by GPS), else None.
    protocol = PROTOCOLS[source.protocol]
    pairing = protocol.training_mining(splits["train"], params)
    family = FAMILIES[params.model]
    context = StepContext(params, run, splits)
    network, loss, model, state, start = _build(params, run, strategy, family, pairing)
    try:
        if start:
            _apply_learning_rate(model.optimizer, params)
        run.write_json("classes.json", list(source.class_names))
        run.write_report(source.report)
        if start >= params.num_epochs:
            if not _finish(family, context, start):
                raise RunComplete(
                    f"{run.root} is complete ({start} of {params.num_epochs} epochs); raise num_epochs to train "
                    "on, or use another model_dir"
                )
            return state.rows
        _begin(network, family, context, start, restore_from)
        validation = make_validation(params, protocol, splits)
        epoch_end = _fit(model, network, state, loss, params, splits, start, strategy, pairing, validation)
    finally:
        state.close()
    if epoch_end.diverged:
        raise TrainingDiverged(_divergence_message(run, params, epoch_end.diverged, len(state.rows)))
    _finish(family, context, len(state.rows))
    _summary(run, state.rows, strategy, epoch_end.best_key)
    return state.rows


def _build(params, run, strategy, family, pairing):
    """(network, loss, model, training state, completed epochs) of a run, restored, under `strategy`.

    The network is built before anything is written, so a failed build leaves no half-made run; the
    parameters are checked against those that trained the completed epochs before the state is read.
    """
    with strategy.scope():
        network = family.build(params)
        loss = loss_class(params.loss).from_params(params)
        trained = family.trained_part(network)
        memory = None
        if params.memory is not None:
            memory = CrossBatchMemory(params.memory["size"], int(trained.output_shape[-1]),
                                      params.memory["warmup_steps"], name="cross_batch_memory")
        classification = None
        if params.classification is not None:  # a softmax head beside the loss, outside the saved network
            classification = SoftmaxLoss(params.num_labels, int(trained.output_shape[-1]), name="classification")
        model = EmbeddingModel(trained, loss, mining=params.mining, memory=memory,
                               relation_fn=pairing and pairing.relation_fn, classification=classification,
                               classification_weight=(params.classification or {}).get("weight", 1.0))
        model.compile(optimizer=make_optimizer(params))
        model(keras.ops.zeros((1, *network.input_shape[1:])))  # creates every variable before a restore
        run.record_params(params)  # refuses a change of what trained the completed epochs
        state = TrainingState(run, model, model.optimizer)
        return network, loss, model, state, state.restore()  # restored in scope: optimizer slots are created


def make_strategy(params):
    """The tf.distribute strategy params ask for, checked against the batches; its replicas announced.

    "multi_worker" reads the cluster from the TF_CONFIG environment variable (Slurm:
    `tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=tf.distribute.cluster_resolver.
    SlurmClusterResolver())` gives the same from Slurm's variables).
    """
    if params.distribute == "multi_worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif params.distribute == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if replicas > 1:
        if params.classes_per_batch is not None and params.classes_per_batch % replicas:
            raise ValueError(
                f'classes_per_batch (P) = {params.classes_per_batch} is not divisible by the {replicas} replicas: '
                "each replica receives whole classes of the class-major P×K batch, P / replicas of them; set P to "
                f"a multiple of {replicas}"
            )
        print(f"training on {_workers(strategy)} worker(s), {replicas} replicas ({params.mining} mining): "
              f"{list(strategy.extended.worker_devices)} on this worker")
    return strategy


def _cluster(strategy):
    """(cluster resolver or None, {task type: addresses}): the cluster of a multi-worker strategy, else empty."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver, resolver.cluster_spec().as_dict() if resolver is not None else {}


def _workers(strategy):
    _, cluster = _cluster(strategy)
    return sum(len(tasks) for name, tasks in cluster.items() if name in ("chief", "worker")) or 1


def is_chief(strategy):
    """Whether this process writes the run folder: always, but under multi-worker training, where only
    the chief does (the task "chief", or worker 0 of a cluster without one)."""
    resolver, cluster = _cluster(strategy)
    if not cluster or resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def _multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and _workers(strategy) > 1


def _apply_learning_rate(optimizer, params):
    """A constant learning rate is a variable of the optimizer, restored with its state: the rate in
    params (maybe lowered after a divergence) replaces it. A schedule is rebuilt from params anyway."""
    rate = learning_rate(params)
    if not isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        optimizer.learning_rate = rate


def _divergence_message(run, params, epoch, kept):
    return (
        f"training diverged in epoch {epoch}: the loss became NaN or infinite. That epoch was not recorded; "
        f"{run.root} keeps epoch {kept} (checkpoints/latest.keras and its state). Look at learning_rate "
        f"({params.learning_rate}; the usual cure is a lower one), lr_schedule ({params.lr_schedule}) and margin "
        f"({params.margin}) in {run.params_path}, then run the same command to resume after epoch {kept}."
    )


def _summary(run, rows, strategy, metric):
    """The last lines of a run: its best epoch by `metric` (the validation metric, or "loss"), where the
    checkpoints are, what to run next."""
    if strategy.num_replicas_in_sync > 1:
        print(f"trained on {_workers(strategy)} worker(s) with {strategy.num_replicas_in_sync} replicas in all")
    if not all(row.get(metric) for row in rows):  # epochs recorded before the run had this validation
        metric = "loss"
    pick = max if metric != "loss" else min
    best = pick(rows, key=lambda row: float(row[metric]))
    print(f"best epoch {best['epoch']} of {len(rows)}: {metric} {float(best[metric]):.4g}")
    print(f"checkpoints: {run.checkpoint_path('best')} and {run.checkpoint_path('latest')}")
    print(f"next: python evaluate.py --model_dir {run.root}   (and visualize_embeddings.py --model_dir {run.root})")


def _begin(network, family, context, start, restore_from):
    """Before fit: say where the run starts, warm start, and the family's steps before fit."""
    if start:
        print(f"resuming {context.run.root} after epoch {start} of {context.params.num_epochs}")
        if restore_from:
            print(f"(--restore_from {restore_from} ignored: this run already has its own checkpoint)")
    elif restore_from:
        warm_start(network, restore_from)
    for step in family.before_fit:
        summary = step(network, context)
        if summary:
            print(summary)


def _fit(model, network, state, loss, params, splits, start, strategy, pairing=None, validation=None):
    """Keras fit from epoch `start`, batches as the protocol's `pairing` says (a `TrainingMining`) when given,
    `validation` after each epoch; returns the EpochEnd callback (which knows whether it diverged)."""
    steps = params.steps_per_epoch or steps_per_epoch(splits["train"], _batch_size(params))
    if pairing is not None and pairing.batches is not None:  # batches mined by the protocol (cached mining)
        train_data = pairing.batches(start * steps)
    else:
        train_data = _training_batches(params, splits["train"], strategy, start * steps, pairing and pairing.groups)
    epoch_end = EpochEnd(state, network, validation, params.num_epochs, embedder=model.network)
    callbacks = [epoch_end, CollapseGuard(loss, stop=params.stop_on_collapse), keras.callbacks.TerminateOnNaN(),
                 *(pairing.callbacks if pairing is not None else ())]
    if state.run.writer:
        callbacks.append(TensorBoard(state.run.logs_dir, update_freq=params.save_summary_steps))
    model.fit(
        train_data,
        epochs=params.num_epochs,
        initial_epoch=start,
        steps_per_epoch=steps,
        callbacks=callbacks,
        shuffle=False,  # the dataset is already shuffled (or P×K sampled) by make_dataset
        # A progress bar in a terminal; in a file (a job log, `> log`) EpochEnd's one line per epoch.
        verbose=1 if interactive() else 0,
    )
    return epoch_end


def _training_batches(params, split, strategy, start_step, groups=None):
    """The training batches fit reads, from batch `start_step` of the stream on (a resumed run goes on
    with the batches an uninterrupted one would have seen).

    On one worker, the global batch: Keras splits it among the replicas, each a contiguous share, so
    whole classes of the class-major P×K batch. On several workers, each worker makes its own
    replicas' batches (P / replicas classes each, a seed of its own) with `distribute_datasets_from_function`.
    """
    if not _multi_worker(strategy):
        return training_dataset(params, split, start_step=start_step, groups=groups)[0]
    replicas = strategy.num_replicas_in_sync
    if params.classes_per_batch is not None:
        share = params.replace(classes_per_batch=params.classes_per_batch // replicas)
    else:
        share = params.replace(batch_size=max(1, params.batch_size // replicas))

    def batches(context):
        worker = share.replace(seed=params.seed + 7919 * context.input_pipeline_id)  # distinct streams
        return training_dataset(worker, split, start_step=start_step, groups=groups)[0]

    return strategy.distribute_datasets_from_function(batches)


def _finish(family, context, epoch):
    """After the last epoch: run the family's steps not yet recorded for `epoch`; returns whether any ran."""
    done = context.run.steps()
    pending = [
        step
        for step in family.after_fit
        if step.applies(context.params) and done.get(step.name, {}).get("epoch") != int(epoch)
    ]
    for step in pending:
        if context.run.writer:  # steps after fit work on the saved checkpoints: the chief's business
            print(step.run(context))
        context.run.record_step(step.name, epoch=int(epoch))
    return bool(pending)
