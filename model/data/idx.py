"""In-memory datasets: MNIST and Fashion-MNIST from IDX files, and scikit-learn's bundled digits.

IDX is the file format of MNIST (http://yann.lecun.com/exdb/mnist/): a big-endian header
`0x00 0x00 <dtype code> <ndim>`, then `ndim` uint32 sizes, then the values in C order; the files
are often gzip-compressed. MNIST and Fashion-MNIST are looked for, in this order, in:
  1. `data_dir`, holding `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
     `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` (each raw or `.gz`);
  2. for Fashion-MNIST, the Debian package's folder (`apt-get install dataset-fashion-mnist`);
  3. Keras's own download (`keras.datasets`), cached under ~/.keras/datasets (needs internet once).
"""
import gzip
import logging
import os

import keras
import numpy as np
import sklearn.datasets

from model.data.datasets import Loaded, register_dataset
from model.data.splits import Split

# Where `apt-get install dataset-fashion-mnist` puts the IDX files.
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}
CLASS_NAMES = {
    "mnist": [str(digit) for digit in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"],
}
_KERAS_LOADERS = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}
# The digits have no official split: the last 360 examples (20%) are the test split, the same in
# every run so that results compare across runs and seeds.
DIGITS_TEST_SIZE = 360

logger = logging.getLogger(__name__)


def read_idx(path):
    """Read one IDX file (raw or gzip-compressed) into a numpy array of its stored shape and dtype."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file: its header {data[:4].hex()} should be "
                         f"0000<dtype><ndim> with dtype one of {sorted(hex(code) for code in _IDX_DTYPES)}")
    ndim = data[3]
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"IDX file {path} has {len(data)} bytes, its header (shape {shape}, {dtype}) "
                         f"says {expected}")
    values = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return values.astype(dtype.newbyteorder("="))  # native byte order, and a writable copy


def _find_idx_files(folder):
    """{key: path} of the four MNIST IDX files in `folder` (raw or .gz), or None if one is missing."""
    found = {}
    for key, name in _IDX_FILES.items():
        candidates = [os.path.join(folder, name + suffix) for suffix in ("", ".gz")]
        existing = [path for path in candidates if os.path.isfile(path)]
        if not existing:
            return None
        found[key] = existing[0]
    return found


def _read_idx_folder(files):
    """The four IDX files -> ((train images, labels), (test images, labels)) as numpy arrays."""
    arrays = {key: read_idx(path) for key, path in files.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{files[f'{part}_images']} and {files[f'{part}_labels']} should hold uint8 "
                             f"[N, H, W] images and [N] labels, got {images.dtype} {images.shape} and "
                             f"{labels.shape}")
    return (arrays["train_images"], arrays["train_labels"]), (arrays["test_images"], arrays["test_labels"])


def _missing_data_error(name, folders, keras_error):
    """The one error raised when no source of MNIST / Fashion-MNIST works, naming all three ways."""
    looked = "\n".join(f"  - {folder}" for folder in folders) or "  - (no data_dir given)"
    debian = ("  2. sudo apt-get install dataset-fashion-mnist (installs them into "
              f"{DEBIAN_FASHION_MNIST_DIR}/);\n" if name == "fashion_mnist" else
              "  2. (Fashion-MNIST only: sudo apt-get install dataset-fashion-mnist);\n")
    return FileNotFoundError(
        f"cannot find the {name} data. Looked for the IDX files {sorted(_IDX_FILES.values())} (raw or .gz) "
        f"in:\n"
        f"{looked}\nand the keras.datasets download failed: {keras_error}\n"
        f"Provide the data in one of three ways:\n"
        f"  1. set data_dir to a folder holding the four IDX files;\n{debian}"
        f"  3. run once with internet access, so that keras.datasets.{name}.load_data() downloads and "
        "caches it.")


def load_mnist(name, data_dir=None):
    """Load MNIST or Fashion-MNIST as in-memory train and test splits.

    Args:
        name: "mnist" or "fashion_mnist".
        data_dir: folder with the IDX files, or None.

    Returns:
        (train, test): Splits with images uint8 [N, 28, 28, 1] and labels int32 [N].
    """
    folders = [data_dir] if data_dir else []
    if name == "fashion_mnist":
        folders.append(DEBIAN_FASHION_MNIST_DIR)
    arrays = None
    for folder in folders:
        files = _find_idx_files(folder)
        if files is not None:
            arrays = _read_idx_folder(files)
            break
        if folder == data_dir:
            logger.warning("data_dir %s does not hold the %s IDX files %s; trying the other sources", data_dir, name,
                           sorted(_IDX_FILES.values()))
    if arrays is None:
        try:
            arrays = _KERAS_LOADERS[name].load_data()
        except Exception as error:  # keras raises a bare Exception when the download fails
            raise _missing_data_error(name, folders, error) from error
    (train_images, train_labels), (test_images, test_labels) = arrays
    return (Split(labels=train_labels, images=train_images[..., None]),
            Split(labels=test_labels, images=test_images[..., None]))


def load_digits():
    """scikit-learn's 8x8 handwritten digits (1797 images, bundled, no download).

    The 17 grey levels 0..16 are scaled to 0..255 (round(v * 255 / 16)) so that every dataset
    shares the [0, 255] range.

    Returns:
        (train, test): Splits with images uint8 [N, 8, 8, 1]; test = the last DIGITS_TEST_SIZE images.
    """
    digits = sklearn.datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    split = Split(labels=digits.target, images=images)
    n_train = len(split) - DIGITS_TEST_SIZE
    return split.take(np.arange(n_train)), split.take(np.arange(n_train, len(split)))


def _in_memory(train, test, class_names):
    return Loaded({"train": train, "test": test}, class_names, 1, train.images.shape[1:3])


@register_dataset("mnist", needs_data_dir=False)
def mnist(data_dir=None, class_names=None, report=None):
    """MNIST (IDX files in data_dir, else keras.datasets)."""
    return _in_memory(*load_mnist("mnist", data_dir), CLASS_NAMES["mnist"])


@register_dataset("fashion_mnist", needs_data_dir=False)
def fashion_mnist(data_dir=None, class_names=None, report=None):
    """Fashion-MNIST (IDX files in data_dir, else Debian's dataset-fashion-mnist, else keras.datasets)."""
    return _in_memory(*load_mnist("fashion_mnist", data_dir), CLASS_NAMES["fashion_mnist"])


@register_dataset("digits", needs_data_dir=False)
def digits(data_dir=None, class_names=None, report=None):
    """scikit-learn's 8x8 digits (bundled: no files, no download)."""
    return _in_memory(*load_digits(), [str(digit) for digit in range(10)])
