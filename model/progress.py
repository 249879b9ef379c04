"""Progress bars that keep a log file readable.

Keras's `Progbar` redraws its line with carriage returns and colour codes whenever it takes the output for
interactive, and it takes every POSIX system for interactive: in a file or a pipe (`make train > log`,
`evaluate.py | tee`, a cluster's job log) each update adds a redrawn bar. Here a bar is drawn in a terminal
only; elsewhere the command lines' own one-line summaries (one line per epoch, the metrics table) remain.

    progress = progress_bar(num_batches, "batch", verbose)   # a Progbar; silent outside a terminal
"""

import sys

import keras


def interactive():
    """True when standard output is a terminal."""
    return hasattr(sys.stdout, "isatty") and sys.stdout.isatty()


def progress_bar(target, unit_name, verbose=True):
    """A `keras.utils.Progbar` over `target` steps (None: unknown), drawn when `verbose` and in a terminal."""
    return keras.utils.Progbar(target, unit_name=unit_name, verbose=int(bool(verbose) and interactive()))
