"""Writing files atomically: to a temporary name beside the file, then renamed into place.

    with atomic_file("RUN/checkpoints/best.keras") as temporary:
        network.save(temporary)
    write_text(path, text); write_json(path, value); write_csv(path, header, rows)
    save_array(path, array); save_network(network, path)

An interruption (kill -9, a full disk, an exception in the writer) leaves either the old file or the
new one, never half of one; a failed writer's temporary file is removed. A folder written as a whole
(an exported bundle, a saved index) is built in a `staging_folder` beside its place and swapped in with
`replace_folder`: the staging and set-aside folders carry the writer's pid in their names
(`.export.partial-<pid>-xxxx`, `.export.old-<pid>-xxxx`), so that the next writer removes those of a process
that no longer runs (killed mid-export) and leaves a live writer's alone. A folder gets the mode a plain
`mkdir` would give it under the user's umask (or keeps the mode of the folder it replaces), not
`tempfile.mkdtemp`'s 700. Every file of a run folder, a retrieval output or a data report is written this way.
"""

import contextlib
import csv
import json
import os
import re
import shutil
import stat
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


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_running(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_orphans(directory):
    """Delete the staging (`.NAME.partial-*`) and set-aside (`.NAME.old-*`) folders of `directory` that a killed
    writer left beside it; those of a live writer (its pid in the name) are left alone. Returns their paths."""
    parent, name = os.path.split(os.path.abspath(directory))
    pattern = re.compile(rf"^\.{re.escape(name)}\.(partial|old)-(?:(\d+)-)?[^/]+$")
    removed = []
    for entry in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
        found = pattern.match(entry)
        path = os.path.join(parent, entry)
        if not found or not os.path.isdir(path) or os.path.islink(path):
            continue
        pid = int(found.group(2)) if found.group(2) else None
        if pid is not None and pid != os.getpid() and _is_running(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def staging_folder(directory):
    """A new empty folder beside `directory` to build it in (then `replace_folder`): named with this process's
    pid, after removing the orphans of killed writers (`remove_orphans`), with the mode `directory` has (or a
    `mkdir` would give it under the umask). The parent folder is created if missing."""
    directory = os.path.abspath(directory)
    parent, name = os.path.split(directory)
    os.makedirs(parent, exist_ok=True)
    remove_orphans(directory)
    staging = tempfile.mkdtemp(prefix=f".{name}.partial-{os.getpid()}-", dir=parent)
    mode = stat.S_IMODE(os.stat(directory).st_mode) if os.path.isdir(directory) else 0o777 & ~_umask()
    os.chmod(staging, mode)
    return staging


def replace_folder(staging, directory):
    """Put the finished folder `staging` at `directory` (same parent); a previous one is moved aside, then deleted."""
    previous = None
    if os.path.exists(directory):
        previous = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.old-{os.getpid()}-",
                                    dir=os.path.dirname(directory))
        os.replace(directory, os.path.join(previous, "folder"))
    os.replace(staging, directory)
    if previous is not None:
        shutil.rmtree(previous)
