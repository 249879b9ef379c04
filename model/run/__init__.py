"""The run folder: its layout and writes (folder.py), its lock (lock.py), the record of its epochs (state.py)."""

from model.run.folder import CHECKPOINTS, RunFolder, RunStateError
from model.run.lock import RunLocked
from model.run.state import TrainingState

__all__ = ["CHECKPOINTS", "RunFolder", "RunLocked", "RunStateError", "TrainingState"]
