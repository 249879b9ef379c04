"""The two accuracy and speed benchmarks measure what they say.

benchmarks/bench_peer.py: its PyTorch network is `mnist_convnet` (same outputs from the same
weights), its learning rate follows `model.training.optimization`'s schedules step for step, its
pytorch-metric-learning loss is the batch-all loss, and a missing PyTorch side or a recipe it does not
reproduce is a clear exit 2. benchmarks/bench_accuracy.py: every grid point of its table is a valid
params.json, and the grid's value reaches the loss.
"""

import builtins
import json
import os

import keras
import numpy as np
import pytest

from benchmarks import bench_accuracy, bench_peer
from model.app import adapter
from model.params import Params
from model.training.optimization import learning_rate
from model.triplet_loss import batch_all_triplet_loss

torch = pytest.importorskip("torch")  # requirements_dev.txt installs it (a Keras backend under test)

RECIPE = {"model": "mnist_convnet", "image_size": 28, "channels": 1, "num_channels": 4, "use_batch_norm": True,
          "bn_momentum": 0.9, "embedding_size": 8, "l2_normalize": False}


def _copy_keras_weights(network, module):
    """Load the Keras convnet's weights into the PyTorch one; the dense kernel's rows are reordered because
    Keras flattens [H, W, C] and PyTorch [C, H, W]."""
    layers = {layer.name: layer for layer in network.layers}
    convs = [m for m in module.body if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in module.body if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for index, (conv, norm) in enumerate(zip(convs, norms, strict=True), start=1):
            kernel, bias = layers[f"block{index}_conv"].get_weights()
            conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
            conv.bias.copy_(torch.from_numpy(bias))
            gamma, beta, mean, variance = layers[f"block{index}_bn"].get_weights()
            for target, value in zip((norm.weight, norm.bias, norm.running_mean, norm.running_var),
                                     (gamma, beta, mean, variance), strict=True):
                target.copy_(torch.from_numpy(value))
        kernel, bias = layers["embedding"].get_weights()  # kernel [H·W·C, E]
        channels = convs[-1].out_channels
        side = int(round((kernel.shape[0] // channels) ** 0.5))
        reordered = kernel.reshape(side, side, channels, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)
        dense = module.body[-1]
        dense.weight.copy_(torch.from_numpy(reordered.T.copy()))
        dense.bias.copy_(torch.from_numpy(bias))


@pytest.mark.parametrize("l2_normalize, conv_blocks, dropout", [(False, 2, 0.0), (True, 2, 0.0), (False, 3, 0.5)])
def test_torch_convnet_is_the_keras_convnet(l2_normalize, conv_blocks, dropout):
    params = Params.from_dict({**RECIPE, "l2_normalize": l2_normalize, "conv_blocks": conv_blocks,
                               "dropout": dropout})  # fmt: skip
    recipe = params.to_dict()  # the PyTorch side reads the recipe as bench_peer passes it: every key, defaulted
    keras.utils.set_random_seed(0)
    network = adapter.network(params)
    rng = np.random.default_rng(0)
    for layer in network.layers:  # batch norm statistics away from their initial 0 and 1
        if layer.name.endswith("_bn"):
            gamma, beta, _, _ = layer.get_weights()
            layer.set_weights([gamma * 1.5, beta + 0.1, rng.normal(size=gamma.shape).astype("float32"),
                               rng.uniform(0.5, 2.0, size=gamma.shape).astype("float32")])
    module = bench_peer._torch_convnet(recipe, (28, 28, 1))
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == dropout for m in module.body) == (1 if dropout else 0)
    assert sum(p.numel() for p in module.parameters()) == network.count_params() - sum(
        int(np.prod(w.shape)) for w in network.non_trainable_weights)
    _copy_keras_weights(network, module)
    images = rng.integers(0, 256, size=(5, 28, 28, 1)).astype(np.uint8)
    expected = network(images.astype("float32"), training=False).numpy()
    found = bench_peer._torch_embed(module, images, batch=2)
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("schedule", [
    {"type": "constant"},
    {"type": "exponential", "decay_start": 3, "decay_steps": 7, "decay_rate": 0.3},
    {"type": "step", "boundaries": [4, 9], "factor": 0.5},
])
def test_peer_learning_rate_follows_the_toolkit_schedule(schedule):
    params = Params.from_dict({"learning_rate": 0.01, "lr_schedule": schedule})
    rate, factor = learning_rate(params.learning_rate, params.lr_schedule), bench_peer._lr_factor(schedule)
    for step in range(15):
        expected = float(rate(step)) if callable(rate) else rate
        assert 0.01 * factor(step) == pytest.approx(expected, rel=1e-6), step


@pytest.mark.parametrize("squared", [False, True])
def test_peer_loss_is_batch_all(squared):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning import distances, reducers

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=24)
    embeddings = rng.normal(size=(24, 6)).astype(np.float32)
    peer = losses.TripletMarginLoss(margin=0.5, reducer=reducers.AvgNonZeroReducer(), distance=distances.LpDistance(
        normalize_embeddings=False, power=2 if squared else 1))
    found = peer(torch.from_numpy(embeddings), torch.from_numpy(labels)).item()
    expected = float(batch_all_triplet_loss(labels, embeddings, 0.5, squared)[0])
    assert found == pytest.approx(expected, rel=1e-5)


def test_missing_pytorch_side_is_a_clear_exit(monkeypatch, capsys):
    real_import = builtins.__import__

    def without_peer(name, *args, **kwargs):
        if name == "pytorch_metric_learning":
            raise ImportError("No module named 'pytorch_metric_learning'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_peer)
    assert bench_peer.main([]) == 2
    message = capsys.readouterr().err
    assert "pytorch_metric_learning is not installed" in message and "requirements_bench.txt" in message


@pytest.mark.parametrize("experiment, changes, named", [
    ("batch_hard", {}, "loss='batch_hard'"),
    ("base_model", {"image_size": 32}, "image_size=32"),  # the PyTorch side trains at the data's own size
    ("base_model", {"loss_options": {"reduction": "all"}}, "loss_options={'reduction': 'all'}"),
])
def test_recipe_the_peer_does_not_reproduce_is_refused(tmp_path, capsys, experiment, changes, named):
    with open(os.path.join(bench_peer.ROOT, "experiments", experiment, "params.json")) as handle:
        params = json.load(handle)
    (tmp_path / "params.json").write_text(json.dumps({**params, **changes}))
    with pytest.raises(SystemExit) as stopped:
        bench_peer._recipe(bench_peer.argparse.Namespace(experiment=str(tmp_path), epochs=None, quick=False))
    assert stopped.value.code == 2 and named in capsys.readouterr().err


def test_peer_recipe_takes_the_command_line():
    namespace = bench_peer.argparse.Namespace(experiment=os.path.join(bench_peer.ROOT, "experiments", "base_model"),
                                              epochs=3, quick=False)
    assert bench_peer._recipe(namespace)["num_epochs"] == 3
    quick = bench_peer._recipe(bench_peer.argparse.Namespace(**{**vars(namespace), "quick": True}))
    assert (quick["num_epochs"], quick["train_size"], quick["eval_size"]) == (2, 12_000, 2_000)


@pytest.mark.parametrize("name", list(bench_accuracy.LOSSES))
def test_every_grid_point_is_a_valid_run_whose_value_reaches_the_loss(name):
    changes, key, grid = bench_accuracy.LOSSES[name]
    for value in grid:
        params = Params.from_dict({**bench_accuracy.RECIPE, "num_labels": 10, "image_size": 28, "channels": 1,
                                   **bench_accuracy.loss_params(changes, key, value)})
        assert params.loss == changes["loss"] and params.memory == changes.get("memory")
        if key is not None:
            assert getattr(adapter.loss(params, params.embedding_size), key.removeprefix("options.")) == value
