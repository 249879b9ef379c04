"""The run folder (model/run/) and the structure around it: atomic writes of every run file, steps
after the last epoch that survive a kill -9, the training record, and name lists tied to registries."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from model import atomic, params, run
from model.app import adapter
from model.app.runs import load_run
from model.app.training import train
from model.app.visualization import visualize
from model.data import DATASETS, augment
from model.evaluation.protocols import PROTOCOLS
from model.losses import LOSSES
from model.nets import BACKBONES, NETWORKS, netvlad
from model.training.optimization import OPTIMIZERS
from model.training.steps import StepContext, run_before_fit
from tests.fixtures import DIGITS, write_folder_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_name_list_of_params_is_its_registry():
    # A network's family is its registry entry: every network declares its channels, trained part and steps.
    for entry in NETWORKS.entries():
        assert callable(entry.trained_part) and callable(entry.steps), entry.name
        assert entry.channels in (None, 1, 3), entry.name
    assert set(params.CHOSEN) == {"model", "loss", "dataset"}
    assert (params.CHOSEN["model"], params.CHOSEN["loss"], params.CHOSEN["dataset"]) == (NETWORKS, LOSSES, DATASETS)
    assert {entry.protocol for entry in DATASETS.entries()} <= set(PROTOCOLS)
    assert set(augment._AUGMENT_TYPES) == set(augment.Augmentation._fields)
    for key, registry in (("model", NETWORKS), ("loss", LOSSES), ("dataset", DATASETS),
                          ("optimizer", OPTIMIZERS), ("backbone", BACKBONES)):
        assert params.SCHEMA[key].valid_choices() == tuple(registry) == registry.names(), key


def test_atomic_file_leaves_the_old_file_when_the_writer_fails(tmp_path):
    path = str(tmp_path / "history.csv")
    atomic.write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic.atomic_file(path) as temporary:
        with open(temporary, "w") as handle:
            handle.write("half of a new fi")
        raise RuntimeError("disk full")
    assert open(path).read() == "old\n"
    assert os.listdir(tmp_path) == ["history.csv"]  # no temporary left behind


def netvlad_params(data_dir, **changes):
    return {
        **DIGITS, "model": "netvlad", "backbone": "small", "weights": None, "num_clusters": 4, "netvlad_dim": 6,
        "dataset": "folders", "data_dir": data_dir, "image_size": [8, 8], "classes_per_batch": 3,
        "images_per_class": 2, "validation_size": 0, "num_epochs": 2, **changes,
    }  # fmt: skip


def test_every_file_of_a_run_is_written_atomically(tmp_path, monkeypatch):
    """Every file that training and visualization write into a run folder arrives by a rename, except
    what TensorFlow writes itself (the state checkpoint, TensorBoard events, the projector's variable)."""
    data = write_folder_tree(tmp_path / "data")
    model_dir = str(tmp_path / "run")
    renamed = set()
    replace = os.replace

    def recording_replace(source, destination):
        renamed.add(os.path.abspath(destination))
        replace(source, destination)

    monkeypatch.setattr(os, "replace", recording_replace)
    train(params.Params.from_dict(netvlad_params(data, num_epochs=1)), model_dir)
    visualize(model_dir, max_points=20, num_queries=2, top_k=2, verbose=False)
    written = set()
    for folder, _, names in os.walk(model_dir):
        written |= {os.path.abspath(os.path.join(folder, name)) for name in names}
    tensorflow_own = [os.path.join(model_dir, "checkpoints", "state"), os.path.join(model_dir, "logs")]
    projector_variable = [os.path.join(model_dir, "projector", name) for name in ("checkpoint", "embedding-1")]
    others = {
        path
        for path in written
        if not any(path.startswith(os.path.abspath(prefix)) for prefix in tensorflow_own + projector_variable)
        and "tfevents" not in path
    }
    expected = {"centroids.npy", "classes.json", "data_report.csv", "effective_params.json", "history.csv",
                "steps.json", "tsne.png", "retrieval.png", "best.keras", "latest.keras", "metadata.tsv", "sprite.png",
                "projector_config.pbtxt"}  # fmt: skip
    assert {os.path.basename(path) for path in others} == expected
    assert others <= renamed, sorted(others - renamed)


def test_whitening_killed_after_the_last_epoch_is_finished_by_the_rerun(tmp_path):
    data = write_folder_tree(tmp_path / "data")
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "params.json").write_text(json.dumps(netvlad_params(data)))
    # kill -9 of the training process at the moment its whitening step starts, after the last epoch.
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from model.nets import netvlad
        def killed(context, dim):
            os.kill(os.getpid(), signal.SIGKILL)
        netvlad.whitening_step = killed  # what the netvlad family's whitening step runs
        sys.argv = ["train.py", "--model_dir", {str(model_dir)!r}]
        import train
        train.main()
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [row["epoch"] for row in run.RunFolder(str(model_dir)).read_history()] == ["1", "2"]
    assert not (model_dir / "steps.json").exists()

    rerun = subprocess.run([sys.executable, "train.py", "--model_dir", str(model_dir)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "whitening to 6 dimensions" in rerun.stdout and "complete" not in rerun.stdout
    assert "epoch 1/2" not in rerun.stdout  # no epoch was trained again
    assert json.loads((model_dir / "steps.json").read_text()) == {"whitening": {"epoch": 2}}
    for checkpoint in ("best", "latest"):
        network = keras.models.load_model(model_dir / "checkpoints" / f"{checkpoint}.keras")
        whitening = network.get_layer("whitening").get_weights()
        assert not network.get_layer("whitening").trainable
        assert np.isfinite(whitening[0]).all() and np.abs(whitening[1]).max() > 0

    again = subprocess.run([sys.executable, "train.py", "--model_dir", str(model_dir)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "is complete (2 of 2 epochs)" in again.stdout


def test_a_finished_run_with_its_state_missing_is_refused_not_retrained(tmp_path):
    model_dir = str(tmp_path / "run")
    train(params.Params.from_dict(DIGITS), model_dir)
    folder = run.RunFolder(model_dir)
    stamp = os.path.getmtime(folder.checkpoint_path("best"))
    for name in os.listdir(folder.state_dir):
        os.remove(os.path.join(folder.state_dir, name))
    with pytest.raises(run.RunStateError, match="records 2 completed epochs"):
        train(params.Params.from_dict(DIGITS), model_dir)
    assert os.path.getmtime(folder.checkpoint_path("best")) == stamp
    assert len(folder.read_history()) == 2


def test_a_garbled_state_file_is_refused(tmp_path):
    model_dir = str(tmp_path / "run")
    train(params.Params.from_dict(DIGITS), model_dir)
    folder = run.RunFolder(model_dir)
    with open(os.path.join(folder.state_dir, "checkpoint"), "w") as handle:
        handle.write("garbage {{{\n")
    with pytest.raises(run.RunStateError, match="cannot be read"):
        train(params.Params.from_dict({**DIGITS, "num_epochs": 3}), model_dir)
    assert len(folder.read_history()) == 2


def test_a_history_row_written_before_its_state_is_dropped_and_the_epoch_retrained(tmp_path):
    """The end of an epoch writes its history row, then its state: a kill between them leaves one row
    too many, which the next start drops before training that epoch again."""
    model_dir = str(tmp_path / "run")
    train(params.Params.from_dict({**DIGITS, "num_epochs": 1}), model_dir)
    folder = run.RunFolder(model_dir)
    rows = folder.read_history()
    folder.write_history(rows + [{**rows[0], "epoch": "2"}])  # as if killed after the row of epoch 2
    rows = train(params.Params.from_dict({**DIGITS, "num_epochs": 2}), model_dir).rows
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert [row["epoch"] for row in folder.read_history()] == ["1", "2"]


def test_load_run_is_what_evaluation_and_visualization_read(tmp_path):
    model_dir = str(tmp_path / "run")
    train(params.Params.from_dict({**DIGITS, "num_epochs": 1}), model_dir)
    loaded = load_run(model_dir, "latest")
    assert loaded.params.num_labels == 10 and loaded.source.class_names == [str(i) for i in range(10)]
    assert loaded.network.output_shape == (None, DIGITS["embedding_size"])
    with pytest.raises(ValueError, match="expected one of"):
        load_run(model_dir, "newest")
    with pytest.raises(FileNotFoundError, match="is not a trained run"):
        load_run(str(tmp_path / "nothing"))


@pytest.mark.parametrize("pooling", ["max", "avg"])
def test_global_pooling_trains_without_the_netvlad_steps(tmp_path, pooling):
    """pytorch-NetVlad's --pooling max/avg: the NetVLAD family's cluster step and whitening do not apply, so
    the run has no centroids.npy and no steps.json, and the loss sees the whole (L2-normalised) network."""
    data = write_folder_tree(tmp_path / "data")
    model_dir = tmp_path / "run"
    given = params.Params.from_dict(netvlad_params(data, pooling=pooling, netvlad_dim=None, num_epochs=1))
    family = NETWORKS["netvlad"]
    assert adapter.fit_steps(given) == ((), ())  # neither the cluster step nor the whitening applies
    rows = train(given, str(model_dir)).rows
    assert [row["epoch"] for row in rows] == ["1"]  # strings, as history.csv reads back
    assert not (model_dir / "centroids.npy").exists() and not (model_dir / "steps.json").exists()
    network = keras.models.load_model(model_dir / "checkpoints" / "latest.keras")
    expected = {"max": keras.layers.GlobalMaxPooling2D, "avg": keras.layers.GlobalAveragePooling2D}[pooling]
    assert isinstance(network.get_layer("pooling"), expected)
    assert family.trained_part(network) is network
    with_netvlad = params.Params.from_dict(netvlad_params(data))
    before, after = adapter.fit_steps(with_netvlad)
    assert [step.name for step in before] == ["cluster"] and [step.name for step in after] == ["whitening"]


def test_a_before_fit_step_that_does_not_apply_is_not_run(monkeypatch):
    calls = []
    # The netvlad family's cluster step applies with NetVLAD pooling only.
    monkeypatch.setattr(netvlad, "cluster_step", lambda network, context: calls.append(network) or "ran")
    context = StepContext(run=None, splits={}, dataset=None)
    before, _ = adapter.fit_steps(params.Params.from_dict({"model": "netvlad", "pooling": "max"}))
    assert run_before_fit(before, "network", context) == [] and calls == []
    before, _ = adapter.fit_steps(params.Params.from_dict({"model": "netvlad", "pooling": "netvlad"}))
    assert run_before_fit(before, "network", context) == ["ran"] and calls == ["network"]
