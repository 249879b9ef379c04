"""The one set of checks of array inputs (embeddings, labels, counts), with errors that name the argument."""
import numpy as np

NPY_MAGIC = b"\x93NUMPY"

METRICS = ("euclidean", "cosine")


def positive_int(value, name):
    """`value` as an int if it is a positive integer (not true/false), else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def positive_ints(values, name):
    """A tuple of positive integers from one or several (ValueError naming `name` otherwise)."""
    values = tuple(values) if np.iterable(values) else (values,)
    if not values:
        raise ValueError(f"{name}: expected at least one positive integer")
    return tuple(positive_int(value, name) for value in values)


def prepare_embeddings(embeddings, name, metric):
    """`[N, D]` float32 C-contiguous finite embeddings, L2-normalised for the cosine metric (`metric` one of
    METRICS: "euclidean" or "cosine")."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {METRICS}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or 0 in embeddings.shape:
        raise ValueError(f"{name}: expected non-empty embeddings [N, D], got shape {embeddings.shape}")
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if len(bad):
        raise ValueError(f"{name}: {len(bad)} rows contain NaN or inf (first: row {bad[0]}); "
                         "did the training diverge?")
    if metric == "cosine":
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)  # [N, 1]
        zero = np.flatnonzero(norms[:, 0] == 0)
        if len(zero):
            raise ValueError(f"{name}: the cosine distance is undefined for the zero vectors at rows "
                             f"{zero[:10].tolist()}{'...' if len(zero) > 10 else ''}")
        embeddings = embeddings / norms
    return np.ascontiguousarray(embeddings)


def check_labels(labels, num, name):
    """Labels as a `[num]` numpy array, matching the embeddings."""
    labels = np.asarray(labels)
    if labels.shape != (num,):
        raise ValueError(f"{name}: expected shape ({num},) to match the embeddings, got {labels.shape}")
    return labels


def same_dimension(a, b, name_a, name_b):
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} has dimension {a.shape[1]} but {name_b} has {b.shape[1]}")


def check_utm(utm, num, name):
    """UTM coordinates as a finite `[num, 2]` float64 array."""
    utm = np.asarray(utm, dtype=np.float64)
    if utm.shape != (num, 2) or not np.isfinite(utm).all():
        raise ValueError(f"{name}: expected finite (easting, northing) coordinates of shape ({num}, 2), "
                         f"got shape {utm.shape}")
    return utm



def load_array(path, what="array"):
    """The array of the .npy file `path` (no pickles); a file that is not one, or is truncated or damaged, is a
    ValueError naming it (`what` says what it should hold, e.g. "query embeddings [Q, E]")."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(NPY_MAGIC))
    except OSError as error:
        raise FileNotFoundError(f"{path}: cannot be read ({error.strerror or error}); expected a .npy file of "
                                f"{what}") from None
    if magic != NPY_MAGIC:
        raise ValueError(f"{path} is not a NumPy .npy file (it does not start with the .npy signature); expected "
                         f"a .npy file of {what} (numpy.save)")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        if "allow_pickle" in str(error):
            raise ValueError(f"{path} holds Python objects, not numbers; expected a .npy file of {what}") from None
        raise ValueError(f"{path} is truncated or damaged ({error}); expected a .npy file of {what}") from None
