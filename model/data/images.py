"""Image files: which files are images, decoding with TensorFlow, and the check that leaves out bad files.

`IMAGE_EXTENSIONS` is the one list of image file extensions: every finder of image files (the class
folders loader, `find_images` for the query and database folders of retrieval) takes the files
with these extensions (any case) and reports the others. `decode_image_file` is the one decoder of the toolkit: JPEG,
PNG, BMP, GIF (first frame) and WebP, any of grayscale, gray+alpha, palette, RGB or RGBA, all
become uint8 RGB [h, w, 3] (alpha is dropped, as PIL's `convert("RGB")` does).

`check_images` runs over every file of a dataset when it is loaded, so that a file that passes
can never fail mid-epoch: first the image size is read from each file's header (PIL reads the
header only) and images of more than MAX_PIXELS pixels are left out before anything decodes
them; then the same decoder as training runs over the others, and the files that fail
(corrupt, truncated, not an image, or a format TensorFlow cannot read such as TIFF or 1-bit BMP)
are left out. Both are logged and recorded in the data report with their paths.
"""
import logging
import os
import re
import warnings

import numpy as np
import PIL.Image
import tensorflow as tf

from model.data.report import ReportEntry, record
from model.progress import progress_bar

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# The pixel limit: an image is decoded to uint8, converted to float32 and resized, about 30 bytes
# per pixel in flight (a 12,000 × 12,000 PNG lifted a training run's peak memory from 1.0 to
# 5.4 GB), times the images decoded in parallel. 8192 × 8192 (67 megapixels) takes every camera
# photograph up to 61 megapixels and bounds one image at about 2 GB.
MAX_PIXELS = 8192 * 8192
# Datasets at least this large show a progress bar while their files are checked.
_PROGRESS_MIN_FILES = 2000
_CHECK_BATCH = 512

logger = logging.getLogger(__name__)


def is_image_file(name):
    """Whether the file name `name` has one of IMAGE_EXTENSIONS (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def decode_image_file(path):
    """Read and decode one image file.

    Args:
        path: scalar tf.string (or str), the file path.

    Returns:
        image: uint8 [h, w, 3] RGB tensor.
    """
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _decode_error(path):
    """Why `decode_image_file(path)` fails, as a short message (the TensorFlow error, cleaned)."""
    try:
        decode_image_file(path)
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error))
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
        return message.split(" [Op:")[0].strip()
    return "decoded on a second try"


def _oversized(path):
    """Why the image at `path` is over MAX_PIXELS, from its header; None if it is not (or PIL cannot tell)."""
    try:
        with warnings.catch_warnings():  # PIL warns above its own limit: the check below decides
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(path) as image:
                width, height = image.size
    except PIL.Image.DecompressionBombError as error:  # over twice PIL's limit: PIL refuses to open it
        return f"more than {MAX_PIXELS} pixels ({error})"
    except Exception:  # not an image PIL knows, or unreadable: the decoder check reports it
        return None
    if width * height > MAX_PIXELS:
        return f"{width} × {height} = {width * height} pixels, more than the limit of {MAX_PIXELS}"
    return None


def check_images(paths, where, report=None, splits=""):
    """Check every file in `paths` once: size from the header, then a full decode, in parallel.

    Args:
        paths: list of N file paths.
        where: the dataset location, named in the log messages.
        report: a list that gets a ReportEntry for each file left out ("too large" or
            "undecodable"), or None.
        splits: the split of each file: one name for all, or a list of N names.

    Returns:
        ok: bool [N], True where the file has at most MAX_PIXELS pixels and decodes.
    """
    ok = np.zeros(len(paths), dtype=bool)
    if not paths:
        return ok
    split_of = [splits] * len(paths) if isinstance(splits, str) else list(splits)
    too_large = [(i, reason) for i, reason in enumerate(map(_oversized, paths)) if reason]
    record(report, [ReportEntry(paths[i], split_of[i], "too large", reason) for i, reason in too_large],
           f"{len(too_large)} of {len(paths)} files in {where} have more than {MAX_PIXELS} pixels "
           "(model.data.images.MAX_PIXELS) and are left out", logger)
    candidates = np.setdiff1d(np.arange(len(paths)), [i for i, _ in too_large])  # [M] indices into paths
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(candidates, dtype=tf.int64), tf.constant([paths[i] for i in candidates], dtype=tf.string)))
    # ignore_errors drops the elements whose decoding raised; the survivors' indices come back.
    dataset = dataset.map(lambda index, path: (index, tf.shape(decode_image_file(path))),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    dataset = dataset.ignore_errors().batch(_CHECK_BATCH)
    progress = progress_bar(len(candidates), "file", len(candidates) >= _PROGRESS_MIN_FILES)
    for indices, _ in dataset.as_numpy_iterator():
        ok[indices] = True
        progress.add(len(indices))
    progress.update(len(candidates), finalize=True)
    bad = [i for i in candidates if not ok[i]]
    record(report, [ReportEntry(paths[i], split_of[i], "undecodable", _decode_error(paths[i])) for i in bad],
           f"{len(bad)} of {len(paths)} files in {where} cannot be decoded as images and are left out", logger)
    return ok


def find_images(folder, report=None, split=""):
    """Image files under `folder`, recursively: sorted paths relative to `folder` ("/"-separated).

    Files without one of IMAGE_EXTENSIONS, folders that cannot be listed, and image files that
    `check_images` refuses are logged, recorded in `report` (as belonging to `split`) and left
    out. Symbolic links to folders are not followed, so a link loop cannot recurse.

    Raises:
        NotADirectoryError / FileNotFoundError: `folder` is a file / does not exist or holds no usable image.
    """
    if os.path.isfile(folder):
        raise NotADirectoryError(f"{folder} is a file; expected a folder of images")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder} does not exist")
    found, left_out = [], []

    def unreadable(error):
        left_out.append(ReportEntry(error.filename, split, "unreadable", f"folder cannot be listed: {error.strerror}"))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs.sort()
        for name in files:
            path = os.path.join(root, name)
            if is_image_file(name):
                found.append(os.path.relpath(path, folder).replace(os.sep, "/"))
            else:
                left_out.append(ReportEntry(path, split, "not an image file",
                                            f"extension not one of {', '.join(IMAGE_EXTENSIONS)}"))
    record(report, sorted(left_out, key=lambda entry: entry.item),
           f"{len(left_out)} entries under {folder} are not image files and are left out", logger)
    found.sort()
    decodable = check_images([os.path.join(folder, path) for path in found], folder, report, split)
    found = [path for path, ok in zip(found, decodable, strict=True) if ok]
    if not found:
        raise FileNotFoundError(f"no usable image ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return found
