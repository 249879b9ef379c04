"""The lock of a run folder: one process trains it at a time (RUN/.lock holds its pid).

    with hold_lock("RUN/.lock", "RUN"):
        ...                                  # train

A second trainer of the same folder is refused with RunLocked naming the pid; a lock left by a process
that no longer runs (a crash, kill -9) is stale and taken over.
"""

import contextlib
import os
import time


class RunLocked(Exception):
    """Another live process is training the same run folder."""


@contextlib.contextmanager
def hold_lock(path, root):
    """Hold the lock file `path` of the run folder `root` while the block runs (see the module docstring)."""
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is None and time.time() - _modified(path) < 10:  # just created, pid not yet written
                raise RunLocked(f"{root} is being started by another process ({path} is new)") from None
            if owner is not None and owner != os.getpid() and _is_running(owner):
                raise RunLocked(
                    f"{root} is being trained by pid {owner}; wait for it to finish or stop it "
                    f"(if that process is gone, delete {path})"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # stale: its process is gone
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(f"{os.getpid()}\n")
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def _lock_owner(path):
    """The pid written in a lock file, or None when it cannot be read (being written, or garbage)."""
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def _modified(path):
    try:
        return os.path.getmtime(path)
    except FileNotFoundError:
        return 0.0


def _is_running(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True

