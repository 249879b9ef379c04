"""Training on several replicas (2 logical CPU devices, in a fresh process each: logical devices must be
set up before TensorFlow starts): global mining equals one device, local mining does not, and each
replica receives whole classes of the P×K batch."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.fixtures import DIGITS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_CPUS = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def run_script(body):
    script = textwrap.dedent(TWO_CPUS) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("loss", ["batch_all", "batch_hard", "batch_semihard"])
def test_one_step_of_global_mining_on_two_replicas_equals_one_device(loss):
    output = run_script(f"""
        import json
        import keras
        import numpy as np
        from model.losses import loss_class
        from model.nets import build_model
        from model.params import Params
        from model.training import EmbeddingModel

        params = Params.from_dict({{**{DIGITS!r}, "loss": {loss!r}, "channels": 1, "num_labels": 10}})
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, size=(16, 8, 8, 1)).astype("float32")
        labels = np.repeat([3, 1, 4, 5], 4).astype("int32")  # P = 4 classes × K = 4, class-major
        batch = tf.data.Dataset.from_tensors((images, labels))
        keras.utils.set_random_seed(0)
        initial = build_model(params).get_weights()

        def one_step(strategy, mining):
            with strategy.scope():
                network = build_model(params)
                network.set_weights(initial)
                model = EmbeddingModel(network, loss_class(params.loss).from_params(params), mining=mining)
                model.compile(optimizer=keras.optimizers.SGD(0.5))
            model.fit(batch, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
            return network.get_weights()

        single = one_step(tf.distribute.get_strategy(), "global")
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        gap = lambda a, b: max(float(np.abs(x - y).max()) for x, y in zip(a, b))
        moved = gap(single, initial)
        print(json.dumps({{"moved": moved, "global": gap(one_step(mirrored, "global"), single),
                          "local": gap(one_step(mirrored, "local"), single)}}))
    """)
    gaps = json.loads(output.strip().splitlines()[-1])
    assert gaps["moved"] > 1e-3  # the step did something
    assert gaps["global"] < 1e-5 * max(1.0, gaps["moved"]) + 1e-6, gaps
    assert gaps["local"] > 100 * gaps["global"] + 1e-4, gaps  # each replica alone mines another loss


def test_each_replica_receives_whole_classes_and_training_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    params = {**DIGITS, "num_epochs": 1, "distribute": "mirrored", "classes_per_batch": 4, "images_per_class": 4,
              "memory": {"size": 64, "warmup_steps": 1}}
    (run / "params.json").write_text(json.dumps(params))
    output = run_script(f"""
        import numpy as np
        from model.params import Params
        from model.run import RunFolder
        from model.training import make_strategy, prepare, train, training_dataset

        params, _, splits = prepare(Params.load({str(run / "params.json")!r}), RunFolder({str(run)!r}))
        strategy = make_strategy(params)
        data = strategy.experimental_distribute_dataset(training_dataset(params, splits["train"])[0])
        for step, (images, labels) in zip(range(5), data):
            parts = [np.asarray(part) for part in strategy.experimental_local_results(labels)]
            assert len(parts) == 2 and len(set(parts[0]) & set(parts[1])) == 0, parts
            for part in parts:
                assert sorted(np.unique(part, return_counts=True)[1]) == [4, 4], part  # P / 2 = 2 whole classes
        rows = train(params, {str(run)!r})
        print("FILL", rows[0]["memory_fill"], "LOSS", rows[0]["loss"])
    """)
    assert "training on 2 replicas (global mining)" in output
    assert float(output.split("LOSS")[-1]) >= 0
    # The memory holds the gathered global batches: 16, 32, 48 of its 64 rows after the 3 steps.
    assert float(output.split("FILL")[-1].split()[0]) == pytest.approx((16 + 32 + 48) / 3 / 64)


def test_classes_per_batch_not_divisible_by_the_replicas_is_refused(tmp_path):
    output = run_script(f"""
        from model.params import Params
        from model.training import make_strategy
        try:
            make_strategy(Params.from_dict({{**{DIGITS!r}, "classes_per_batch": 5, "distribute": "mirrored"}}))
        except ValueError as error:
            print("ERROR", error)
    """)
    assert "classes_per_batch (P) = 5 is not divisible by the 2 replicas" in output
