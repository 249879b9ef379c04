"""Serving: a bundle that needs no project code (a SavedModel, an index, a threshold), and `Retriever`, its client.

    write_bundle(out_dir, network, image_size=28, channels=1, reference=(embeddings, labels, paths), ...)
    retriever = Retriever.load("experiments/digits/export")
    result = retriever.search("queries/", k=10)                # distances, indices, labels, paths: [Q, k]
    same, distances = retriever.verify(images_a, images_b)     # [N] bool, [N] float32

A bundle is one folder, built in a temporary folder beside its destination and renamed into place
(a rerun replaces it completely):
    saved_model/    TensorFlow SavedModel. Signature "serving_default": images uint8 [N, H, W, C]
                    (C = 1 or 3, any H and W: decoded image files) -> {"embeddings": float32 [N, E]}.
                    It does what evaluation does before the network (model.data.augment: RGB to
                    luma or gray to RGB for the run's channels, antialiased bilinear resize to the
                    run's image_size, float32 in [0, 255]); the network does its own scaling and L2
                    normalisation. Plain TensorFlow (or TF Serving) loads it: no custom objects.
    index/          model.retrieval.index.ReferenceIndex of the reference set embedded by the network
                    (a run's: the train split with class names, the gallery with person ids, or the
                    database), with file paths where there are files.
    threshold.json  model.retrieval.calibration.calibrate on labelled validation embeddings: the distance
                    thresholds at a target precision and at best F1; {"available": false, "reason"} without.
    manifest.json   what the bundle holds: format, dimensions, input, index, threshold, versions, the
                    fingerprint, and what the caller adds (the run, its checkpoint and parameters:
                    `model.app.export`).

The parts are tied together: `fingerprint.weights_sha256` is the SHA-256 of the SavedModel's variables
(their values, in order) and `fingerprint.bundle` a hash of it with the run and checkpoint the caller names;
index/index.json carries the same `bundle` fingerprint. `Retriever.load` recomputes the weights' hash from
the SavedModel it loads and checks both, and every manifest field it can against the index, the threshold
and the signature: an index or a SavedModel copied in from another export (even of a model of the same
dimension, which would give wrong neighbours without a word) is refused with the field that differs.
"""
import datetime
import hashlib
import json
import logging
import os
import platform
import shutil

import faiss
import keras
import numpy as np
import tensorflow as tf

from model.atomic import replace_folder, staging_folder, write_json
from model.data.augment import size_pair, to_channels
from model.data.images import IMAGE_EXTENSIONS, check_images, decode_image_file, find_images
from model.retrieval.calibration import calibrate, pair_distances, verify
from model.retrieval.embed import embed
from model.retrieval.index import ReferenceIndex
from model.retrieval.outputs import check_output_folder

BUNDLE_FORMAT = "metric-learning-bundle"
BUNDLE_FORMAT_VERSION = 2  # 2: the fingerprint (version 1 bundles load with a warning, unchecked)
SIGNATURE, INPUT, OUTPUT = "serving_default", "images", "embeddings"
BUNDLE_FILES = ("saved_model", "index", "threshold.json", "manifest.json")
THRESHOLDS = ("at_target", "best_f1")

logger = logging.getLogger(__name__)


def serving_function(network, image_size, channels):
    """The serving signature: `images: uint8 [N, H, W, C]` -> {"embeddings": `[N, E]`}, see the module docstring."""
    size = size_pair(image_size, "image_size")

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, None], tf.uint8, name=INPUT)])
    def serve(images):
        found = tf.shape(images)[-1]
        check = tf.debugging.Assert(tf.logical_or(tf.equal(found, 1), tf.equal(found, 3)),
                                    ["images must have 1 (gray) or 3 (RGB) channels, got", found])
        with tf.control_dependencies([check]):  # before ensure_shape below, whose error would not say why
            pixels = tf.cast(images, tf.float32)
        # Image files decode to RGB in evaluation (model.data.images): gray input is made RGB first.
        pixels = tf.cond(tf.equal(found, 1), lambda: tf.repeat(pixels, 3, axis=-1), lambda: pixels)
        pixels = to_channels(tf.ensure_shape(pixels, [None, None, None, 3]), channels)
        pixels = tf.image.resize(pixels, size, antialias=True)
        return {OUTPUT: tf.cast(network(pixels, training=False), tf.float32)}

    return serve


def save_serving_model(network, image_size, channels, path):
    """Write the SavedModel of `serving_function` to `path` (keras.export.ExportArchive)."""
    archive = keras.export.ExportArchive()
    archive.track(network)
    archive.add_endpoint("serve", serving_function(network, image_size, channels))
    archive.write_out(path, verbose=False)



def weights_digest(variables):
    """SHA-256 (hex) of the values of `variables` in order (dtype, shape and bytes of each): of a network's
    `variables` at export, and of the loaded SavedModel's, which tracks the same variables in the same order."""
    digest = hashlib.sha256()
    for variable in variables:
        value = np.ascontiguousarray(np.asarray(variable))
        digest.update(f"{value.dtype.str}{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def bundle_fingerprint(weights_sha256, manifest):
    """The fingerprint tying a bundle's index to its SavedModel: a hash of the weights' digest and of the run and
    checkpoint the caller's `manifest` names."""
    identity = json.dumps([weights_sha256, (manifest or {}).get("run"), (manifest or {}).get("checkpoint")])
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def threshold_of(embeddings, labels, target_precision):
    """threshold.json: `calibrate` on labelled validation `embeddings: [N, E]` and `labels: [N]`."""
    calibration = calibrate(embeddings, labels, target_precision)
    return {"available": True, "split": "validation", "rule": "same class when distance <= threshold", **calibration}


def no_threshold(reason):
    """threshold.json when no threshold can be calibrated, and why."""
    return {"available": False, "reason": reason}


def check_bundle_folder(out_dir):
    """Refuse a bundle folder that holds anything but an earlier bundle (`model.retrieval.outputs`): a folder
    that is not empty is replaced only when its manifest.json is the manifest of a bundle of this toolkit, whatever
    the names of its other entries (a user's `index/` or `manifest.json` are not a bundle's)."""
    check_output_folder(out_dir, BUNDLE_FILES, what="bundle")
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return
    path = os.path.join(out_dir, "manifest.json")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = "has no manifest.json" if not os.path.isfile(path) else \
            "has a manifest.json that is not a bundle manifest of export.py"
        raise ValueError(f"output folder {out_dir} {found} (it holds {', '.join(sorted(os.listdir(out_dir)))}): "
                         "only an earlier bundle is replaced; give a new or empty folder; nothing was changed")


def write_bundle(out_dir, network, *, image_size, channels, embeddings, labels, paths=None, threshold,
                 index_kind="flat", index_params=None, manifest=None):
    """Write a bundle (see the module docstring) into `out_dir`: new, empty, or an earlier bundle.

    Args:
        out_dir: the bundle folder.
        network: the embedding network; image_size, channels: what it reads (the signature resizes to them).
        embeddings: `[N, E]` reference embeddings of `network`; labels: `[N]` (numbers or strings); paths: N or None.
        threshold: threshold.json's content (`threshold_of` or `no_threshold`).
        index_kind, index_params: of `ReferenceIndex.build` ("flat", "ivf" or "hnsw"; their parameters).
        manifest: what the caller adds to manifest.json (e.g. the run, its checkpoint and parameters).

    Returns:
        the manifest dict written.
    """
    out_dir = os.path.abspath(out_dir)
    check_bundle_folder(out_dir)
    staging = staging_folder(out_dir)
    try:
        save_serving_model(network, image_size, channels, os.path.join(staging, "saved_model"))
        weights = weights_digest(network.variables)  # the variables the archive tracks, in its order
        fingerprint = {"weights_sha256": weights, "bundle": bundle_fingerprint(weights, manifest)}
        index = ReferenceIndex.build(embeddings, labels, paths, kind=index_kind, **(index_params or {}))
        index.fingerprint = fingerprint["bundle"]
        index.save(os.path.join(staging, "index"))
        write_json(os.path.join(staging, "threshold.json"), threshold)
        written = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_FORMAT_VERSION,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **(manifest or {}),
            "metric": "euclidean",
            "embedding_dimension": int(np.shape(embeddings)[1]),
            "input": {"signature": SIGNATURE, "name": INPUT, "dtype": "uint8", "shape": [None, None, None, None],
                      "channels_accepted": [1, 3], "image_size": list(size_pair(image_size, "image_size")),
                      "channels": channels, "output": OUTPUT},
            "index": {"kind": index.kind, "params": index.params, "count": len(index),
                      "has_paths": bool(len(index.paths))},
            "threshold": {name: threshold[name]["threshold"] for name in THRESHOLDS} if threshold["available"]
            else None,
            "files": list(BUNDLE_FILES),
            "fingerprint": fingerprint,
            "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                         "keras": keras.__version__, "faiss": faiss.__version__, "numpy": np.__version__},
        }
        write_json(os.path.join(staging, "manifest.json"), written)
        replace_folder(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return written


class Retriever:
    """Search and verify with a bundle of `export_bundle`: `Retriever.load(directory)`.

    Images may be given as a folder (searched recursively, as evaluate.py does), a list of image
    files, a uint8 array `[N, H, W, C]` (C = 1 or 3), or a list of uint8 `[H, W, C]` arrays. Image files
    that cannot be decoded (in a folder or in a list) are logged and left out; none usable is an error.
    """

    def __init__(self, directory, manifest, serve, index, threshold):
        self.directory, self.manifest, self.index, self.threshold = directory, manifest, index, threshold
        self._serve = serve

    @classmethod
    def load(cls, directory):
        """Read a bundle folder and check that its parts belong together (see the module docstring); a folder
        that is not a bundle, a damaged part, or parts of different exports are a clear ValueError."""
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise ValueError(f"{directory}: no such bundle folder")
        missing = [name for name in BUNDLE_FILES if not os.path.exists(os.path.join(directory, name))]
        if missing:
            raise ValueError(f"{directory} is not a bundle of export.py: it lacks {', '.join(missing)}")
        manifest_path = os.path.join(directory, "manifest.json")
        manifest = _read_json(manifest_path)
        if manifest.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{manifest_path}: not a bundle manifest (expected \"format\": \"{BUNDLE_FORMAT}\")")
        version = manifest.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= BUNDLE_FORMAT_VERSION:
            raise ValueError(f"{manifest_path}: format_version {version!r}; this code reads versions 1 to "
                             f"{BUNDLE_FORMAT_VERSION} (a newer bundle needs newer code)")
        threshold = _read_json(os.path.join(directory, "threshold.json"))
        index = ReferenceIndex.load(os.path.join(directory, "index"))
        saved_model = os.path.join(directory, "saved_model")
        try:
            loaded = tf.saved_model.load(saved_model)
            serve = loaded.signatures[SIGNATURE]
            weights = weights_digest(loaded.variables) if version >= 2 else None
        except Exception as error:  # a truncated or foreign file: protobuf, IndexError, tf.errors all end here
            first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            raise ValueError(f"{saved_model}: the SavedModel cannot be loaded ({type(error).__name__}: {first}); the "
                             "bundle is damaged: export it again") from None
        _check_manifest(manifest_path, manifest, index, threshold, serve, weights)
        return cls(directory, manifest, serve, index, threshold)

    def embed(self, images, batch_size=64, verbose=False):
        """(embeddings `[N, E]` float32, names `[N]`) of `images` (see the class docstring)."""
        names, items = _image_items(images)
        embeddings, _ = embed(lambda batch: self._serve(**{INPUT: tf.constant(batch)})[OUTPUT],
                              _batches(items, names, batch_size), verbose)
        return embeddings, names

    def search(self, images, k=10, verbose=False):
        """(SearchResult of `[Q, k]` arrays, query names): the k nearest references of each image."""
        embeddings, names = self.embed(images, verbose=verbose)
        return self.index.search(embeddings, k), names

    def search_embeddings(self, embeddings, k=10):
        """SearchResult of the k nearest references of `embeddings: [Q, E]` (from this bundle's model)."""
        return self.index.search(embeddings, k)

    def verify(self, images_a, images_b, threshold="at_target"):
        """Same class or not, pair by pair: (same `[N]` bool, distances `[N]` float32).

        Args:
            images_a, images_b: N images each (see the class docstring); pair i is (a_i, b_i).
            threshold: "at_target" (the target precision's) or "best_f1", from threshold.json, or a number.
        """
        if isinstance(threshold, str):
            if threshold not in THRESHOLDS:
                raise ValueError(f"threshold={threshold!r}: expected one of {THRESHOLDS} or a number")
            if not self.threshold.get("available"):
                raise ValueError(f"{self.directory} has no calibrated threshold: {self.threshold.get('reason')}; "
                                 "pass threshold=<a distance>")
            value = self.threshold[threshold]["threshold"]
            if value is None:
                raise ValueError(f"the {threshold} threshold of {self.directory} is unavailable: "
                                 f"{self.threshold[threshold].get('reason')}")
            threshold = value
        a, _ = self.embed(images_a)
        b, _ = self.embed(images_b)
        if len(a) != len(b):
            raise ValueError(f"verify: {len(a)} images_a but {len(b)} images_b; expected pairs")
        distances = pair_distances(a, b)
        return verify(distances, threshold), distances


def _image_items(images):
    """(names, items): an item is a file path or a uint8 `[H, W, C]` array."""
    if isinstance(images, (str, os.PathLike)) and os.path.isdir(images):
        names = find_images(os.fspath(images))
        return names, [os.path.join(os.fspath(images), name) for name in names]
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not len(images):
        raise ValueError("images: expected at least one image")
    names, items = [], []
    files = [os.fspath(image) for image in images if isinstance(image, (str, os.PathLike))]
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file {path} does not exist")
    report = []
    usable = dict(zip(files, check_images(files, "the image files given", report), strict=True)) if files else {}
    if files and not any(usable.values()):
        reasons = "; ".join(f"{entry.item}: {entry.detail}" for entry in report[:3])
        raise ValueError(f"no usable image among the image files given ({reasons}); expected image files "
                         f"({', '.join(IMAGE_EXTENSIONS)})")
    for i, image in enumerate(images):
        if isinstance(image, (str, os.PathLike)):
            if usable[os.fspath(image)]:  # the others are logged by check_images and left out, as in a folder
                names.append(os.fspath(image))
                items.append(os.fspath(image))
            continue
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3) or 0 in image.shape:
            raise ValueError(f"images[{i}]: expected a uint8 image [H, W, C] with 1 or 3 channels, got dtype "
                             f"{image.dtype} and shape {image.shape}")
        names.append(str(i))
        items.append(image)
    return names, items


def _batches(items, names, batch_size):
    """(uint8 `[B, H, W, C]`, names `[B]`) batches of consecutive items of one shape (files decoded as evaluation
    does)."""
    batch, batch_names = [], []
    for item, name in zip(items, names, strict=True):
        image = decode_image_file(item).numpy() if isinstance(item, str) else item
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield np.stack(batch), np.array(batch_names)
            batch, batch_names = [], []
        batch.append(image)
        batch_names.append(name)
    if batch:
        yield np.stack(batch), np.array(batch_names)


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return value


def _check_manifest(path, manifest, index, threshold, serve, weights):
    """Check manifest.json (at `path`) against the loaded index, threshold.json, the signature `serve` and the
    SavedModel's `weights` digest (None for a version 1 bundle, which has no fingerprint)."""
    def refuse(field, found, expected, where):
        raise ValueError(f"{path}: {field} is {found!r} but {where} has {expected!r}: the bundle's parts do not "
                         "belong together (copied from different exports?); export the run again")

    if weights is None:
        logger.warning("%s: a bundle of format version 1 has no fingerprint, so its index is not checked against "
                       "its SavedModel; export it again", path)
    else:
        fingerprint = manifest.get("fingerprint") if isinstance(manifest.get("fingerprint"), dict) else {}
        if fingerprint.get("weights_sha256") != weights:
            refuse("fingerprint.weights_sha256", fingerprint.get("weights_sha256"), weights,
                   "the SavedModel's weights (saved_model/)")
        if fingerprint.get("bundle") != index.fingerprint:
            refuse("fingerprint.bundle", fingerprint.get("bundle"), index.fingerprint, "index/index.json")
        expected = bundle_fingerprint(weights, manifest)
        if fingerprint.get("bundle") != expected:  # the run or checkpoint edited since the export
            refuse("fingerprint.bundle", fingerprint.get("bundle"), expected,
                   "the hash of the weights with the run and checkpoint of manifest.json")
    described = manifest.get("index") if isinstance(manifest.get("index"), dict) else {}
    checks = [("embedding_dimension", manifest.get("embedding_dimension"), index.dimension, "index/"),
              ("metric", manifest.get("metric"), index.metric, "index/index.json"),
              ("index.kind", described.get("kind"), index.kind, "index/index.json"),
              ("index.params", described.get("params"), index.params, "index/index.json"),
              ("index.count", described.get("count"), len(index), "index/"),
              ("index.has_paths", described.get("has_paths"), bool(len(index.paths)), "index/paths.txt"),
              ("files", manifest.get("files"), list(BUNDLE_FILES), "this format")]
    output = serve.structured_outputs.get(OUTPUT) if isinstance(serve.structured_outputs, dict) else None
    if output is None:
        refuse("input.output", OUTPUT, sorted(serve.structured_outputs), "the SavedModel's signature")
    if output.shape.rank == 2 and output.shape[-1] is not None:
        checks.append(("embedding_dimension", manifest.get("embedding_dimension"), int(output.shape[-1]),
                       "the SavedModel's signature"))
    expected_threshold = ({name: (threshold.get(name) or {}).get("threshold") for name in THRESHOLDS}
                          if threshold.get("available") else None)
    checks.append(("threshold", manifest.get("threshold"), expected_threshold, "threshold.json"))
    for field, found, expected, where in checks:
        if found != expected:
            refuse(field, found, expected, where)
    reading = manifest.get("input") if isinstance(manifest.get("input"), dict) else {}
    for field, expected in (("signature", SIGNATURE), ("name", INPUT), ("dtype", "uint8"), ("output", OUTPUT),
                            ("channels_accepted", [1, 3])):
        if reading.get(field) != expected:
            refuse(f"input.{field}", reading.get(field), expected, "this format")
    params = manifest.get("params") if isinstance(manifest.get("params"), dict) else {}
    given = {"channels": params.get("channels"), "image_size": params.get("image_size")}
    if isinstance(given["image_size"], (int, list)) and not isinstance(given["image_size"], bool):
        given["image_size"] = [given["image_size"]] * 2 if isinstance(given["image_size"], int) else given["image_size"]
    for field, value in given.items():
        if value is not None and value != reading.get(field):
            refuse(f"input.{field}", reading.get(field), value, "params")
    size = reading.get("image_size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise ValueError(f"{path}: input.image_size is {size!r}; expected [height, width], positive integers")
    if reading.get("channels") not in (1, 3):
        raise ValueError(f"{path}: input.channels is {reading.get('channels')!r}; expected 1 or 3")
