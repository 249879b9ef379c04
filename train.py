"""Train an experiment: python train.py --model_dir experiments/base_model [--restore_from OTHER_RUN]

Reads MODEL_DIR/params.json, trains, and writes checkpoints, TensorBoard logs and history.csv
into MODEL_DIR. Running it again resumes an interrupted run; a finished run is left untouched.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from model.params import Params  # noqa: E402
from model.run import RunStateError  # noqa: E402
from model.training import RunComplete, train  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="experiment folder holding params.json")
    parser.add_argument(
        "--restore_from", default=None, help="run folder whose best network starts this run (fresh optimizer)"
    )
    args = parser.parse_args(argv)
    try:
        params = Params.load(os.path.join(args.model_dir, "params.json"))
        train(params, args.model_dir, restore_from=args.restore_from)
    except RunComplete as done:
        print(done)
    except (ValueError, FileNotFoundError, RunStateError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
