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
`check_trainable(params, labels)` logs the settings that can never form a valid pair or triplet.
"""
from model.data.gps import gps_positives
from model.data.images import IMAGE_EXTENSIONS, MAX_PIXELS
from model.data.pipeline import make_dataset, steps_per_epoch
from model.data.sources import DATASETS, load_source
from model.data.splits import DataSource, ReportEntry, Split, check_trainable, read_class_names, write_report

__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "MAX_PIXELS", "DataSource", "ReportEntry", "Split", "check_trainable",
           "gps_positives", "load_source", "make_dataset", "read_class_names", "steps_per_epoch", "write_report"]
