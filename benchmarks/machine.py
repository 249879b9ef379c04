"""The machine a benchmark runs on, read when it runs: every benchmark prints `describe()` first, so that its
figures carry the date, the CPU model and core count, the accelerators and the versions they were measured with."""

import datetime
import os
import platform


def cpu_model():
    """The CPU's model name (/proc/cpuinfo on Linux, else what the platform says)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe():
    """One line: date, CPU model, the cores this process may use, GPUs, and the versions that matter."""
    import faiss
    import keras
    import numpy as np
    import tensorflow as tf

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpus = [device.name for device in tf.config.list_physical_devices("GPU")]
    return (f"measured {datetime.date.today().isoformat()} on {cpu_model()}, {cores} cores"
            f"{', GPUs ' + ', '.join(gpus) if gpus else ', no GPU'}; Python {platform.python_version()}, "
            f"TensorFlow {tf.__version__}, Keras {keras.__version__}, NumPy {np.__version__}, "
            f"faiss {faiss.__version__}")
