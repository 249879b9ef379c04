"""The shipped experiments of the PyTorch online-metric-learning examples (CUB-200-2011 and In-shop with
the online contrastive loss): they say what the source says, pass Params validation, and train end to
end on generated data in their dataset's layout (random weights instead of ImageNet's, small images)."""

import math

import numpy as np
import pytest

from model.app import adapter
from model.app.runs import load_params
from model.app.training import train
from model.params import Params
from model.run import RunFolder
from tests.fixtures import write_cub_tree, write_inshop_tree

EXPERIMENTS = {"cub200_contrastive": ("cub200", write_cub_tree), "inshop_contrastive": ("inshop", write_inshop_tree)}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_the_experiment_is_the_source_recipe(name):
    params = Params.load(f"experiments/{name}/params.json")
    assert params.dataset == EXPERIMENTS[name][0]
    # ImageNet ResNet-50, embedding 128, L2-normalised.
    assert (params.model, params.weights) == ("trinet", "imagenet")
    assert (params.embedding_size, params.l2_normalize) == (128, True)
    # Contrastive, margin 0.1, batches of 128, Adam at 1e-4 for 10,000 iterations, ×0.1 at 5,000.
    assert (params.loss, params.margin) == ("contrastive", 0.1)
    # Its online contrastive loss: y·D² + (1 - y)·[α - D²]_+, averaged over the non-zero terms.
    assert params.loss_options == {"hinge": "squared_distance", "reduction": "nonzero"}
    assert params.classes_per_batch * params.images_per_class == 128
    assert (params.optimizer, params.learning_rate) == ("adam", 1e-4)
    assert params.num_epochs * params.steps_per_epoch == 10_000
    assert params.lr_schedule == {"type": "step", "boundaries": [5000], "factor": 0.1}
    assert params.steps_per_epoch == 50  # one validation per 50 iterations, the source's eval interval


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_the_experiment_trains_end_to_end_on_generated_data(name, tmp_path):
    dataset, write_tree = EXPERIMENTS[name]
    # 80 classes of 4 images: the train half (40 classes) keeps at least 32 beside the validation hold-out
    # (10 %, whole identities for In-shop), so the shipped 32 × 4 batches fit.
    write_tree(tmp_path / "data", 80, 4)
    params = Params.load(f"experiments/{name}/params.json").replace(
        data_dir=str(tmp_path / "data"), weights=None, image_size=[32, 32], augment={"flip": True, "resize": [36, 36]},
        num_epochs=1, steps_per_epoch=2,
    )  # fmt: skip
    rows = train(params, str(tmp_path / "run")).rows
    assert [row["epoch"] for row in rows] == ["1"]
    assert math.isfinite(float(rows[0]["loss"]))
    run = RunFolder(str(tmp_path / "run"))
    effective = load_params(run)
    assert (effective.dataset, effective.loss, effective.classes_per_batch) == (dataset, "contrastive", 32)
    loss = adapter.loss(effective, effective.embedding_size)
    assert (loss.hinge, loss.term_reduction, loss.margin) == ("squared_distance", "nonzero", 0.1)
    embeddings = np.asarray(run.load_network("latest")(np.zeros((2, 32, 32, 3), np.float32) + 100.0))
    assert embeddings.shape == (2, 128)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
