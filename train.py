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
        given = Params.load(os.path.join(args.model_dir, "params.json"))
        params = given.with_eval_interval(args.eval_interval) if args.eval_interval is not None else given
        changed = _eval_interval_change(args.model_dir, given, args.eval_interval)
        if changed:
            raise ValueError(changed)
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


def _eval_interval_change(model_dir, params, eval_interval):
    """Why this start's epochs cannot have another length than the run's completed ones, naming --eval_interval
    (which sets it), or None: `params` are those of params.json, `eval_interval` the flag or None."""
    folder = RunFolder(model_dir)
    if not os.path.isfile(folder.effective_params_path) or not folder.read_history():
        return None
    try:
        old = folder.read_config().get("steps_per_epoch")
    except (OSError, ValueError, AttributeError):
        return None  # the run folder's own check names what is wrong with it
    new = eval_interval if eval_interval is not None else params.steps_per_epoch
    if old is None or old == new:
        return None
    given = f"--eval_interval {eval_interval}" if eval_interval is not None else "no --eval_interval"
    if old == params.steps_per_epoch:
        way = "resume without --eval_interval"
    else:
        way = (f"resume with --eval_interval {old}, as it was started (or, if params.json's steps_per_epoch "
               f"changed, put back {old})")
    return (f"{model_dir} trained its completed epochs in epochs of {old} steps (steps_per_epoch {old}); this start, "
            f"with {given}, would make them {new} steps long. --eval_interval N sets the epochs to N steps: {way}. "
            "Nothing was changed.")


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
