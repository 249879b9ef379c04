"""Training throughput on one device, two replicas of one machine and two workers, global vs local mining.

    python benchmarks/bench_distributed.py [--model_dir experiments/base_model] [--steps 60] [--quick]

Each configuration trains the experiment for two epochs of `--steps` steps through `train` (the public
path: data, model, loss, fit, checkpoints) in fresh processes, without validation, and reports the
images per second of its second epoch (the first one traces and warms up), measured side by side in
one run:
  1 device             the default strategy
  mirrored, 2 CPUs     MirroredStrategy over 2 logical CPU devices of this machine
  2 workers            MultiWorkerMirroredStrategy, two processes talking over 127.0.0.1
each with global mining (the global batch gathered on every replica) and local mining. On a 2-core
machine the replicas share the same two cores, so the point is the cost of distributing and of
gathering, not a speed-up: on several GPUs or machines each replica has its own device.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import describe  # noqa: E402

CHILD = """
import json, sys
{devices}
sys.path.insert(0, {root!r})
from model.app.training import train
from model.params import Params

rows = train(Params.from_dict(json.loads({values!r})), {run!r}).rows
print("RESULT", json.dumps({{"seconds": float(rows[-1]["epoch_seconds"]), "loss": float(rows[-1]["loss"])}}))
"""
TWO_DEVICES = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for handle in sockets:
        handle.bind(("127.0.0.1", 0))
    ports = [handle.getsockname()[1] for handle in sockets]
    for handle in sockets:
        handle.close()
    return ports


def _run(values, devices, workers, folder):
    """Seconds of the second epoch (the chief's), starting `workers` processes of the same cluster."""
    script = CHILD.format(devices=devices, root=ROOT, values=json.dumps(values), run=folder)
    ports = _free_ports(workers)
    processes = []
    for index in range(workers):
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        if workers > 1:
            environment["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                                   "task": {"type": "worker", "index": index}})
        processes.append(subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                                          env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outputs = [process.communicate(timeout=900) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    if any(process.returncode for process in processes):
        raise RuntimeError(f"a benchmark process failed:\n{outputs[0][1][-2000:]}")
    return json.loads(outputs[0][0].split("RESULT")[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default="experiments/base_model")
    parser.add_argument("--steps", type=int, default=60, help="steps per epoch")
    parser.add_argument("--quick", action="store_true", help="20 steps per epoch")
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    steps = 20 if args.quick else args.steps
    with open(os.path.join(ROOT, args.model_dir, "params.json")) as handle:
        values = {**json.load(handle), "num_epochs": 2, "steps_per_epoch": steps, "validation_size": 0}
    batch = values["classes_per_batch"] * values["images_per_class"] if values.get("classes_per_batch") else \
        values["batch_size"]
    configurations = [("1 device", None, "global", "", 1)]
    for mining in ("global", "local"):
        configurations.append((f"mirrored, 2 CPUs, {mining}", "mirrored", mining, TWO_DEVICES, 1))
        configurations.append((f"2 workers, {mining}", "multi_worker", mining, "", 2))
    print(f"{args.model_dir}: {values['model']}, global batch {batch}, {steps} steps per epoch, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'configuration':<28}{'images/s':>10}{'vs 1 device':>13}{'step ms':>10}")
    baseline = None
    with tempfile.TemporaryDirectory() as scratch:
        for number, (name, distribute, mining, devices, workers) in enumerate(configurations):
            folder = os.path.join(scratch, f"run{number}")
            result = _run({**values, "distribute": distribute, "mining": mining}, devices, workers, folder)
            rate = steps * batch / result["seconds"]
            baseline = baseline or rate
            print(f"{name:<28}{rate:>10,.0f}{rate / baseline:>12.2f}x{1000 * result['seconds'] / steps:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
