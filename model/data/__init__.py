"""Input pipelines: datasets on disk or in memory -> tf.data batches for metric learning.

Two steps, each one function:

    source = load_source("market1501", data_dir="data/Market-1501")       # -> DataSource
    train = make_dataset(source.splits["train"], image_size=(256, 128), channels=3, training=True,
                         classes_per_batch=18, images_per_class=4,
                         augment={"flip": True, "resize": [288, 144]})    # -> tf.data.Dataset

`load_source` (sources.py) reads a dataset into Splits of in-memory images or file paths with
int32 labels; `make_dataset` (pipeline.py) turns a Split into batches of
(images float32 [B, H, W, C] in [0, 255], labels int32 [B]). Models do their own scaling.

What the loaders leave out (undecodable or oversized files, stray entries, empty classes, ...) is
logged and kept in `source.report`; `write_report(source.report, path)` saves it as CSV.
`check_trainable(labels, classes_per_batch=P, images_per_class=K)` logs the batches that can never form
a valid pair or triplet.
"""
# The loaders register their datasets first, in the order of `sources` (the order of the names in messages).
from model.data.sources import load_source

# isort: split
from model.data import cached, folders, pipeline, places
from model.data.datasets import DATA_DIR, DATASETS, TRAIN_SIZE, VALIDATION_SIZE, TrainingPairs
from model.data.gps import gps_positives, within_radius
from model.data.images import IMAGE_EXTENSIONS, MAX_PIXELS
from model.data.pipeline import TrainingBatches, make_dataset
from model.data.report import ReportEntry, write_report
from model.data.sampling import check_trainable, steps_per_epoch
from model.data.splits import DataSource, Split, read_class_names

# The params.json keys of the data and the batches, and the rules across them (`model.params` reads these).
OPTIONS = (DATASETS.selector(), DATA_DIR, pipeline.IMAGE_SIZE, pipeline.CHANNELS, TRAIN_SIZE, VALIDATION_SIZE,
           *DATASETS.options(), places.NONTRIVIAL_RADIUS, places.PLACES_TRAINING, pipeline.NUM_PARALLEL_CALLS,
           pipeline.BATCH_SIZE, pipeline.CLASSES_PER_BATCH, pipeline.IMAGES_PER_CLASS, pipeline.AUGMENT,
           cached.CACHE_REFRESH)
RULES = folders.RULES + pipeline.RULES + cached.RULES

__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "MAX_PIXELS", "OPTIONS", "RULES", "DataSource", "ReportEntry", "Split",
           "TrainingBatches", "TrainingPairs", "check_trainable", "gps_positives", "load_source", "make_dataset",
           "read_class_names", "steps_per_epoch", "within_radius", "write_report"]
