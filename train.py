"""Train an experiment:
    python train.py --model_dir experiments/base_model [--restore_from OTHER_RUN] [--eval_interval N]
                    [--worker_timeout SECONDS]

Reads MODEL_DIR/params.json, trains, and writes checkpoints, TensorBoard logs and history.csv
into MODEL_DIR. Running it again resumes an interrupted run; a finished run is left untouched.
--eval_interval N validates (and picks best.keras) every N training steps instead of every epoch: the same
training steps in epochs of N steps (give it again when resuming).
"distribute": "multi_worker" (every worker runs this command with its TF_CONFIG): each worker waits for the
others, saying which one it waits for, up to --worker_timeout seconds (default 300); SIGTERM and Ctrl-C end it
at any moment, the run folder resumable.
Exit status: 0 done (or already complete), 2 bad input or an unusable run folder, 3 diverged, 4 a worker
never started or was lost (start every worker again to resume), 130 interrupted (Ctrl-C), 143 SIGTERM
(multi-worker).
"""

import argparse
import errno
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model.cli import configure_logging, loading  # noqa: E402

with loading():  # Ctrl-C while the modules load: exit 130, no traceback
    import tensorflow as tf

    from model.app.training import summary, train
    from model.params import Params
    from model.run import RunFolder, RunLocked, RunStateError
    from model.training import RunComplete, TrainingDiverged
    from model.training.distribute import DEFAULT_WORKER_TIMEOUT, ClusterError


def _seconds(text):
    """argparse type: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="experiment folder holding params.json")
    parser.add_argument(
        "--restore_from", default=None, help="run folder whose best network starts this run (fresh optimizer)"
    )
    parser.add_argument(
        "--eval_interval", type=int, default=None,
        help="validate and pick best.keras every N training steps (needs steps_per_epoch; epochs become N steps)",
    )
    parser.add_argument(
        "--worker_timeout", type=_seconds, default=DEFAULT_WORKER_TIMEOUT,
        help=f'"distribute": "multi_worker": seconds to wait for the other workers of TF_CONFIG to start '
             f"(default {DEFAULT_WORKER_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    configure_logging()
    try:
        params = Params.load(os.path.join(args.model_dir, "params.json"))
        if args.eval_interval is not None:
            params = params.with_eval_interval(args.eval_interval)
        result = train(params, args.model_dir, restore_from=args.restore_from, worker_timeout=args.worker_timeout)
        print("\n".join(summary(args.model_dir, result)))
    except RunComplete as done:
        print(done)
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except ClusterError as error:
        print(f"error: {error}. {_kept(args.model_dir)}", file=sys.stderr)
        return 4
    except (ValueError, FileNotFoundError, NotADirectoryError, RunStateError, RunLocked) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (OSError, tf.errors.ResourceExhaustedError) as error:  # a read-only run folder, a full disk
        if _disk_full(error):  # TensorFlow's checkpoint writer says so with ResourceExhaustedError
            print(f"error: the disk is full: {args.model_dir} could not be written ({_first_line(error)}); nothing "
                  f"half-written is kept. Free some space: {_kept(args.model_dir)}", file=sys.stderr)
            return 2
        if isinstance(error, tf.errors.ResourceExhaustedError):
            raise
        print(f"error: cannot write the run folder {args.model_dir}: {error}. {_kept(args.model_dir)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted. {_kept(args.model_dir)}", file=sys.stderr)
        return 130
    return 0


def _disk_full(error):
    """Whether `error` (an OSError or a TensorFlow error) says that the disk is full."""
    return getattr(error, "errno", None) == errno.ENOSPC or "No space left on device" in str(error)


def _first_line(error):
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)[:300]


def _kept(model_dir):
    """What an interrupted run keeps, and how to go on."""
    folder = RunFolder(model_dir)
    rows = folder.read_history()
    epochs = int(rows[-1]["epoch"]) if rows else 0
    try:  # an epoch whose row is written but not its state (interrupted between the two) is trained again
        latest = tf.train.latest_checkpoint(folder.state_dir)
        epochs = min(epochs, int(latest.rsplit("-", 1)[1]) if latest else 0)
    except (tf.errors.OpError, ValueError, IndexError):
        pass
    if not epochs:
        return f"{model_dir} has no completed epoch yet; run the same command to start again."
    return f"{model_dir} keeps {epochs} completed epoch(s); run the same command to resume after epoch {epochs}."


if __name__ == "__main__":
    sys.exit(main())
