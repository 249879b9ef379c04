"""Exporting a trained run as a bundle a service can load without this repository (behind export.py).

    out_dir, manifest = export_bundle("experiments/digits")      # -> experiments/digits/export/

The bundle's format and its client are `model.retrieval.bundle`; here a run supplies what goes in: its
network, the reference set its dataset's protocol searches (the train split with class names, the re-ID
gallery with person ids, or the places database), the threshold calibrated on its validation split, and
its parameters and checkpoint in the manifest.
"""
import os

import numpy as np

from model.app import adapter
from model.app.runs import load_run
from model.retrieval.bundle import check_bundle_folder, no_threshold, threshold_of, write_bundle
from model.retrieval.calibration import DEFAULT_TARGET_PRECISION
from model.retrieval.embed import embed_split


def export_bundle(model_dir, out_dir=None, checkpoint="best", index_kind="flat", index_params=None,
                  target_precision=DEFAULT_TARGET_PRECISION, verbose=True):
    """Write the bundle of a trained run (see `model.retrieval.bundle`).

    Args:
        model_dir: the run folder.
        out_dir: the bundle folder (default MODEL_DIR/export): new, empty, or a previous bundle.
        checkpoint: "best" or "latest".
        index_kind, index_params: of `ReferenceIndex.build` ("flat", "ivf" or "hnsw"; their parameters).
        target_precision: of the calibrated threshold.
        verbose: progress bars while embedding.

    Returns:
        (the bundle folder, its manifest dict).

    Raises:
        ValueError: the run or the output folder is unusable; PermissionError (an OSError): the bundle's folder
            cannot be written (checked before the embedding).
    """
    params, source, network, folder = load_run(model_dir, checkpoint)
    out_dir = os.path.abspath(out_dir or folder.path("export"))
    check_bundle_folder(out_dir)  # before the embedding, which takes minutes; write_bundle checks it again
    parent = next(path for path in _parents(out_dir) if os.path.exists(path))  # where the bundle is built
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", parent)
    protocol = adapter.protocol(params)
    reference_name = protocol.reference_split or "train"
    reference = source.splits[reference_name]
    reading = {"image_size": params.image_size, "channels": params.channels, "verbose": verbose}
    embeddings = embed_split(network, reference, **reading)  # [N, E]
    if protocol.shows_raw_ids(reference_name) or not source.class_names:  # re-ID: the person ids themselves
        labels = np.asarray(reference.labels, dtype=np.int64)
    else:
        labels = np.asarray(source.class_names)[reference.labels]
    validation = source.splits.get("validation")
    if protocol.threshold_reason:
        threshold = no_threshold(protocol.threshold_reason)
    elif validation is None or len(validation) < 2:
        threshold = no_threshold("the run has no validation split to calibrate on (validation_size in params.json)")
    else:
        threshold = threshold_of(embed_split(network, validation, **reading), validation.labels, target_precision)
    manifest = write_bundle(
        out_dir, network, image_size=params.image_size, channels=params.channels, embeddings=embeddings,
        labels=labels, paths=reference.paths, threshold=threshold, index_kind=index_kind, index_params=index_params,
        manifest={"run": os.path.abspath(model_dir), "checkpoint": checkpoint, "dataset": params.dataset,
                  "protocol": source.protocol, "reference_split": reference_name, "params": params.to_dict()})
    return out_dir, manifest


def _parents(path):
    """The folders above `path`, nearest first."""
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        yield path
