"""The one guard of an output folder that a command fills or replaces: nothing of the user's is ever lost.

    check_output_folder("out/", ("retrieved.csv", ...), "queries/", "database/", what="retrieval output")
"""
import os


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
        if out == folder or folder.startswith(out + os.sep) or out.startswith(folder + os.sep):
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
