"""What the command lines (train.py, evaluate.py, export.py, search.py, visualize_embeddings.py) share.

The library speaks through `logging`: what it does (one line per epoch, steps, summaries) as INFO records
of the `model` loggers, and reports about data (files left out, classes too small) as warnings, which the
run folder or output folder also keeps in its data_report.csv. The command lines show the INFO records on
standard output, as plain lines, and warnings and errors of every library on standard error, whatever
`PYTHONWARNINGS` says.
"""

import logging
import sys


class _Below(logging.Filter):
    """Lets through the records below a level."""

    def __init__(self, level):
        super().__init__()
        self.level = level

    def filter(self, record):
        return record.levelno < self.level


def configure_logging():
    """The project's INFO records on standard output as plain lines; warnings and errors of every library on
    standard error. Standard output is written line by line even into a file or a pipe (`make train > log`, a
    job log), where Python would otherwise hold the epoch lines back in a block buffer until several kilobytes
    had gathered."""
    if hasattr(sys.stdout, "reconfigure"):  # not a test's or a notebook's replacement stream
        sys.stdout.reconfigure(line_buffering=True)
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.WARNING))
    out.setFormatter(logging.Formatter("%(message)s"))
    errors = logging.StreamHandler(sys.stderr)
    errors.setLevel(logging.WARNING)
    errors.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[out, errors])
    logging.getLogger("model").setLevel(logging.INFO)
