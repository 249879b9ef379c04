"""What the command lines (train.py, evaluate.py, visualize_embeddings.py) share.

Reports about data (files left out, classes too small) are `logging` records of the `model` loggers;
the command lines show them on standard error, whatever `PYTHONWARNINGS` says, and the run folder or
output folder keeps them in its data_report.csv.
"""

import logging


def configure_logging():
    """Warnings and errors of every library on standard error; the project's own records from INFO up."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("model").setLevel(logging.INFO)
