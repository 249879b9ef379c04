"""Training: the step model (model.py), distribution (distribute.py), the resumable run (runner.py), its
callbacks, its optimizer and schedule (optimization.py), the cross-batch memory and the steps besides fit.

    plan = TrainingPlan(network=..., loss=..., optimizer=..., batches=..., ...)
    result = train_run(plan, RunFolder(model_dir), make_strategy())
"""

from model.training import memory, optimization, runner
from model.training.distribute import DISTRIBUTE, is_chief, make_strategy
from model.training.memory import CrossBatchMemory
from model.training.model import MINING, MINING_OPTION, EmbeddingModel
from model.training.runner import RunComplete, TrainingDiverged, TrainingPlan, TrainingResult, train_run

# The params.json keys of training, and the rules across them (`model.params` reads these).
OPTIONS = (memory.MEMORY, runner.NUM_EPOCHS, runner.STEPS_PER_EPOCH, *optimization.OPTIONS, runner.MIXED_PRECISION,
           DISTRIBUTE, MINING_OPTION, runner.SEED, runner.SAVE_SUMMARY_STEPS, runner.STOP_ON_COLLAPSE)
RULES = memory.RULES + optimization.RULES

__all__ = ["MINING", "OPTIONS", "RULES", "CrossBatchMemory", "EmbeddingModel", "RunComplete", "TrainingDiverged",
           "TrainingPlan", "TrainingResult", "is_chief", "make_strategy", "train_run"]
