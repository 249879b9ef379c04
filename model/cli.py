"""What the command lines (train.py, evaluate.py, export.py, search.py, visualize_embeddings.py) share.

The library speaks through `logging`: what it does (one line per epoch, steps, summaries) as INFO records
of the `model` loggers, and reports about data (files left out, classes too small) as warnings, which the
run folder or output folder also keeps in its data_report.csv. The command lines show the INFO records on
standard output, as plain lines, and warnings and errors of every library on standard error, whatever
`PYTHONWARNINGS` says. Ctrl-C while a command loads its modules (TensorFlow takes seconds) ends it with one
line and exit 130, not an import traceback (`loading`).
"""

import contextlib
import logging
import os
import signal
import sys
import threading


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


@contextlib.contextmanager
def loading():
    """Around a command's imports: Ctrl-C ends the process with exit 130 and one line (nothing has been done yet),
    not a traceback from inside an import. A SIGINT that is ignored (a background job) or handled by the caller
    is left as it is."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def interrupted(number, frame):
        sys.stderr.write("\ninterrupted while loading; nothing was done\n")
        sys.stderr.flush()
        os._exit(130)

    signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
