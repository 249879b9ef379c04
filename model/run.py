"""The run folder: where every file of a run lives, how it is written, and what of the run is done.

    run = RunFolder("experiments/base_model")
    run.save_network(network, "best")              # checkpoints/best.keras, atomically
    params, source, network = load_run("experiments/base_model", checkpoint="best")

A run folder holds, next to its params.json:
    effective_params.json     the parameters with every default filled in
    classes.json              the class names, in label order (evaluation uses the same mapping)
    checkpoints/best.keras    the embedding network with the best validation metric
    checkpoints/latest.keras  the embedding network after the last completed epoch
    checkpoints/state/        network, optimizer and epoch (tf.train.Checkpoint), for resuming
    history.csv               one row per completed epoch: loss, statistics, validation metric, time
    steps.json                the steps of the run besides epochs that are done (model-family steps
                              such as NetVLAD's whitening), each with the epoch it was done after
    logs/                     TensorBoard summaries (`tensorboard --logdir RUN`)
    centroids.npy             NetVLAD only: the k-means centroids that initialised the layer

Every file is written through `model.atomic`: to a temporary name in the same folder, then renamed
into place, so an interruption leaves either the old file or the new one, never half of one.
Evaluation and visualization read runs through `load_run`, never through training.
`load_run(model_dir, "untrained")` gives the network the run starts from instead of a checkpoint, for
off-the-shelf evaluation (also of a folder that holds only a params.json).
"""

import contextlib
import csv
import json
import math
import os
import shutil
import tempfile
import time
from collections import namedtuple

import keras
import numpy as np
import tensorflow as tf

import model.nets  # noqa: F401  (registers the custom layers that load_model needs)
from model.atomic import PARTIAL, save_array, save_network, write_json, write_text
from model.data import load_source, read_class_names, write_report
from model.families import FAMILIES, StepContext, resolve_params
from model.params import Params

CHECKPOINTS = ("best", "latest")
# Not a checkpoint: the network a run starts from (seeded initialisation, then its family's before-fit steps).
UNTRAINED = "untrained"
# What may change between the starts of a run without changing what its epochs mean: how long it trains,
# the learning rate (lowered after a divergence), and what it logs or evaluates.
RESUMABLE_KEYS = ("num_epochs", "learning_rate", "lr_schedule", "stop_on_collapse", "save_summary_steps",
                  "eval_size", "num_parallel_calls")


Run = namedtuple("Run", "params source network folder")


class RunFolder:
    """The layout of one run folder and the record of what is done in it (see the module docstring).

    Args:
        model_dir: the run folder (need not exist yet).
        writer: whether this process writes the folder. Under multi-worker training every worker reads
            the run folder but only the chief writes it: the others get `writer=False`, for which every
            write below does nothing (their training-state copies go to a temporary folder, see
            `TrainingState`).
    """

    def __init__(self, model_dir, writer=True):
        self.root = str(model_dir)
        self.writer = writer
        self.params_path = self.path("params.json")
        self.effective_params_path = self.path("effective_params.json")
        self.classes_path = self.path("classes.json")
        self.history_path = self.path("history.csv")
        self.steps_path = self.path("steps.json")
        self.checkpoint_dir = self.path("checkpoints")
        self.state_dir = self.path("checkpoints", "state")
        self.logs_dir = self.path("logs")

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def checkpoint_path(self, checkpoint):
        if checkpoint not in CHECKPOINTS:
            raise ValueError(f"checkpoint={checkpoint!r}: expected one of {CHECKPOINTS}")
        return self.path("checkpoints", f"{checkpoint}.keras")

    # --- networks -------------------------------------------------------------------------------

    def save_network(self, network, checkpoint):
        if self.writer:
            os.makedirs(self.checkpoint_dir, exist_ok=True)
            save_network(network, self.checkpoint_path(checkpoint))

    def save_array(self, name, array):
        if self.writer:
            save_array(self.path(name), array)

    def write_json(self, name, value):
        if self.writer:
            write_json(self.path(name), value)

    def write_report(self, report):
        """The data report of the run's source (data_report.csv)."""
        if self.writer:
            write_report(report, self.path("data_report.csv"))

    def load_network(self, checkpoint="best"):
        path = self.checkpoint_path(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"no checkpoint {path}: train the run first (python train.py --model_dir {self.root}), "
                "or choose another --checkpoint"
            )
        try:
            return keras.models.load_model(path, compile=False)
        except Exception as error:  # a damaged or foreign file: zip, h5 and Keras errors all end here
            raise ValueError(f"{path} cannot be loaded as a Keras network ({type(error).__name__}: "
                             f"{str(error).splitlines()[0][:300] if str(error) else ''})") from None

    # --- parameters and data --------------------------------------------------------------------

    def load_params(self):
        """The effective parameters the run was trained with."""
        if not os.path.isfile(self.effective_params_path):
            raise FileNotFoundError(
                f"{self.effective_params_path} does not exist: {self.root} is not a trained run "
                f"(train it first: python train.py --model_dir {self.root})"
            )
        return Params.load(self.effective_params_path)

    def class_names(self):
        """The class mapping saved by an earlier start of the run, or None."""
        return read_class_names(self.classes_path) if os.path.exists(self.classes_path) else None

    def load_source(self, params):
        """The data source of the run as training sees it: the class mapping saved by an earlier start of
        it (if any), and the train split cut to `params.train_size` images (seeded) when set."""
        source = load_source(
            params.dataset,
            data_dir=params.data_dir,
            validation_size=params.validation_size,
            class_split=params.class_split,
            class_names=self.class_names(),
            positive_radius=params.positive_radius,
            seed=params.seed,
        )
        train = source.splits["train"]
        if params.train_size is not None and params.train_size < len(train):
            keep = np.random.default_rng(params.seed).permutation(len(train))[: params.train_size]
            source.splits["train"] = train.take(keep)
        return source

    def record_params(self, params):
        """Write effective_params.json. Once epochs are done, what trained them may not change: a change
        of any key but RESUMABLE_KEYS is refused (ValueError naming each key, old and new value), and an
        allowed change is recorded in params_changes.json with the epoch it applies after."""
        rows = self.read_history()
        completed = int(rows[-1]["epoch"]) if rows else 0
        if completed and os.path.exists(self.effective_params_path):
            before, after = Params.load(self.effective_params_path).to_dict(), params.to_dict()
            changed = {key: [before.get(key), value] for key, value in after.items() if before.get(key) != value}
            refused = {key: change for key, change in changed.items() if key not in RESUMABLE_KEYS}
            if refused:
                listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
                raise ValueError(
                    f"{self.root} trained {completed} epochs with other parameters ({listed}). Only "
                    f"{', '.join(RESUMABLE_KEYS)} may change when a run goes on; nothing was changed. To train "
                    f"with the new parameters, use a new model_dir (--restore_from {self.root} starts it from this "
                    "run's best network)."
                )
            if changed and self.writer:
                path = self.path("params_changes.json")
                earlier = []
                if os.path.exists(path):
                    with open(path) as handle:
                        earlier = json.load(handle)
                write_json(path, earlier + [{"after_epoch": completed, "changes": changed}])
        if self.writer:
            params.save(self.effective_params_path)

    # --- the record of what is done -------------------------------------------------------------

    def read_history(self):
        """The rows of history.csv (dicts of strings), [] before the first epoch."""
        if not os.path.exists(self.history_path):
            return []
        with open(self.history_path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        for line, row in enumerate(rows, start=2):
            epoch = row.get("epoch") or ""
            if not epoch.isdigit() or int(epoch) != line - 1:
                raise RunStateError(
                    f"{self.history_path}, line {line}: expected the row of epoch {line - 1}, got epoch {epoch!r}; "
                    "the file is damaged. Nothing was changed: restore it, or train into a new model_dir."
                )
        return rows

    def write_history(self, rows):
        """history.csv from `rows` (dicts), the columns in order of first appearance."""
        fields = list(dict.fromkeys(key for row in rows for key in row))
        lines = [",".join(fields)] + [",".join(str(row.get(field, "")) for field in fields) for row in rows]
        if self.writer:
            write_text(self.history_path, "\n".join(lines) + "\n")

    def steps(self):
        """name -> record of each step of the run that is done (steps.json)."""
        if not os.path.exists(self.steps_path):
            return {}
        with open(self.steps_path) as handle:
            return json.load(handle)

    def record_step(self, name, **record):
        """Record step `name` as done, with `record` (e.g. the epoch it was done after)."""
        if self.writer:
            write_json(self.steps_path, {**self.steps(), name: record})

    @contextlib.contextmanager
    def lock(self):
        """Hold the run folder for this process while it trains (RUN/.lock holds its pid).

        A second trainer of the same folder is refused with RunLocked naming the pid; a lock left by a
        process that no longer runs (a crash, kill -9) is stale and taken over.
        """
        if not self.writer:  # another process (the chief) holds the folder
            yield
            return
        path = self.path(".lock")
        while True:
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = _lock_owner(path)
                if owner is None and time.time() - _modified(path) < 10:  # just created, pid not yet written
                    raise RunLocked(f"{self.root} is being started by another process ({path} is new)") from None
                if owner is not None and owner != os.getpid() and _is_running(owner):
                    raise RunLocked(
                        f"{self.root} is being trained by pid {owner}; wait for it to finish or stop it "
                        f"(if that process is gone, delete {path})"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)  # stale: its process is gone
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            break
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def remove_partial_files(self):
        """Delete what interrupted writes left behind: `*.partial*` files in the run folder and
        checkpoints/, and the `ckpt-N_temp/` folders of unfinished state checkpoints (hundreds of MB for a
        ResNet-50). Call it while holding `lock`: a live trainer's temporary files are not orphans."""
        if not self.writer:
            return
        for folder in (self.root, self.checkpoint_dir):
            if os.path.isdir(folder):
                for name in os.listdir(folder):
                    if PARTIAL in name and os.path.isfile(os.path.join(folder, name)):
                        os.remove(os.path.join(folder, name))
        if os.path.isdir(self.state_dir):
            for name in os.listdir(self.state_dir):
                if name.endswith("_temp") and os.path.isdir(os.path.join(self.state_dir, name)):
                    shutil.rmtree(os.path.join(self.state_dir, name))


def _lock_owner(path):
    """The pid written in a lock file, or None when it cannot be read (being written, or garbage)."""
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _modified(path):
    try:
        return os.path.getmtime(path)
    except FileNotFoundError:
        return 0.0


def _is_running(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class RunLocked(Exception):
    """Another live process is training the same run folder."""


class RunStateError(Exception):
    """The run folder's record cannot be trusted (unreadable or inconsistent): nothing is overwritten."""


class TrainingState:
    """The record of completed epochs: a tf.train.Checkpoint (network, optimizer, epoch, best score)
    under checkpoints/state/, and history.csv.

    The end of epoch N (`save_epoch`) writes, in this order: latest.keras (and best.keras), the
    history row of N, then the state of N. An interruption between the row and the state leaves one
    row beyond the state: the next start drops it and trains epoch N again, so a resumed run always
    has the row of every completed epoch. A history with more than that beyond the state, or a
    state that cannot be read, is refused (RunStateError): the run is never retrained over it.

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
        self.rows.append({"epoch": epoch, **{key: f"{float(value):.6g}" for key, value in logs.items()}})
        self.run.write_history(self.rows)
        self.epoch.assign(epoch)
        self.manager.save(checkpoint_number=epoch)
        return improved

    def close(self):
        """Remove a worker's temporary state folder (nothing to do for the chief)."""
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def load_run(model_dir, checkpoint="best"):
    """(params, source, network, folder) of a trained run: what evaluation and visualization read.

    Args:
        model_dir: the run folder (effective_params.json, classes.json, checkpoints/).
        checkpoint: "best", "latest", or "untrained" (`load_untrained_run`).

    Returns:
        Run(params, source, network, folder): the effective Params, the DataSource loaded with the
        run's class mapping, the network of the checkpoint, and the RunFolder.
    """
    folder = RunFolder(model_dir)
    if checkpoint == UNTRAINED:
        return load_untrained_run(model_dir)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint={checkpoint!r}: expected one of {(*CHECKPOINTS, UNTRAINED)}")
    params = folder.load_params()
    network = folder.load_network(checkpoint)
    return Run(params, folder.load_source(params), network, folder)


def is_untrained(model_dir):
    """Whether `model_dir` holds a params.json and was never started (no effective_params.json)."""
    folder = RunFolder(model_dir)
    return os.path.isfile(folder.params_path) and not os.path.isfile(folder.effective_params_path)


def load_untrained_run(model_dir):
    """The run's network before training, as a Run: off-the-shelf evaluation (pytorch-NetVlad's test mode
    without --resume), to see what training adds.

    The parameters are the run's effective ones, or, for a run never started, its params.json resolved
    against the data as training resolves them (`model.families.resolve_params`). The network is built
    after `keras.utils.set_random_seed(params.seed)`, in the order training follows (seed, data, build),
    so it is the initialisation training starts from, and then goes through its family's before-fit steps
    (NetVLAD's k-means cluster step on the train split). Those steps write into a temporary folder: the run
    folder is left as it was. Steps after fit (NetVLAD's whitening) are not run: with netvlad_dim the
    whitening layer is as initialised.

    Raises:
        FileNotFoundError: the folder has neither effective_params.json nor params.json.
    """
    folder = RunFolder(model_dir)
    if os.path.isfile(folder.effective_params_path):
        params = folder.load_params()
    elif os.path.isfile(folder.params_path):
        params = Params.load(folder.params_path)
    else:
        raise FileNotFoundError(f"{folder.root} holds no params.json: nothing says which network to build")
    keras.utils.set_random_seed(params.seed)
    source = folder.load_source(params)
    params = resolve_params(params, source)
    family = FAMILIES[params.model]
    network = family.build(params)
    with tempfile.TemporaryDirectory() as scratch:
        context = StepContext(params, RunFolder(scratch), source.splits)
        for step in family.before_fit:
            summary = step(network, context)
            if summary:
                print(summary.replace(scratch, "a temporary folder"))
    return Run(params, source, network, folder)
