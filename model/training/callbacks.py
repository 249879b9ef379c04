"""The callbacks of a training run: the end of each epoch (validation, checkpoints, record, one line),
the collapse guard, TensorBoard, and the refresh of a feature cache.

    validation = Validation(protocol, split, dataset)       # the protocol's validation metric
    callbacks = [EpochEnd(state, network, validation, num_epochs), CollapseGuard(loss, stop=False)]

They speak through `logging` (the command lines show it): one line per epoch, and warnings.
"""

import dataclasses
import logging
import math
import time

import keras

from model.progress import clear, redraw, terminal_width
from model.retrieval.embed import embed

logger = logging.getLogger(__name__)

# Collapse: pairs at less than this fraction of the embeddings' norm, for COLLAPSE_PATIENCE steps. Healthy
# Fashion-MNIST runs kept more than 0.5 (tests/data/collapse_runs.json); a NetVLAD places run that collapsed
# at learning rate 0.01 had 0.018.
COLLAPSE_RATIO = 0.05
COLLAPSE_PATIENCE = 100


@dataclasses.dataclass
class Validation:
    """A held-out split measured by its protocol after each epoch (`model.evaluation.protocols`).

    Attributes:
        protocol: the dataset's Protocol (its `validation_metrics` and `validation_key`).
        split: the held-out Split.
        dataset: its finite evaluation batches, in split order.
    """

    protocol: object
    split: object
    dataset: object

    @property
    def key(self):
        """The logged metric that picks best.keras (higher is better)."""
        return self.protocol.validation_key

    def measure(self, embedder):
        """{logged name: float}: the protocol's validation metrics of the split embedded by `embedder`."""
        embeddings, _ = embed(embedder, self.dataset, verbose=False)
        return self.protocol.validation_metrics(self.split, embeddings)


class EpochEnd(keras.callbacks.Callback):
    """The protocol's validation metrics, best/latest checkpoints, state and history, and one summary line.

    Runs first among the callbacks at the end of an epoch: it adds the validation metrics (e.g.
    `val_precision_at_1`, `val_mAP`, `val_recall_at_1`) to the epoch's logs so that TensorBoard sees
    them too; "best" follows `validation.key`, or without a validation the lowest training loss. An
    epoch whose loss or statistics are not finite (a divergence, stopped mid-epoch by TerminateOnNaN)
    is not recorded: training stops and `diverged` holds its number.

    Args:
        state: the run's `TrainingState` (`model.run.state`), which saves the epoch.
        network: the network saved as best.keras and latest.keras.
        validation: a `Validation`, or None.
        num_epochs: the run's number of epochs, for the summary line.
        embedder: the network that embeds the validation images (what the loss sees).
    """

    def __init__(self, state, network, validation, num_epochs, embedder=None):
        super().__init__()
        self.state, self.network, self.validation, self.num_epochs = state, network, validation, num_epochs
        self.embedder = embedder or network
        self.started = None
        self.diverged = None  # the number of an epoch that diverged
        self.best_key = validation.key if validation is not None else "loss"  # what picks best.keras

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not all(math.isfinite(float(value)) for value in logs.values()):
            self.diverged = epoch + 1
            self.model.stop_training = True
            logger.warning("epoch %d/%d: diverged (%s); not recorded", epoch + 1, self.num_epochs,
                           ", ".join(f"{key} {float(value):.4g}" for key, value in logs.items()))
            return
        if self.validation is not None:
            logs.update(self.validation.measure(self.embedder))
            score = logs[self.best_key]
        else:
            score = -logs["loss"]
        logs["epoch_seconds"] = time.time() - self.started
        improved = self.state.save_epoch(self.network, epoch + 1, logs, score)
        logger.info("%s", epoch_summary(epoch + 1, self.num_epochs, logs, improved, terminal_width()))


def epoch_summary(epoch, num_epochs, logs, improved, width=None):
    """The summary of an epoch: its number, its logs (`epoch_seconds` last, as the time) and "(best)".

    Without a `width` (output to a file or a pipe) it is one line: "epoch 3/8: loss 0.4932 - ... - 0.9s (best)".
    With the `width` of a terminal it fits it: the loss, the validation metrics and the time on the first line,
    the statistics on the lines below, indented, each line at most `width` characters.
    """
    values = {key: value for key, value in logs.items() if key != "epoch_seconds"}
    seconds = f"{logs['epoch_seconds']:.1f}s" + (" (best)" if improved else "")
    if width is None:
        return f"epoch {epoch}/{num_epochs}: " + " - ".join(
            [f"{key} {value:.4g}" for key, value in values.items()] + [seconds])
    first = [key for key in values if key == "loss" or key.startswith("val_")]
    head = [f"epoch {epoch}/{num_epochs}", *(f"{key} {values[key]:.4g}" for key in first), seconds]
    rest = [f"{key} {value:.4g}" for key, value in values.items() if key not in first]
    return "\n".join(_fill(head, width, "") + _fill(rest, width, "  "))


def _fill(items, width, indent):
    """Lines of `items` joined by two spaces, an item never split, each line within `width` where it can be."""
    lines, line = [], ""
    for item in items:
        if line and len(line) + 2 + len(item) > width:
            lines.append(line)
            line = ""
        line = f"{line}  {item}" if line else f"{indent}{item}"
    return lines + ([line] if line else [])


class StepProgress(keras.callbacks.Callback):
    """In a terminal, one line redrawn in place while an epoch trains (its steps and running loss), removed at
    the epoch's end so that the epoch's summary stands alone; nothing outside a terminal.

    Args:
        num_epochs, steps_per_epoch: the run's, for the line.
    """

    def __init__(self, num_epochs, steps_per_epoch):
        super().__init__()
        self.num_epochs, self.steps_per_epoch = num_epochs, steps_per_epoch
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        redraw(f"epoch {self.epoch}/{self.num_epochs}  {batch + 1}/{self.steps_per_epoch} steps"
               + (f"  loss {float(loss):.4g}" if loss is not None else ""))

    def on_epoch_end(self, epoch, logs=None):
        clear()


class CollapseGuard(keras.callbacks.Callback):
    """Warns when the embeddings collapse, and stops training if asked.

    Signs, held for `patience` consecutive steps: the mean pairwise distance falls below
    COLLAPSE_RATIO of the mean embedding norm (every point in one place), or the loss says so
    (`EmbeddingLoss.collapse_reason`: for triplet losses, the mean distance below the margin).

    Args:
        loss: the run's `EmbeddingLoss`.
        stop: end training when the guard fires (params.stop_on_collapse).
        patience: consecutive steps (COLLAPSE_PATIENCE by default).
    """

    REMEDIES = (
        "Known remedies: a lower learning_rate; P×K batches (classes_per_batch, images_per_class) "
        "so that every anchor has positives; l2_normalize; batch_all before batch_hard (warm start "
        "with --restore_from); a soft margin."
    )

    def __init__(self, loss, stop=False, patience=None):
        super().__init__()
        self.loss = loss
        self.stop = stop
        self.patience = patience or COLLAPSE_PATIENCE
        self.streak = 0
        self.fired = False

    def _collapsed(self, logs):
        distance, norm = logs.get("mean_distance"), logs.get("embedding_norm")
        if distance is not None and distance <= COLLAPSE_RATIO * max(norm or 0.0, 1e-6):
            return f"mean pairwise distance {distance:.3g} at embedding norm {norm:.3g}"
        return self.loss.collapse_reason(logs)

    def on_train_batch_end(self, batch, logs=None):
        # Keras's batch logs are running means over the epoch so far: a collapse shows with a lag.
        reason = self._collapsed(logs or {})
        self.streak = self.streak + 1 if reason else 0
        if self.streak >= self.patience and not self.fired:
            self.fired = True
            stops = " stop_on_collapse is set: training stops." if self.stop else ""
            clear()
            logger.warning("the embeddings have collapsed (%s for %d steps). %s%s", reason, self.streak,
                           self.REMEDIES, stops)
            if self.stop:
                self.model.stop_training = True


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras's TensorBoard callback, with the validation metrics named as such.

    Keras writes a log `val_x` as `epoch_x` of a "validation" run, so a metric measured on the validation
    split alone (precision@1, mAP, Recall@N) showed as a bare `epoch_precision_at_1`, as if of training;
    here it is `epoch_validation_precision_at_1`, beside the training curves.
    """

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        super().on_epoch_end(epoch, {(f"validation_{key[4:]}" if key.startswith("val_") else key): value
                                     for key, value in logs.items()})


class CacheRefresh(keras.callbacks.Callback):
    """Refreshes a `model.data.cached.FeatureCache` with the network being trained (`self.model.network`): at
    the start of training, then every `cache.every` batches."""

    def __init__(self, cache):
        super().__init__()
        self.cache = cache
        self.batches = 0

    def _refresh(self):
        features, _ = embed(self.model.network, self.cache.dataset, verbose=False)
        self.cache.receive(features)

    def on_train_begin(self, logs=None):
        self._refresh()

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches % self.cache.every == 0:
            self._refresh()
