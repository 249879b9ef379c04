"""Training: an experiment's params -> data, model, mined loss -> Keras fit, with everything a run needs.

    history = train(Params.load("experiments/base_model/params.json"), "experiments/base_model")

A run folder holds, next to its params.json:
    effective_params.json   the parameters with every default filled in
    classes.json            the class names, in label order (evaluation uses the same mapping)
    checkpoints/best.keras  the embedding network with the best validation precision@1
    checkpoints/latest.keras  the embedding network after the last completed epoch
    checkpoints/state/      network, optimizer and epoch (tf.train.Checkpoint), for resuming
    history.csv             one row per epoch: loss, mining statistics, validation metric, time
    logs/                   TensorBoard summaries (`tensorboard --logdir RUN`)
    centroids.npy           NetVLAD only: the k-means centroids that initialised the layer

Running the same command again resumes from the last completed epoch (optimizer state included);
a finished run is left untouched, or trained on when num_epochs was raised. Every file is written
to a temporary name and renamed into place, so an interruption never leaves a corrupt file.
"""

import csv
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from model import evaluation, netvlad
from model.data import load_source, make_dataset, steps_per_epoch
from model.losses import get_loss
from model.nets import build_model
from model.triplet_loss import embedding_statistics

TRIPLET_LOSSES = ("batch_all", "batch_hard", "batch_semihard")
# Collapse: pairs at less than this fraction of the embeddings' norm, or a batch-hard loss
# within this fraction of its margin, for COLLAPSE_PATIENCE consecutive steps.
COLLAPSE_RATIO = 1e-3
COLLAPSE_PATIENCE = 100
STATISTICS = ("hardest_positive_distance", "hardest_negative_distance", "mean_distance", "embedding_norm")


class RunComplete(Exception):
    """Raised (and reported by train.py) when a finished run is started again unchanged."""


@keras.saving.register_keras_serializable(package="metric_learning")
class ExponentialDecayFrom(keras.optimizers.schedules.LearningRateSchedule):
    """lr(t) = lr0 for t <= start, lr0 · rate^((t - start) / steps) after: the re-ID recipe
    (Hermans et al. 2017: decay from step 15,000 to 0.001·lr0 at step 25,000)."""

    def __init__(self, initial_learning_rate, decay_start, decay_steps, decay_rate):
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_start, self.decay_steps = int(decay_start), int(decay_steps)
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        progress = keras.ops.maximum(keras.ops.cast(step, "float32") - self.decay_start, 0.0) / self.decay_steps
        return self.initial_learning_rate * keras.ops.power(self.decay_rate, progress)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_start": self.decay_start,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
        }


def learning_rate(params):
    """The learning rate or schedule described by `lr_schedule` (validated by Params)."""
    schedule = params.lr_schedule
    if schedule["type"] == "exponential":
        return ExponentialDecayFrom(
            params.learning_rate, schedule["decay_start"], schedule["decay_steps"], schedule["decay_rate"]
        )
    if schedule["type"] == "step":
        boundaries = [int(b) for b in schedule["boundaries"]]
        values = [params.learning_rate * schedule["factor"] ** i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return params.learning_rate


def make_optimizer(params):
    rate = learning_rate(params)
    if params.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9)
    return {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW, "rmsprop": keras.optimizers.RMSprop}[
        params.optimizer
    ](rate)


def make_loss(params):
    """The Keras loss named by params.loss, with the options that apply to it."""
    if params.loss in TRIPLET_LOSSES:
        options = {"margin": params.margin, "squared": params.squared, "l2_normalize": params.l2_normalize}
    elif params.loss == "contrastive":
        options = {"margin": params.margin, "l2_normalize": params.l2_normalize}
    elif params.loss == "lifted":
        options = {"margin": params.margin}
    elif params.loss == "proxy_nca":
        options = {"num_classes": params.num_labels, "embedding_size": params.embedding_size}
    else:
        options = {}
    options.update(params.loss_options)
    try:
        return get_loss(params.loss, **options)
    except TypeError as error:
        raise ValueError(f'loss_options {params.loss_options} do not fit loss "{params.loss}": {error}') from None


class EmbeddingModel(keras.Model):
    """The embedding network trained with a mined loss; tracks mining statistics while it trains.

    `compute_loss` calls the loss's `compute(labels, embeddings)` once per batch and logs, besides
    the loss, what the loss reports (batch-all: `fraction_positive_triplets`) and the batch's
    `embedding_statistics` (hardest positive and negative distances, mean pairwise distance,
    embedding norm). A loss with learned parameters (Proxy-NCA's proxies) is tracked here so that
    the optimizer trains them and checkpoints hold them.
    """

    def __init__(self, network, loss, squared=False, **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.mined_loss = loss
        self.squared = squared
        self.proxy_layer = getattr(loss, "proxy_layer", None)
        names = list(STATISTICS)
        if loss.name_in_registry == "batch_all":
            names.insert(0, "fraction_positive_triplets")
        self.statistics = [keras.metrics.Mean(name=name) for name in names]

    def call(self, images, training=False):
        return self.network(images, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss, stats = self.mined_loss.compute(y, y_pred)
        stats.update(embedding_statistics(y, y_pred, self.squared))
        for tracker in self.statistics:
            tracker.update_state(stats[tracker.name])
        if self.losses:  # weight regularizers of the network
            loss = loss + keras.ops.sum(self.losses)
        # Keras sums the replicas' gradients under tf.distribute; each replica's loss is a mean over
        # its own batch, so it is divided by the number of replicas (Keras's Loss.__call__ does the same).
        return loss / tf.distribute.get_strategy().num_replicas_in_sync


def _atomic_save_model(network, path):
    temporary = f"{path[: -len('.keras')]}.partial.keras"
    network.save(temporary)
    os.replace(temporary, path)


def _atomic_write(path, text):
    temporary = f"{path}.partial"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


class RunState:
    """What a run folder remembers between invocations: epoch, best metric, history rows."""

    def __init__(self, model_dir, model, optimizer):
        self.model_dir = model_dir
        self.checkpoint_dir = os.path.join(model_dir, "checkpoints")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best = tf.Variable(-math.inf, dtype=tf.float64, trainable=False)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch, best=self.best)
        self.manager = tf.train.CheckpointManager(checkpoint, os.path.join(self.checkpoint_dir, "state"), max_to_keep=1)
        self.history_path = os.path.join(model_dir, "history.csv")
        self.rows = []

    def restore(self, model, optimizer):
        """Load the last saved state, if any; returns True when there was one."""
        if self.manager.latest_checkpoint is None:
            return False
        optimizer.build(model.trainable_variables)  # its slots must exist to receive their values
        self.manager.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        if os.path.exists(self.history_path):
            with open(self.history_path) as handle:
                rows = list(csv.DictReader(handle))
            # Rows written after the saved state (an interruption between the two) are dropped.
            self.rows = [row for row in rows if int(row["epoch"]) <= int(self.epoch.numpy())]
        return True

    def save(self, network, epoch, logs, improved):
        """End of an epoch: models first, then the state that points past them, then the history."""
        _atomic_save_model(network, os.path.join(self.checkpoint_dir, "latest.keras"))
        if improved:
            _atomic_save_model(network, os.path.join(self.checkpoint_dir, "best.keras"))
        self.epoch.assign(epoch)
        self.manager.save(checkpoint_number=epoch)
        self.rows.append({"epoch": epoch, **{key: f"{float(value):.6g}" for key, value in logs.items()}})
        fields = list(dict.fromkeys(key for row in self.rows for key in row))
        lines = [",".join(fields)] + [",".join(str(row.get(field, "")) for field in fields) for row in self.rows]
        _atomic_write(self.history_path, "\n".join(lines) + "\n")


class EpochEnd(keras.callbacks.Callback):
    """Validation precision@1, best/latest checkpoints, state and history, and one summary line.

    Runs first among the callbacks at the end of an epoch: it adds `val_precision_at_1` to the
    epoch's logs so that TensorBoard sees it too. Without a validation split, "best" follows the
    lowest training loss.
    """

    def __init__(self, state, network, validation, num_epochs):
        super().__init__()
        self.state, self.network, self.validation, self.num_epochs = state, network, validation, num_epochs
        self.started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if self.validation is not None:
            embeddings, labels = evaluation.embed(self.network, self.validation, verbose=False)
            logs["val_precision_at_1"] = evaluation.retrieval_metrics(embeddings, labels, ks=(1,))["precision_at_1"]
            score = logs["val_precision_at_1"]
        else:
            score = -logs["loss"]
        logs["epoch_seconds"] = time.time() - self.started
        improved = bool(score > self.state.best.numpy())
        if improved:
            self.state.best.assign(score)
        self.state.save(self.network, epoch + 1, logs, improved)
        summary = " - ".join(f"{key} {value:.4g}" for key, value in logs.items() if key != "epoch_seconds")
        print(
            f"epoch {epoch + 1}/{self.num_epochs}: {summary} - {logs['epoch_seconds']:.1f}s"
            + (" (best)" if improved else "")
        )


class CollapseGuard(keras.callbacks.Callback):
    """Warns when the embeddings collapse, and stops training if asked.

    Signs, held for COLLAPSE_PATIENCE consecutive steps: the mean pairwise distance falls below
    COLLAPSE_RATIO of the mean embedding norm (every point in one place), or a batch-hard loss
    stays within COLLAPSE_RATIO of its margin (hardest positive and negative at the same distance).
    """

    REMEDIES = (
        "Known remedies: a lower learning_rate; P×K batches (classes_per_batch, images_per_class) "
        "so that every anchor has positives; l2_normalize; batch_all before batch_hard (warm start "
        "with --restore_from); a soft margin."
    )

    def __init__(self, params, patience=None):
        super().__init__()
        self.margin = params.margin if params.loss == "batch_hard" and params.margin != "soft" else None
        self.stop = params.stop_on_collapse
        self.patience = patience or COLLAPSE_PATIENCE
        self.streak = 0
        self.fired = False

    def _collapsed(self, logs):
        distance, norm = logs.get("mean_distance"), logs.get("embedding_norm")
        if distance is not None and distance <= COLLAPSE_RATIO * max(norm or 0.0, 1e-6):
            return f"mean pairwise distance {distance:.3g} at embedding norm {norm:.3g}"
        if self.margin and abs(logs["loss"] - self.margin) <= COLLAPSE_RATIO * self.margin:
            return f"batch-hard loss pinned at the margin ({logs['loss']:.4g} vs {self.margin})"
        return None

    def on_train_batch_end(self, batch, logs=None):
        # Keras's batch logs are running means over the epoch so far: a collapse shows with a lag.
        reason = self._collapsed(logs or {})
        self.streak = self.streak + 1 if reason else 0
        if self.streak >= self.patience and not self.fired:
            self.fired = True
            print(f"\nWARNING: the embeddings have collapsed ({reason} for {self.streak} steps). {self.REMEDIES}")
            if self.stop:
                print("stop_on_collapse is set: training stops.")
                self.model.stop_training = True


def resolve_params(params, source):
    """Fill in what params leave to the data: image size, channels, number of classes."""
    image_size = params.image_size if params.image_size is not None else source.image_size
    if image_size is None:
        raise ValueError(f'dataset "{params.dataset}" has images of many sizes: set "image_size" in params.json')
    if isinstance(image_size, (tuple, list)):
        image_size = [int(v) for v in image_size]
    channels = params.channels
    if channels is None:
        channels = 3 if params.model in ("trinet", "netvlad") else source.channels
    # Train labels are 0..n-1 (classes seen only at test time come after them in class_names).
    train_classes = int(source.splits["train"].labels.max()) + 1
    num_labels = params.num_labels if params.num_labels is not None else train_classes
    return params.replace(image_size=image_size, channels=channels, num_labels=num_labels)


def load_data(params, model_dir):
    """The data source of a run, with the class mapping saved by an earlier start of it, if any."""
    classes_path = os.path.join(model_dir, "classes.json")
    saved = None
    if os.path.exists(classes_path):
        with open(classes_path) as handle:
            saved = json.load(handle)
    protocol_has_validation = params.dataset in ("mnist", "fashion_mnist", "digits", "folders")
    validation = params.validation_size if protocol_has_validation else 0
    return load_source(
        params.dataset,
        data_dir=params.data_dir,
        validation_size=validation,
        class_split=params.class_split,
        class_names=saved,
        positive_radius=params.positive_radius,
        seed=params.seed,
    )


def _train_split(params, source):
    split = source.splits["train"]
    if params.train_size is not None and params.train_size < len(split):
        split = split.take(np.random.default_rng(params.seed).permutation(len(split))[: params.train_size])
    return split


def _warm_start(network, restore_from):
    path = os.path.join(restore_from, "checkpoints", "best.keras")
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

    Args:
        params: a validated `Params`.
        model_dir: the run folder (created if missing).
        restore_from: another run folder whose best network starts this one (fresh optimizer).

    Raises:
        RunComplete: the run already has num_epochs epochs.
    """
    os.makedirs(os.path.join(model_dir, "checkpoints"), exist_ok=True)
    keras.utils.set_random_seed(params.seed)
    previous_policy = keras.mixed_precision.global_policy()
    if params.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return _train(params, model_dir, restore_from)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def training_dataset(params, split):
    """The endless training batches of `split` as params ask (P×K or shuffled, augmented); (dataset, batch size)."""
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
    )
    return dataset, params.classes_per_batch * params.images_per_class if pk_batches else params.batch_size


def _train(params, model_dir, restore_from):
    source = load_data(params, model_dir)
    params = resolve_params(params, source)
    params.save(os.path.join(model_dir, "effective_params.json"))
    _atomic_write(os.path.join(model_dir, "classes.json"), json.dumps(list(source.class_names)) + "\n")

    train_split = _train_split(params, source)
    train_data, batch = training_dataset(params, train_split)
    steps = params.steps_per_epoch or steps_per_epoch(train_split, batch)
    validation = None
    if "validation" in source.splits:
        labels = source.splits["validation"].labels
        if len(np.unique(labels)) < len(labels):
            validation = make_dataset(
                source.splits["validation"], image_size=params.image_size, channels=params.channels, training=False
            )
        else:
            print(
                "warning: no two validation images share a class, so precision@1 cannot be measured on it; "
                '"best" follows the training loss (raise validation_size)'
            )

    strategy = tf.distribute.MirroredStrategy() if params.distribute == "mirrored" else tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync > 1:
        # Each replica mines triplets within its own slice of the global batch (the loss is per replica).
        print(f"training on {strategy.num_replicas_in_sync} replicas: {list(strategy.extended.worker_devices)}")
    with strategy.scope():
        network = build_model(params)
        model = EmbeddingModel(network, make_loss(params), squared=params.squared)
        optimizer = make_optimizer(params)
        model.compile(optimizer=optimizer)
        model(keras.ops.zeros((1, *network.input_shape[1:])))  # creates every variable before a restore
        state = RunState(model_dir, model, optimizer)
        resumed = state.restore(model, optimizer)

    start = int(state.epoch.numpy())
    if resumed and start >= params.num_epochs:
        raise RunComplete(
            f"{model_dir} is complete ({start} of {params.num_epochs} epochs); raise num_epochs to train on, "
            "or use another model_dir"
        )
    if resumed:
        print(f"resuming {model_dir} after epoch {start} of {params.num_epochs}")
        if restore_from:
            print(f"(--restore_from {restore_from} ignored: this run already has its own checkpoint)")
    elif restore_from:
        _warm_start(network, restore_from)
    if params.model == "netvlad" and netvlad.needs_clustering(network):
        cluster_data = make_dataset(train_split, image_size=params.image_size, channels=params.channels, training=False)
        netvlad.cluster_netvlad(network, cluster_data, os.path.join(model_dir, "centroids.npy"), seed=params.seed)

    callbacks = [
        EpochEnd(state, network, validation, params.num_epochs),
        CollapseGuard(params),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.TensorBoard(os.path.join(model_dir, "logs"), update_freq=params.save_summary_steps),
    ]
    model.fit(
        train_data,
        epochs=params.num_epochs,
        initial_epoch=start,
        steps_per_epoch=steps,
        callbacks=callbacks,
        shuffle=False,  # the dataset is already shuffled (or P×K sampled) by make_dataset
        verbose=1,
    )
    if params.model == "netvlad" and params.netvlad_dim:
        _fit_whitening(params, source.splits.get("database", train_split), model_dir)
    return state.rows


def _fit_whitening(params, database, model_dir):
    """PCA-whitening of the best network's NetVLAD descriptors on the database images (NetVLAD paper)."""
    path = os.path.join(model_dir, "checkpoints", "best.keras")
    network = keras.models.load_model(path)
    images = make_dataset(database, image_size=params.image_size, channels=params.channels, training=False)
    netvlad.fit_whitening(network, images, params.netvlad_dim)
    _atomic_save_model(network, path)
    print(f"whitening to {params.netvlad_dim} dimensions fitted on {len(database)} database images: {path}")
