"""Image files: decoding with TensorFlow, and the check that leaves out undecodable files.

`decode_image_file` is the one decoder of the toolkit: JPEG, PNG, BMP, GIF (first frame) and WebP,
any of grayscale, gray+alpha, palette, RGB or RGBA, all become uint8 RGB [h, w, 3] (alpha is
dropped, as PIL's `convert("RGB")` does). `check_images` runs that same decoder over every file
of a dataset when it is loaded, so a file that passes can never fail to decode mid-epoch; the
files that fail (corrupt, truncated, not an image, or a format TensorFlow cannot read such as
TIFF or 1-bit BMP) are reported in one warning with their paths and left out.
"""
import re
import warnings

import keras
import numpy as np
import tensorflow as tf

# Datasets at least this large show a progress bar while their files are checked.
_PROGRESS_MIN_FILES = 2000
_CHECK_BATCH = 512


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


def check_images(paths, where):
    """Decode every file in `paths` once, in parallel; warn once about those that fail.

    Args:
        paths: list of N file paths.
        where: the dataset location, named in the warning.

    Returns:
        ok: bool [N], True where the file decodes.
    """
    ok = np.zeros(len(paths), dtype=bool)
    if not paths:
        return ok
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(paths, dtype=tf.string)).enumerate()
    # ignore_errors drops the elements whose decoding raised; the survivors' indices come back.
    dataset = dataset.map(lambda index, path: (index, tf.shape(decode_image_file(path))),
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    dataset = dataset.ignore_errors().batch(_CHECK_BATCH)
    progress = keras.utils.Progbar(len(paths), verbose=int(len(paths) >= _PROGRESS_MIN_FILES),
                                   unit_name="file")
    for indices, _ in dataset.as_numpy_iterator():
        ok[indices] = True
        progress.add(len(indices))
    progress.update(len(paths), finalize=True)
    bad = np.flatnonzero(~ok)
    if len(bad):
        lines = "\n".join(f"  {paths[i]}: {_decode_error(paths[i])}" for i in bad)
        warnings.warn(f"{len(bad)} of {len(paths)} files in {where} cannot be decoded as images and are left "
                      f"out:\n{lines}", stacklevel=2)
    return ok
