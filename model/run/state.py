"""The record of a run's completed epochs: what a resumed run restores, and what an epoch's end writes.

    state = TrainingState(run, model, model.optimizer)
    start = state.restore()                                    # completed epochs (0 for a new run)
    state.save_epoch(network, epoch, logs, score)              # latest/best.keras, history row, state
"""

import math
import shutil
import tempfile

import tensorflow as tf

from model.run.folder import RunStateError


class TrainingState:
    """The record of completed epochs: a tf.train.Checkpoint (network, optimizer, epoch, best score)
    under checkpoints/state/, and history.csv.

    The end of epoch N (`save_epoch`) writes, in this order: latest.keras (and best.keras), the
    history row of N, then the state of N. An interruption between the row and the state leaves one
    row beyond the state: the next start drops it and trains epoch N again, so a resumed run always
    has the row of every completed epoch. A history with more than that beyond the state, fewer rows
    than the state's epochs (a deleted history.csv), or a state that cannot be read, is refused
    (RunStateError): the run is never retrained over it, nor goes on with a history that lacks epochs.

    Args:
        run: the RunFolder.
        model, optimizer: what the state checkpoint holds (built, with every variable created).
    """

    def __init__(self, run, model, optimizer):
        self.run = run
        self.model, self.optimizer = model, optimizer
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.best = tf.Variable(-math.inf, dtype=tf.float64, trainable=False)
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch, best=self.best)
        # Under multi-worker training every worker saves (saving reads synchronised variables, a collective
        # operation), but only the chief into the run folder: the others into a temporary folder of their own.
        self.scratch = None if run.writer else tempfile.mkdtemp(prefix="worker-state-")
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.scratch or run.state_dir, max_to_keep=1)
        self.rows = []

    def restore(self):
        """Load the saved state, if any; returns the number of completed epochs (0 for a new run)."""
        rows = self.run.read_history()
        recorded = int(rows[-1]["epoch"]) if rows else 0
        try:
            latest = tf.train.latest_checkpoint(self.run.state_dir)
        except Exception as error:  # a garbled checkpoints/state/checkpoint file
            raise RunStateError(self._unreadable(recorded, error)) from None
        if latest is None:
            if recorded > 1:
                raise RunStateError(self._unreadable(recorded, "checkpoints/state/ holds no checkpoint"))
            return 0  # new, or killed before the first state: the lone row (if any) is of an unsaved epoch
        self.optimizer.build(self.model.trainable_variables)  # its slots must exist to receive their values
        try:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        except Exception as error:
            raise RunStateError(self._unreadable(recorded, error)) from None
        epoch = int(self.epoch.numpy())
        if recorded > epoch + 1:
            raise RunStateError(
                f"{self.run.history_path} records {recorded} epochs but the training state in {self.run.state_dir} "
                f"is of epoch {epoch}: the run folder is inconsistent. Nothing was changed; train into a new "
                "model_dir, or delete this run folder to start again."
            )
        if recorded < epoch:
            raise RunStateError(
                f"{self.run.history_path} records {recorded} epochs but the training state in {self.run.state_dir} "
                f"is of epoch {epoch}: history.csv was deleted or cut short. Nothing was changed: put it back to "
                f"resume, or train into a new model_dir (--restore_from {self.run.root} starts it from this run's "
                "best network)."
            )
        self.rows = [row for row in rows if int(row["epoch"]) <= epoch]
        return epoch

    def _unreadable(self, recorded, error):
        return (
            f"{self.run.root}: the training state in {self.run.state_dir} cannot be read ({error}); history.csv "
            f"records {recorded} completed epochs. Nothing was changed: a run with completed epochs is never "
            "retrained from scratch. Train into a new model_dir, or delete this run folder to start again."
        )

    def save_epoch(self, network, epoch, logs, score):
        """Record epoch `epoch` (1-based) with its `logs`; `score` (higher is better) picks best.keras.

        Returns whether the epoch is the best so far.
        """
        improved = bool(score > self.best.numpy())
        self.run.save_network(network, "latest")
        if improved:
            self.run.save_network(network, "best")
            self.best.assign(score)
        # Strings, as history.csv's rows read back: a resumed run's rows are all of one kind.
        self.rows.append({"epoch": str(epoch), **{key: f"{float(value):.6g}" for key, value in logs.items()}})
        self.run.write_history(self.rows)
        self.epoch.assign(epoch)
        self.manager.save(checkpoint_number=epoch)
        return improved

    def close(self):
        """Remove a worker's temporary state folder (nothing to do for the chief)."""
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

