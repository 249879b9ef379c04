"""Writing files atomically: to a temporary name beside the file, then renamed into place.

    with atomic_file("RUN/checkpoints/best.keras") as temporary:
        network.save(temporary)
    write_text(path, text); write_json(path, value); write_csv(path, header, rows)
    save_array(path, array); save_network(network, path)

An interruption (kill -9, a full disk, an exception in the writer) leaves either the old file or the
new one, never half of one; a failed writer's temporary file is removed. A folder written as a whole
(an exported bundle, a saved index) is built beside its place and swapped in with `replace_folder`.
Every file of a run folder, a retrieval output or a data report is written this way.
"""

import contextlib
import csv
import json
import os
import shutil
import tempfile

import numpy as np

PARTIAL = ".partial"  # infix of temporary files; `model.run.RunFolder.remove_partial_files` clears them


@contextlib.contextmanager
def atomic_file(path):
    """Yield a temporary path beside `path`; on success rename it to `path`, on failure remove it.

    The temporary name keeps the extension (`best.partial.keras`, `history.partial.csv`), for
    writers that insist on one. The folder must exist.
    """
    stem, extension = os.path.splitext(path)
    temporary = f"{stem}{PARTIAL}{extension}"
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_text(path, text):
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_file(path) as temporary, open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json(path, value):
    """Write `value` as indented JSON to `path` atomically (NaN and infinity refused: not JSON)."""
    write_text(path, json.dumps(value, indent=2, allow_nan=False) + "\n")


def write_csv(path, header, rows):
    """Write a CSV file (UTF-8, "\n" line ends, a `header` row, then `rows`) to `path` atomically."""
    with atomic_file(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def save_array(path, array):
    """`np.save` of `array` to `path` (a .npy file) atomically."""
    with atomic_file(path) as temporary, open(temporary, "wb") as handle:
        np.save(handle, np.asarray(array))


def save_network(network, path):
    """`network.save(path)` (a .keras file) atomically."""
    with atomic_file(path) as temporary:
        network.save(temporary)


def replace_folder(staging, directory):
    """Put the finished folder `staging` at `directory` (same parent); a previous one is moved aside, then deleted."""
    previous = None
    if os.path.exists(directory):
        previous = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-", dir=os.path.dirname(directory))
        os.replace(directory, os.path.join(previous, "folder"))
    os.replace(staging, directory)
    if previous is not None:
        shutil.rmtree(previous)
