"""What the command lines (train.py, evaluate.py, visualize_embeddings.py) share.

Reports about data (files left out, classes too small) are `logging` records of the `model` loggers;
the command lines show them on standard error, whatever `PYTHONWARNINGS` says, and the run folder or
output folder keeps them in its data_report.csv.
"""

import logging
import sys


def configure_logging():
    """Warnings and errors of every library on standard error; the project's own records from INFO up.
    Standard output is written line by line even into a file or a pipe (`make train > log`, a job log), where
    Python would otherwise hold the epoch lines back in a block buffer until several kilobytes had gathered."""
    if hasattr(sys.stdout, "reconfigure"):  # not a test's or a notebook's replacement stream
        sys.stdout.reconfigure(line_buffering=True)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("model").setLevel(logging.INFO)
