"""Training on several replicas (2 logical CPU devices, in a fresh process each: logical devices must be
set up before TensorFlow starts): global mining equals one device, local mining does not, and each
replica receives whole classes of the P×K batch."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from model.run import RunFolder
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
        from model.app import adapter
        from model.params import Params
        from model.training.model import EmbeddingModel

        params = Params.from_dict({{**{DIGITS!r}, "loss": {loss!r}, "channels": 1, "num_labels": 10}})
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, size=(16, 8, 8, 1)).astype("float32")
        labels = np.repeat([3, 1, 4, 5], 4).astype("int32")  # P = 4 classes × K = 4, class-major
        batch = tf.data.Dataset.from_tensors((images, labels))
        keras.utils.set_random_seed(0)
        initial = adapter.network(params).get_weights()

        def one_step(strategy, mining):
            with strategy.scope():
                network = adapter.network(params)
                network.set_weights(initial)
                model = EmbeddingModel(network, adapter.loss(params, params.embedding_size), mining=mining)
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


def test_fused_batch_norm_on_two_replicas_equals_keras_batch_norm():
    """Each replica normalises its own half of the batch and updates the mirrored moving statistics, as
    Keras's layer does: one step gives the same weights and moving statistics with either layer."""
    output = run_script(f"""
        import json
        import keras
        import numpy as np
        from model.app import adapter
        from model.nets.batch_norm import with_keras_batch_norm
        from model.params import Params
        from model.training.model import EmbeddingModel

        params = Params.from_dict({{**{DIGITS!r}, "use_batch_norm": True, "channels": 1, "num_labels": 10}})
        rng = np.random.default_rng(0)
        images = rng.uniform(0, 255, size=(16, 8, 8, 1)).astype("float32")
        labels = np.repeat([3, 1, 4, 5], 4).astype("int32")
        batch = tf.data.Dataset.from_tensors((images, labels))
        keras.utils.set_random_seed(0)
        initial = adapter.network(params).get_weights()

        def one_step(clone):
            with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
                network = adapter.network(params)
                if clone:
                    network = with_keras_batch_norm(network)
                network.set_weights(initial)
                model = EmbeddingModel(network, adapter.loss(params, params.embedding_size), mining="global")
                model.compile(optimizer=keras.optimizers.SGD(0.5))
            model.fit(batch, epochs=1, steps_per_epoch=1, verbose=0, shuffle=False)
            kinds = {{type(layer).__name__ for layer in network.layers}}
            return network.get_weights(), sorted(k for k in kinds if "Normalization" in k)

        (fused, fused_kinds), (plain, plain_kinds) = one_step(False), one_step(True)
        gap = lambda a, b: max(float(np.abs(x - y).max()) for x, y in zip(a, b))
        kinds = [fused_kinds, plain_kinds]
        print(json.dumps({{"kinds": kinds, "moved": gap(fused, initial), "gap": gap(fused, plain)}}))
    """)
    result = json.loads(output.strip().splitlines()[-1])
    assert result["kinds"] == [["FusedBatchNormalization"], ["BatchNormalization"]]
    assert result["moved"] > 1e-3  # the step (and the moving statistics) changed something
    assert result["gap"] < 1e-4, result


def test_each_replica_receives_whole_classes_and_training_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    params = {**DIGITS, "num_epochs": 1, "distribute": "mirrored", "classes_per_batch": 4, "images_per_class": 4,
              "memory": {"size": 64, "warmup_steps": 1}}
    (run / "params.json").write_text(json.dumps(params))
    output = run_script(f"""
        import numpy as np
        from model.app import adapter
        from model.app.training import train
        from model.cli import configure_logging
        from model.params import Params
        from model.run import RunFolder
        from model.training.distribute import make_strategy

        configure_logging()  # the library's INFO records on stdout, as train.py shows them
        params = Params.load({str(run / "params.json")!r})
        source = adapter.data_source(params, RunFolder({str(run)!r}).class_names())
        params = adapter.resolve(params, source)
        strategy = make_strategy(params.distribute, params.classes_per_batch, params.mining)
        batches = adapter.training_batches(params).dataset(source.splits["train"], 0)
        data = strategy.experimental_distribute_dataset(batches)
        for step, (images, labels) in zip(range(5), data):
            parts = [np.asarray(part) for part in strategy.experimental_local_results(labels)]
            assert len(parts) == 2 and len(set(parts[0]) & set(parts[1])) == 0, parts
            for part in parts:
                assert sorted(np.unique(part, return_counts=True)[1]) == [4, 4], part  # P / 2 = 2 whole classes
        result = train(params, {str(run)!r})
        print("RESULT", result.workers, result.replicas)
        print("FILL", result.rows[0]["memory_fill"], "LOSS", result.rows[0]["loss"])
    """)
    assert "training on 1 worker(s), 2 replicas (global mining)" in output
    assert "RESULT 1 2\n" in output
    assert float(output.split("LOSS")[-1]) >= 0
    # The memory holds the gathered global batches: 16, 32, 48 of its 64 rows after the 3 steps.
    assert float(output.split("FILL")[-1].split()[0]) == pytest.approx((16 + 32 + 48) / 3 / 64)


def test_classes_per_batch_not_divisible_by_the_replicas_is_refused(tmp_path):
    output = run_script(f"""
        from model.params import Params
        from model.training.distribute import make_strategy
        params = Params.from_dict({{**{DIGITS!r}, "classes_per_batch": 5, "distribute": "mirrored"}})
        try:
            make_strategy(params.distribute, params.classes_per_batch, params.mining)
        except ValueError as error:
            print("ERROR", error)
    """)
    assert "classes_per_batch (P) = 5 is not divisible by the 2 replicas" in output


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for handle in sockets:
            handle.bind(("127.0.0.1", 0))
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


def start_workers(arguments):
    """Two processes `python ARGUMENTS` of one cluster on 127.0.0.1 (TF_CONFIG), worker 0 the chief."""
    ports = free_ports(2)
    workers = []
    for index in range(2):
        config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]}, "task": {"type": "worker",
                                                                                        "index": index}}
        environment = {**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "2"}
        workers.append(subprocess.Popen([sys.executable, *arguments], cwd=ROOT, env=environment,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return workers


def train_workers(model_dir):
    return start_workers(["train.py", "--model_dir", str(model_dir)])


def finish(workers, timeout):
    """(return codes, outputs) of the workers, all killed if one fails or time runs out."""
    deadline = time.time() + timeout
    try:
        outputs = [worker.communicate(timeout=max(1, deadline - time.time())) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return [worker.returncode for worker in workers], outputs


def multi_worker_params(model_dir, **changes):
    model_dir.mkdir(exist_ok=True)
    values = {**DIGITS, "distribute": "multi_worker", "classes_per_batch": 4, **changes}
    (model_dir / "params.json").write_text(json.dumps(values))


@pytest.mark.multiprocess
def test_two_workers_train_one_run_folder_written_by_the_chief(tmp_path):
    model_dir = tmp_path / "run"
    multi_worker_params(model_dir)
    codes, outputs = finish(train_workers(model_dir), timeout=300)
    assert codes == [0, 0], [error[-3000:] for _, error in outputs]
    chief, other = outputs[0][0], outputs[1][0]
    assert "training on 2 worker(s), 2 replicas (global mining)" in chief
    assert "trained on 2 worker(s) with 2 replicas in all" in chief
    rows = RunFolder(str(model_dir)).read_history()
    assert [row["epoch"] for row in rows] == ["1", "2"]
    written = sorted(os.listdir(model_dir))
    assert written == ["checkpoints", "classes.json", "data_report.csv", "effective_params.json", "history.csv",
                       "logs", "params.json"]
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["best.keras", "latest.keras", "state"]
    assert "epoch 2/2" in other  # the other worker trained the same epochs, and wrote nothing of them


@pytest.mark.multiprocess
def test_a_worker_killed_mid_run_ends_the_other_with_one_line_and_both_resume(tmp_path):
    model_dir = tmp_path / "run"
    multi_worker_params(model_dir, num_epochs=60, steps_per_epoch=2)
    workers = train_workers(model_dir)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(RunFolder(str(model_dir)).read_history()) < 3:
            if any(worker.poll() is not None for worker in workers):
                break
            time.sleep(0.2)
    finally:
        workers[1].send_signal(signal.SIGKILL)
        workers[1].wait()
    # The chief notices within TensorFlow's heartbeat timeout and ends with one line, not a traceback.
    codes, outputs = finish(workers[:1], timeout=120)
    error = outputs[0][1]
    assert codes == [4], error[-3000:]
    # TensorFlow's own gRPC log lines may say "last error: ..."; the CLI's lines are those that begin with "error: ".
    ours = [line for line in error.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in error and len(ours) == 1, error[-3000:]
    assert ours[0].startswith("error: worker 1 at 127.0.0.1:") and "stopped answering" in ours[0], error[-1500:]
    assert "Start every worker again with the same command to resume" in error
    done = len(RunFolder(str(model_dir)).read_history())
    assert 3 <= done < 60
    multi_worker_params(model_dir, num_epochs=done + 1, steps_per_epoch=2)
    codes, outputs = finish(train_workers(model_dir), timeout=300)
    assert codes == [0, 0], [error[-3000:] for _, error in outputs]
    assert "resuming" in outputs[0][0]
    rows = RunFolder(str(model_dir)).read_history()
    assert [int(row["epoch"]) for row in rows] == list(range(1, done + 2))


def test_the_keras_multi_worker_bugs_worked_around_are_still_upstream():
    """Each fails once Keras changes the code that EmbeddingModel works around (keras-team/keras 20585):
    then drop the workaround in model/training/model.py."""
    import inspect

    from keras.src.backend.tensorflow import trainer

    build = inspect.getsource(trainer.TensorFlowTrainer._maybe_symbolic_build)
    assert 'self.distribute_strategy.reduce(\n                        "MEAN"' in build, "Keras no longer reduces the " \
        "first distributed batch with MEAN: EmbeddingModel._maybe_symbolic_build may go"
    reduction = inspect.getsource(trainer.reduce_per_replica)
    assert 'strategy.reduce("MEAN", v, axis=0)' in reduction, "Keras no longer reduces multi-worker logs along " \
        "axis 0: the reshape of the logs in EmbeddingModel.train_step may go"


@pytest.mark.multiprocess
def test_all_gather_of_int32_in_a_multi_worker_train_step_still_fails_upstream(tmp_path):
    """EmbeddingModel gathers the labels as float32 because all_gather of an int32 tensor fails in a multi-worker
    Keras train step (float32 works); this test fails once int32 works too (then the casts may go)."""
    script = tmp_path / "gather.py"
    script.write_text(textwrap.dedent("""
        import keras, numpy as np, tensorflow as tf
        strategy = tf.distribute.MultiWorkerMirroredStrategy()

        class Gathering(keras.Model):
            def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
                context = tf.distribute.get_replica_context()
                gathered = context.all_gather(y_pred, axis=0)  # float32: works
                labels = context.all_gather(y, axis=0)  # int32: fails
                return tf.reduce_mean(gathered) * tf.cast(tf.size(labels), "float32") / strategy.num_replicas_in_sync

            def _maybe_symbolic_build(self, iterator=None, data_batch=None):
                pass  # built below; the bug worked around in model/training/model.py is not the one tested

            def train_step(self, data):
                return {k: tf.reshape(v, (1,)) for k, v in super().train_step(data).items()}

        with strategy.scope():
            inputs = keras.Input((3,))
            model = Gathering(inputs, keras.layers.Dense(2)(inputs))
            model.compile(optimizer="sgd")
        data = tf.data.Dataset.from_tensors((np.ones((4, 3), "float32"), np.zeros(4, "int32"))).repeat()
        data = strategy.distribute_datasets_from_function(lambda context: data)
        try:
            model.fit(data, steps_per_epoch=1, epochs=1, verbose=0)
            print("ALL_GATHER_WORKS")
        except ValueError as error:
            print("ALL_GATHER_FAILS", error)
    """))
    codes, outputs = finish(start_workers([str(script)]), timeout=180)
    assert codes == [0, 0], [error[-2000:] for _, error in outputs]
    assert "ALL_GATHER_FAILS destinations can not be empty" in outputs[0][0], outputs[0][0][-500:]


def start_alone(model_dir, *arguments):
    """Worker 0 of a two-worker cluster on 127.0.0.1 whose worker 1 never starts: (process, worker 1's address)."""
    ports = free_ports(2)
    config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]}, "task": {"type": "worker", "index": 0}}
    environment = {**os.environ, "TF_CONFIG": json.dumps(config), "TF_CPP_MIN_LOG_LEVEL": "2"}
    # SIGINT as in a terminal: a job started in the background by a non-interactive shell ignores it, and so
    # would its children.
    process = subprocess.Popen([sys.executable, "train.py", "--model_dir", str(model_dir), *arguments], cwd=ROOT,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return process, f"127.0.0.1:{ports[1]}"


def read_until(process, text, timeout):
    """The lines of the process's standard output up to the first holding `text` (waiting at most `timeout`)."""
    lines, found = [], threading.Event()

    def read():
        for line in process.stdout:
            lines.append(line)
            if text in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    found.wait(timeout)
    return lines


@pytest.mark.multiprocess
@pytest.mark.parametrize("number, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_worker_whose_peer_never_starts_says_so_and_stops_at_once_on_a_signal(tmp_path, number, status):
    model_dir = tmp_path / "run"
    multi_worker_params(model_dir)
    process, address = start_alone(model_dir)
    try:
        lines = read_until(process, f"waiting for worker 1 at {address} (0 s)", timeout=120)
        assert lines and lines[-1].startswith(f"waiting for worker 1 at {address} (0 s)"), lines
        time.sleep(2)
        sent = time.time()
        process.send_signal(number)
        _, error = process.communicate(timeout=10)
        assert time.time() - sent < 10
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == status, error[-2000:]
    assert f"stopped by {signal.Signals(number).name}" in error and "Traceback" not in error
    assert os.listdir(model_dir) == ["params.json"]  # nothing half-written, no lock: a new start begins afresh


@pytest.mark.multiprocess
def test_a_worker_whose_peer_never_starts_gives_up_after_the_timeout(tmp_path):
    model_dir = tmp_path / "run"
    multi_worker_params(model_dir)
    process, address = start_alone(model_dir, "--worker_timeout", "2")
    try:
        output, error = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 4, error[-2000:]
    assert output.splitlines() == [f"waiting for worker 1 at {address} (0 s)"]  # then every 5 s
    assert f"error: worker 1 at {address} did not answer within 2 s (--worker_timeout)" in error
    assert "Traceback" not in error and os.listdir(model_dir) == ["params.json"]


@pytest.mark.parametrize("value, message", [
    (None, "needs the cluster in the TF_CONFIG environment variable, which is not set"),
    ("", "TF_CONFIG environment variable, which is empty"),
    ("{cluster: }", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG has no "cluster"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', 'TF_CONFIG: "task" is None'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', 'TF_CONFIG: "task" is'),
    ('{"cluster": {"worker": ["a", "b:2"]}, "task": {"type": "worker", "index": 0}}', '"host:port" addresses'),
])
def test_multi_worker_without_a_usable_tf_config_is_an_error_naming_it(tmp_path, monkeypatch, capsys, value, message):
    import train as train_cli

    model_dir = tmp_path / "run"
    multi_worker_params(model_dir)
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    assert train_cli.main(["--model_dir", str(model_dir)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error and "Traceback" not in error
    assert os.listdir(model_dir) == ["params.json"]  # it trains alone nowhere


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "soon"])
def test_worker_timeout_must_be_a_positive_number_of_seconds(tmp_path, capsys, value):
    import train as train_cli

    with pytest.raises(SystemExit) as raised:
        train_cli.main(["--model_dir", str(tmp_path), "--worker_timeout", value])
    assert raised.value.code == 2
    assert f"--worker_timeout: expected a positive number of seconds, got '{value}'" in capsys.readouterr().err
