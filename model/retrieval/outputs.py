"""The guards of what a command writes: nothing of the user's is ever lost, and a path that cannot be written is
refused before the work, not after it.

    check_output_folder("out/", ("retrieved.csv", ...), "queries/", "database/", what="retrieval output")
    check_output_file("results.csv", "query,rank,...", "queries/", "q.npy", what="search results file")
"""
import os


def _overlaps(out, given):
    """Whether the path `out` is `given` or lies inside it (both real paths)."""
    return out == given or out.startswith(given.rstrip(os.sep) + os.sep)


def check_output_folder(out_dir, entries, *inputs, what):
    """Refuse an output folder that holds anything but `entries` (the names of a previous output: it will be
    replaced or rewritten), that is a file, or that contains, is, or lies inside one of the `inputs` folders.

    Args:
        out_dir: the output folder (need not exist).
        entries: the names the output itself writes into it.
        *inputs: folders the command reads.
        what: what the output is, in messages ("retrieval output", "bundle").

    Raises:
        ValueError: naming the folder and what is in the way; nothing was changed.
    """
    out = os.path.realpath(out_dir)
    for given in inputs:
        folder = os.path.realpath(given)
        if _overlaps(out, folder) or _overlaps(folder, out):
            raise ValueError(f"output folder {out_dir} and image folder {given} overlap (one holds the other); "
                             "choose an output folder outside the image folders")
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise ValueError(f"output folder {out_dir} is a file; expected a folder for the {what}")
    others = sorted(set(os.listdir(out_dir)) - set(entries))
    if others:
        listed = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise ValueError(f"output folder {out_dir} holds files that are not part of a {what} ({listed}): give a new "
                         f"or empty folder, or the folder of an earlier {what}; nothing was changed")


def check_output_file(path, header, *inputs, what):
    """Refuse an output file that would overwrite anything but an earlier output of the same kind, or that
    cannot be written: a folder, a path in a missing folder, a file whose first line is not `header` (an
    earlier output starts with it), or a path that is, or lies inside, one of `inputs` (files and folders
    the command reads).

    Raises:
        ValueError: naming the path and what is in the way; nothing was written.
    """
    out = os.path.realpath(path)
    for given in inputs:
        if given is not None and _overlaps(out, os.path.realpath(given)):
            raise ValueError(f"--out {path} is {'an input' if out == os.path.realpath(given) else 'inside the input'} "
                             f"{given}: the {what} would overwrite or join what is read; choose a path outside the "
                             "inputs; nothing was written")
    if os.path.isdir(path):
        raise ValueError(f"--out {path} is a folder; expected the path of the {what} (a file)")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"--out {path}: the folder {folder} does not exist; create it first, or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: the folder {folder} cannot be written (permission denied); choose another "
                         "path")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                first = handle.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            first = None
        if first != header:
            raise ValueError(f"--out {path} exists and is not an earlier {what} (its first line is not "
                             f"\"{header}\"); it is never overwritten: give a new file name; nothing was written")
