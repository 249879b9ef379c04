"""Progress bars that keep a log file readable.

Keras's `Progbar` redraws its line with carriage returns and colour codes whenever it takes the output for
interactive, and it takes every POSIX system for interactive: in a file or a pipe (`make train > log`,
`evaluate.py | tee`, a cluster's job log) each update adds a redrawn bar. Here a bar is drawn in a terminal
only; elsewhere the command lines' own one-line summaries (one line per epoch, the metrics table) remain.

    progress = progress_bar(num_batches, "batch", verbose)   # a Progbar; silent outside a terminal
    redraw("epoch 2/8  12/40 steps  loss 0.52")             # one line, redrawn in place; clear() removes it
    width = terminal_width()                                # columns of the terminal, None outside one
"""

import shutil
import sys

import keras


def interactive():
    """True when standard output is a terminal."""
    return hasattr(sys.stdout, "isatty") and sys.stdout.isatty()


def progress_bar(target, unit_name, verbose=True):
    """A `keras.utils.Progbar` over `target` steps (None: unknown), drawn when `verbose` and in a terminal."""
    return keras.utils.Progbar(target, unit_name=unit_name, verbose=int(bool(verbose) and interactive()))


def terminal_width():
    """The terminal's number of columns, or None when standard output is not a terminal."""
    return shutil.get_terminal_size().columns if interactive() else None


def redraw(text):
    """Draw `text` over the current line of the terminal (cut to its width); nothing outside a terminal."""
    if interactive():
        sys.stdout.write("\r\033[K" + text[: terminal_width() - 1])
        sys.stdout.flush()


def clear():
    """Remove the line `redraw` drew, so that what follows starts at the beginning of an empty line."""
    if interactive():
        sys.stdout.write("\r\033[K")
        sys.stdout.flush()
