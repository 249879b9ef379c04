"""The run folder: where every file of a run lives, how it is written, and what of the run is done.

    run = RunFolder("experiments/base_model")
    run.save_network(network, "best")              # checkpoints/best.keras, atomically
    network = run.load_network("best")

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
into place, so an interruption leaves either the old file or the new one, never half of one. The lock
is `model.run.lock`, the record of the epochs `model.run.state`; a run with its parameters and data is
read by the application edge (`model.app.runs.load_run`).
"""

import contextlib
import csv
import json
import os
import shutil

import keras

import model.nets  # noqa: F401  (registers the custom layers that load_model needs)
from model.atomic import PARTIAL, save_array, save_network, write_json, write_text
from model.data.report import write_report
from model.data.splits import read_class_names
from model.run.lock import hold_lock

CHECKPOINTS = ("best", "latest")


class RunStateError(Exception):
    """The run folder's record cannot be trusted (unreadable or inconsistent): nothing is overwritten."""


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

    # --- the configuration and the class mapping -----------------------------------------------

    def read_config(self):
        """The effective parameters the run was trained with (effective_params.json), as a dict."""
        if not os.path.isfile(self.effective_params_path):
            raise FileNotFoundError(
                f"{self.effective_params_path} does not exist: {self.root} is not a trained run "
                f"(train it first: python train.py --model_dir {self.root})"
            )
        with open(self.effective_params_path, encoding="utf-8") as handle:
            return json.load(handle)

    def class_names(self):
        """The class mapping saved by an earlier start of the run, or None."""
        return read_class_names(self.classes_path) if os.path.exists(self.classes_path) else None

    def record_config(self, config, resumable, complete=dict):
        """Write effective_params.json from `config` (a dict). Once epochs are done, what trained them may not
        change: a change of any key but `resumable` is refused (ValueError naming each key, old and new value),
        and an allowed change is recorded in params_changes.json with the epoch it applies after. `complete`
        fills in what an earlier record leaves out (the defaults of keys added since)."""
        rows = self.read_history()
        completed = int(rows[-1]["epoch"]) if rows else 0
        if completed and os.path.exists(self.effective_params_path):
            before = complete(self.read_config())
            changed = {key: [before.get(key), value] for key, value in config.items() if before.get(key) != value}
            refused = {key: change for key, change in changed.items() if key not in resumable}
            if refused:
                listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
                raise ValueError(
                    f"{self.root} trained {completed} epochs with other parameters ({listed}). Only "
                    f"{', '.join(resumable)} may change when a run goes on; nothing was changed. To train "
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
            write_text(self.effective_params_path, json.dumps(config, indent=2, sort_keys=True) + "\n")

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

    def lock(self):
        """Hold the run folder for this process while it trains (`model.run.lock`); nothing to hold for a process
        that does not write it (under multi-worker training, the chief holds it)."""
        return hold_lock(self.path(".lock"), self.root) if self.writer else contextlib.nullcontext()

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

