"""Reading a run as evaluation, export and visualization need it: its parameters, its data, its network.

    params, source, network, folder = load_run("experiments/base_model", checkpoint="best")

`load_run(model_dir, "untrained")` gives the network the run starts from instead of a checkpoint, for
off-the-shelf evaluation (also of a folder that holds only a params.json).
"""

import logging
import os
import tempfile
from collections import namedtuple

import keras

from model.app import adapter
from model.params import Params
from model.run import CHECKPOINTS, RunFolder
from model.training.steps import StepContext, run_before_fit

# Not a checkpoint: the network a run starts from (seeded initialisation, then its family's before-fit steps).
UNTRAINED = "untrained"

Run = namedtuple("Run", "params source network folder")

logger = logging.getLogger(__name__)


def load_params(folder):
    """The effective parameters a run folder was trained with."""
    folder.read_config()  # names the run and how to train it when it was never trained
    return Params.load(folder.effective_params_path)


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
    params = load_params(folder)
    network = folder.load_network(checkpoint)
    return Run(params, adapter.data_source(params, class_names=folder.class_names()), network, folder)


def is_untrained(model_dir):
    """Whether `model_dir` holds a params.json and was never started (no effective_params.json)."""
    folder = RunFolder(model_dir)
    return os.path.isfile(folder.params_path) and not os.path.isfile(folder.effective_params_path)


def load_untrained_run(model_dir):
    """The run's network before training, as a Run: off-the-shelf evaluation (pytorch-NetVlad's test mode
    without --resume), to see what training adds.

    The parameters are the run's effective ones, or, for a run never started, its params.json resolved
    against the data as training resolves them (`model.app.adapter.resolve`). The network is built
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
        params = load_params(folder)
    elif os.path.isfile(folder.params_path):
        params = Params.load(folder.params_path)
    else:
        raise FileNotFoundError(f"{folder.root} holds no params.json: nothing says which network to build")
    keras.utils.set_random_seed(params.seed)
    source = adapter.data_source(params, class_names=folder.class_names())
    params = adapter.resolve(params, source)
    network = adapter.network(params)
    before, _ = adapter.fit_steps(params)
    with tempfile.TemporaryDirectory() as scratch:
        context = StepContext(RunFolder(scratch), source.splits, adapter.evaluation_batches(params), params.seed)
        for summary in run_before_fit(before, network, context):
            logger.info("%s", summary.replace(scratch, "a temporary folder"))
    return Run(params, source, network, folder)
