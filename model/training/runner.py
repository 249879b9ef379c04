"""A resumable training run: an `Experiment` trained into a run folder, epoch by epoch, with Keras `fit`.

    experiment = Experiment(data=load_my_data, plan=make_my_plan, seed=1)
    result = train(experiment, "runs/x")             # -> TrainingResult (the rows of history.csv)

An experiment says how to read the data and, once it is read, what the run is made of (a `TrainingPlan`:
keyword arguments of the library's components); the application edge builds it from params.json
(`model.app.adapter.experiment`), a Keras user can build it by hand. `train` owns the run's life: the
tf.distribute strategy, the run folder and its lock, the seed and the precision policy, the data, then
`train_run`. The run folder (`model.run`) keeps what is done: running the same experiment again resumes
from the last completed epoch (optimizer state included) and finishes the steps after the last epoch that
an interruption left undone; a finished run is left untouched (`RunComplete`), or trained on when
num_epochs was raised.

This module names no network family, loss or dataset: what a family needs besides `fit` comes as its
steps, what a loss logs and how its collapse shows is the loss's, how a split is validated is its
protocol's (`Validation`), and how training pairs are formed is the plan's batches and relation.
"""

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable

import keras
import tensorflow as tf

from model.registry import BOOL, INT, NONE, Option
from model.run import RunFolder, TrainingState
from model.training.callbacks import CacheRefresh, CollapseGuard, EpochEnd, StepProgress, TensorBoard
from model.training.distribute import DEFAULT_WORKER_TIMEOUT, is_chief, make_strategy, workers
from model.training.model import EmbeddingModel
from model.training.steps import StepContext, run_after_fit, run_before_fit

logger = logging.getLogger(__name__)


class RunComplete(Exception):
    """A finished run was started again unchanged: nothing to do."""


class TrainingDiverged(Exception):
    """The loss became NaN or infinite: the epoch was not recorded, the run keeps its last good epoch."""


def _identity(network):
    return network


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """What a training run is made of.

    The builders run under the tf.distribute strategy's scope, in this order: `network()` (the network that
    is saved), `trained_part(network)` (what the loss sees), then `loss(dimension)`, `memory(dimension)`,
    `center(dimension)` and `classification(dimension)` from the dimension of the trained part's output,
    `miner()` and `optimizer()`. A trained part with two outputs (f_t, f_i) (the strong baseline's BNNeck) gives
    f_t to the loss, the memory and the center loss and f_i to the classification head, each builder the
    dimension of its own; the validation then embeds with `network`, whose output is what evaluation sees.

    Attributes:
        network, trained_part, loss, optimizer: builders (see above).
        batches: `batches(start_step)`, the training batches from step `start_step` of their stream on.
        steps_per_epoch, num_epochs: the length of the run.
        splits: the splits trained on ({"train": Split, ...}), which the steps use.
        dataset: `dataset(split)`, the evaluation batches of a Split (for the steps).
        config: what trains the run, as a JSON-able dict (effective_params.json); once epochs are done only
            the keys in `resumable` may change; `complete(older_config)` fills in keys an older record lacks.
        class_names, report: the data's class mapping (classes.json) and report (data_report.csv).
        learning_rate: the rate (or schedule) of the optimizer, set again on a resumed optimizer.
        mining: "global" or "local" under several replicas (`EmbeddingModel`).
        memory, classification: builders of a `CrossBatchMemory` and a `SoftmaxLoss` head, or None.
        miner: builder of a miner (`model.losses.miners`) whose selection the loss trains on, or None.
        classification_weight: the weight of the head's cross-entropy.
        center, center_weight: a builder of a `CenterLoss` beside the loss, or None, and its weight.
        relation_fn: pairs by a relation instead of labels (`EmbeddingModel`), or None.
        cache: a `model.data.cached.FeatureCache` to refresh with the trained network, or None.
        validation: a `Validation` after each epoch, or None ("best" then follows the training loss).
        before_fit, after_fit: the network family's steps (`model.nets.family.Step`).
        seed: of the steps (k-means).
        save_summary_steps: TensorBoard logging interval in steps.
        stop_on_collapse: end training when the embeddings collapse.
        advice: what to look at when the loss diverges (named in the error).
    """

    network: Callable
    loss: Callable
    optimizer: Callable
    batches: Callable
    steps_per_epoch: int
    num_epochs: int
    splits: dict
    dataset: Callable
    config: dict = dataclasses.field(default_factory=dict)
    resumable: tuple = ()
    complete: Callable = dict
    class_names: list = dataclasses.field(default_factory=list)
    report: list = dataclasses.field(default_factory=list)
    learning_rate: object = None
    trained_part: Callable = _identity
    mining: str = "global"
    memory: Callable | None = None
    classification: Callable | None = None
    classification_weight: float = 1.0
    center: Callable | None = None
    center_weight: float = 1.0
    miner: Callable | None = None
    relation_fn: Callable | None = None
    cache: object = None
    validation: object = None
    before_fit: tuple = ()
    after_fit: tuple = ()
    seed: int = 0
    save_summary_steps: int = 100
    stop_on_collapse: bool = False
    advice: str = "Look at the learning rate (the usual cure is a lower one), its schedule and the loss's margin"


@dataclasses.dataclass
class TrainingResult:
    """What a run did: the rows of history.csv, the logged metric that picked best.keras, and on how many
    workers and replicas it trained."""

    rows: list
    best_key: str
    workers: int = 1
    replicas: int = 1


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What a training run is made of before its data is read.

    Attributes:
        data: `data(class_names) -> DataSource`: the data, keeping `class_names` (the mapping saved by an
            earlier start of the run, or None).
        plan: `plan(source, strategy, run) -> TrainingPlan` once the data is read.
        distribute: None, "mirrored" or "multi_worker" (`model.training.distribute.make_strategy`).
        classes_per_batch: P of P×K batches, which must split evenly among the replicas (None: not P×K).
        mining: "global" or "local" mining under several replicas (announced with the replicas).
        seed: Keras's global seed, set before anything is built.
        mixed_precision: train under Keras's "mixed_float16" policy.
        worker_timeout: under "multi_worker", seconds to wait for the other workers to start.
    """

    data: Callable
    plan: Callable
    distribute: str | None = None
    classes_per_batch: int | None = None
    mining: str = "global"
    seed: int = 0
    mixed_precision: bool = False
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT


@contextlib.contextmanager
def precision_policy(mixed):
    """Keras's global dtype policy "mixed_float16" while the block runs when `mixed`, restored after it."""
    previous = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def train(experiment, model_dir, restore_from=None):
    """Train `experiment` in the run folder `model_dir`; returns its `TrainingResult`.

    Under multi-worker training every worker calls this with the same arguments (a shared filesystem);
    only the chief writes the run folder.

    Args:
        experiment: an `Experiment`.
        model_dir: the run folder (created if missing).
        restore_from: another run folder whose best network starts this one (fresh optimizer).

    Raises:
        RunComplete: the run already has num_epochs epochs and every step after them.
        RunStateError: the run folder's record cannot be read; nothing is overwritten.
        RunLocked: another live process trains the same run folder.
        TrainingDiverged: the loss became NaN or infinite; the run keeps its last good epoch.
        ValueError: settings that do not fit the data, or a change of what trained the run's epochs.
    """
    # First: a multi-worker strategy must exist before other TensorFlow work.
    strategy = make_strategy(experiment.distribute, experiment.classes_per_batch, experiment.mining,
                             experiment.worker_timeout)
    run = RunFolder(model_dir, writer=is_chief(strategy))
    if run.writer:
        os.makedirs(run.root, exist_ok=True)
    keras.utils.set_random_seed(experiment.seed)
    with precision_policy(experiment.mixed_precision), run.lock():
        run.remove_partial_files()  # orphans of an interrupted start; nobody else writes here now
        source = experiment.data(run.class_names())
        return train_run(experiment.plan(source, strategy, run), run, strategy, restore_from)


def train_run(plan, run, strategy, restore_from=None):
    """Train `plan` into the run folder `run` (a `RunFolder`, held by the caller's lock) under `strategy`.

    Args:
        plan: a `TrainingPlan`.
        run: the RunFolder; under multi-worker training every worker calls this, and only the chief's
            `run.writer` is True.
        strategy: the tf.distribute strategy (`model.training.distribute.make_strategy`).
        restore_from: another run folder whose best network starts this one (fresh optimizer).

    Returns:
        TrainingResult.

    Raises:
        RunComplete: the run already has num_epochs epochs and every step after them.
        RunStateError: the run folder's record cannot be read; nothing is overwritten.
        TrainingDiverged: the loss became NaN or infinite; the run keeps its last good epoch.
        ValueError: a change of what trained the run's epochs.
    """
    network, loss, model, state, start = _build(plan, run, strategy, restore_from)
    context = StepContext(run, plan.splits, plan.dataset, plan.seed)
    try:
        if start and not isinstance(plan.learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            # A constant rate is a variable of the optimizer, restored with its state: the rate of the plan (maybe
            # lowered after a divergence) replaces it. A schedule is rebuilt from the plan anyway.
            model.optimizer.learning_rate = plan.learning_rate
        run.write_json("classes.json", list(plan.class_names))
        run.write_report(plan.report)
        if start >= plan.num_epochs:
            if not run_after_fit(plan.after_fit, context, start):
                raise RunComplete(f"{run.root} is complete ({start} of {plan.num_epochs} epochs); raise num_epochs "
                                  "to train on, or use another model_dir")
            return TrainingResult(state.rows, _best_key(plan), workers(strategy), strategy.num_replicas_in_sync)
        _begin(plan, network, context, start, restore_from)
        epoch_end = _fit(plan, model, network, loss, state, start)
    finally:
        state.close()
    if epoch_end.diverged:
        raise TrainingDiverged(_divergence_message(run, plan, epoch_end.diverged, len(state.rows)))
    run_after_fit(plan.after_fit, context, len(state.rows))
    return TrainingResult(state.rows, epoch_end.best_key, workers(strategy), strategy.num_replicas_in_sync)


def _best_key(plan):
    return plan.validation.key if plan.validation is not None else "loss"


def _build(plan, run, strategy, restore_from=None):
    """(network, loss, model, training state, completed epochs) of a run, restored, under `strategy`.

    The network is built, and a new run warm-started from `restore_from`, before anything is written, so a
    failed build or warm start leaves no half-made run; the configuration is checked against the one that
    trained the completed epochs before the state is read.
    """
    with strategy.scope():
        network = plan.network()
        if restore_from and _new_run(run):  # (else it is ignored: the run has its own checkpoint)
            warm_start(network, restore_from)
        trained = plan.trained_part(network)
        dimension, head_dimension = _dimensions(trained)
        loss = plan.loss(dimension)
        model = EmbeddingModel(trained, loss, mining=plan.mining,
                               memory=plan.memory(dimension) if plan.memory is not None else None,
                               relation_fn=plan.relation_fn,
                               classification=plan.classification(head_dimension) if plan.classification else None,
                               classification_weight=plan.classification_weight,
                               center=plan.center(dimension) if plan.center is not None else None,
                               center_weight=plan.center_weight,
                               miner=plan.miner() if plan.miner is not None else None)
        model.compile(optimizer=plan.optimizer())
        model(keras.ops.zeros((1, *network.input_shape[1:])))  # creates every variable before a restore
        run.record_config(plan.config, plan.resumable, plan.complete)  # refuses a change of what trained epochs
        state = TrainingState(run, model, model.optimizer)
        return network, loss, model, state, state.restore()  # restored in scope: optimizer slots are created


def _dimensions(trained):
    """(dimension of what the loss sees, of what the classification head sees) of the trained part: its one
    output twice, or its two outputs (f_t, f_i)."""
    shapes = trained.output_shape
    shapes = shapes if isinstance(shapes, list) else [shapes]
    if len(shapes) not in (1, 2):
        raise ValueError(f"the trained part of the network has {len(shapes)} outputs; expected one (the embeddings) "
                         "or two (the features of the loss, then those of the classification head)")
    return int(shapes[0][-1]), int(shapes[-1][-1])


def _new_run(run):
    """Whether the run folder holds no training state yet (a garbled one is not new: its restore says so)."""
    try:
        return tf.train.latest_checkpoint(run.state_dir) is None
    except Exception:  # noqa: BLE001 (a garbled checkpoints/state/checkpoint file)
        return False


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
    logger.info("warm start: weights from %s, fresh optimizer", path)


def _begin(plan, network, context, start, restore_from):
    """Before fit: say where the run starts (a new run was warm-started by `_build`), and the family's steps
    before fit."""
    if start:
        logger.info("resuming %s after epoch %d of %d", context.run.root, start, plan.num_epochs)
        if restore_from:
            logger.info("(--restore_from %s ignored: this run already has its own checkpoint)", restore_from)
    for summary in run_before_fit(plan.before_fit, network, context):
        logger.info("%s", summary)


def _fit(plan, model, network, loss, state, start):
    """Keras fit from epoch `start`; returns the EpochEnd callback (which knows whether it diverged)."""
    # A trained part with two outputs (f_t, f_i) is validated through the saved network (what evaluation sees).
    embedder = network if isinstance(model.network.output_shape, list) else model.network
    epoch_end = EpochEnd(state, network, plan.validation, plan.num_epochs, embedder=embedder)
    # StepProgress clears its line before EpochEnd's summary: it comes first at the end of an epoch.
    callbacks = [StepProgress(plan.num_epochs, plan.steps_per_epoch), epoch_end,
                 CollapseGuard(loss, stop=plan.stop_on_collapse), keras.callbacks.TerminateOnNaN()]
    if plan.cache is not None:
        callbacks.append(CacheRefresh(plan.cache))
    if state.run.writer:
        callbacks.append(TensorBoard(state.run.logs_dir, update_freq=plan.save_summary_steps))
    model.fit(
        plan.batches(start * plan.steps_per_epoch),
        epochs=plan.num_epochs,
        initial_epoch=start,
        steps_per_epoch=plan.steps_per_epoch,
        callbacks=callbacks,
        shuffle=False,  # the batches are already shuffled (or P×K sampled)
        # Keras's own bar would print every metric again and glue the summary to its line: StepProgress
        # draws the steps in a terminal, EpochEnd says the epoch (one line in a file, fitted to a terminal).
        verbose=0,
    )
    return epoch_end


def _divergence_message(run, plan, epoch, kept):
    if not kept:  # no checkpoint exists yet: none to name
        return (f"training diverged in epoch {epoch}: the loss became NaN or infinite. No epoch was completed, so "
                f"{run.root} holds no checkpoint. {plan.advice}, then run the same command to start again.")
    return (
        f"training diverged in epoch {epoch}: the loss became NaN or infinite. That epoch was not recorded; "
        f"{run.root} keeps epoch {kept} (checkpoints/latest.keras and its state). {plan.advice}, then run the same "
        f"command to resume after epoch {kept}."
    )


NUM_EPOCHS = Option("num_epochs", (INT,), 10, "epochs to train", positive=True)
STEPS_PER_EPOCH = Option("steps_per_epoch", (INT, NONE), None,
                         "steps per epoch; null = one pass over the training split", positive=True)
MIXED_PRECISION = Option("mixed_precision", (BOOL,), False, "mixed_float16 compute (GPUs); losses stay float32")
SEED = Option("seed", (INT,), 230, "random seed: same seed, same run")
SAVE_SUMMARY_STEPS = Option("save_summary_steps", (INT,), 100, "TensorBoard logging interval in steps", positive=True)
STOP_ON_COLLAPSE = Option("stop_on_collapse", (BOOL,), False, "end training when the embeddings collapse")
