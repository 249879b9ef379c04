"""Drop-in replacements for the metric-learning losses of `tensorflow_addons.losses` (TFA), for Keras 3.

TensorFlow Addons no longer imports from TensorFlow 2.16 on. Code written against it moves with one line:

    import tensorflow_addons as tfa                      ->  from model import tfa_losses as tfa
    tfa.losses.TripletSemiHardLoss()                          (unchanged: `tfa_losses.losses` is the module itself)

    from tensorflow_addons.losses import TripletSemiHardLoss  ->  from model.tfa_losses import TripletSemiHardLoss

    name                     function                  TFA semantics kept
    TripletSemiHardLoss      triplet_semihard_loss     margin=1.0, distance_metric "L2" (default), "squared-L2",
                                                       "angular" or a callable [B, D] -> [B, B]
    TripletHardLoss          triplet_hard_loss         margin=1.0, soft=False, distance_metric as above
    LiftedStructLoss         lifted_struct_loss        margin=1.0
    ContrastiveLoss          contrastive_loss          pair labels [B] and pair distances [B] in, one loss per pair
    NpairsLoss               npairs_loss               labels [B] and a similarity matrix [B, B] in
    NpairsMultilabelLoss     npairs_multilabel_loss    binary indicators [B, C] (dense or tf.SparseTensor) and [B, B]
    -                        pairwise_distance         feature [N, D] -> euclidean distances [N, N]
    -                        angular_distance          feature [N, D] -> 1 - cosine similarity [N, N]

Names, argument names and order, defaults and values are TFA's (each docstring says which TFA function its
value equals), and every class and function TFA registered is registered under TFA's Keras name
("Addons>TripletSemiHardLoss", "Addons>triplet_semihard_loss", ...): `model.compile(loss="Addons>...")` and
`keras.losses.deserialize({"class_name": "Addons>TripletSemiHardLoss", "config": {...}})` (a config saved by
TFA) give these. The classes are `keras.losses.Loss` subclasses with Keras 3's `reduction` and `name`
(TFA's default reduction kept: "none" for the losses that are one scalar per batch, "sum_over_batch_size"
for the per-pair contrastive loss; Keras 2's "auto" is read as "sum_over_batch_size").

Precision. As in TFA, float16 and bfloat16 inputs are computed in float32 and the loss is returned in the
dtype of `y_pred` (the same rule for every float dtype). Under Keras 3 a loss class casts its inputs to
float32 before `call`; here integer class labels are first replaced by their rank among the batch's labels,
so that labels are compared exactly whatever their size (as TFA compared them), not as float32.

Where TFA's result is NaN only because it divides 0 by 0 or multiplies -inf by 0, these give 0: a batch
without any positive pair (every label distinct) for the semi-hard and lifted losses, a batch of a single
class for the lifted loss, a sample without any label for the multilabel N-pairs loss; and the soft margin
log(1 + e^x) is computed stably where TFA's log1p(exp(x)) overflows to inf (x > 88). Every other value is
TFA's up to float32 rounding (TFA's test suite passes against this module); only where distances tie exactly
can that rounding make the semi-hard selection pick another negative than TFA.

Unlike TFA, wrong arguments raise errors that name the argument: an unknown `distance_metric`, a negative
margin, labels or embeddings of the wrong rank or size, a similarity matrix that is not square.

The toolkit's own losses (`model.losses`) are the place to move to once the code runs: they mine the same
triplets in O(B·R) memory, take references (a cross-batch memory) and log their statistics; see
docs/guides/migrating-from-tensorflow-addons.md for what differs (margins, reductions, pair forms).
"""

import math
import sys

import keras
from keras import ops

from model.losses.distances import pairwise_distances
from model.losses.inputs import nan_unless_finite, static_shape
from model.losses.masks import anchor_negative_mask, anchor_positive_mask, same_label_mask
from model.losses.pair import lifted_struct_loss as _native_lifted_struct_loss
from model.losses.reductions import masked_maximum, masked_minimum, reduce_terms
from model.losses.triplet import semihard_negative_distances
from model.ops import l2_normalize

# The Keras serialization package of TFA: its classes and functions are "Addons>ClassName", "Addons>function".
PACKAGE = "Addons"
# The distance metrics named by a string; a callable `embeddings [B, D] -> distances [B, B]` is also accepted.
DISTANCE_METRICS = ("L2", "squared-L2", "angular")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# Keras 2's Reduction.AUTO, found in configs saved with TFA: what it meant in model.fit.
_KERAS2_REDUCTIONS = {"auto": "sum_over_batch_size"}


# ---------------------------------------------------------------------------------------------- arguments


def _check_margin(margin, name="margin"):
    """`margin` as a float if it is a finite number >= 0 (a Python or numpy number, or a concrete 0-d tensor);
    a symbolic tensor passes unchecked; anything else raises ValueError naming the argument."""
    if isinstance(margin, (bool, str)):
        raise ValueError(f"{name} must be a finite number >= 0, got {margin!r}")
    try:
        value = float(margin)
    except (TypeError, ValueError):
        if ops.is_tensor(margin) and static_shape(margin) in ((), None):
            return margin  # a traced scalar: its value is only known when the graph runs
        raise ValueError(f"{name} must be a finite number >= 0, got {margin!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {margin!r}")
    return value


def _check_distance_metric(distance_metric):
    """`distance_metric` if it is one of DISTANCE_METRICS or a callable, else ValueError naming the value."""
    if callable(distance_metric) or (isinstance(distance_metric, str) and distance_metric in DISTANCE_METRICS):
        return distance_metric
    raise ValueError(
        f'distance_metric must be "L2", "squared-L2", "angular" or a callable that takes embeddings [B, D] and '
        f"returns their distance matrix [B, B], got {distance_metric!r}"
    )


def _float_dtype(x, default="float32"):
    """The dtype Keras names for tensor or array `x` when it is a float dtype, else `default`."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return default
    name = keras.backend.standardize_dtype(dtype)
    return name if name in _FLOAT_DTYPES else default


def _matrix(name, x, what):
    """`x` as a tensor; ValueError naming `name` unless it is a 2-D matrix (or of unknown rank)."""
    x = ops.convert_to_tensor(x)
    shape = static_shape(x)
    if shape is not None and len(shape) != 2:
        raise ValueError(f"{name} must be {what}, got shape {shape}")
    return x


def _class_labels(name, labels, rows, rows_name):
    """Labels [B] or [B, 1] -> [B]; ValueError naming `name` for another rank or a size other than `rows`."""
    labels = ops.convert_to_tensor(labels)
    shape = static_shape(labels)
    if shape is not None:
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ValueError(f"{name} must be [B] or [B, 1], one integer class label per example, got shape {shape}")
        if shape[0] is not None and rows is not None and shape[0] != rows:
            raise ValueError(f"{name} has {shape[0]} labels but {rows_name} has {rows} rows: one label per row")
    return ops.reshape(labels, (-1,))


def _labels_and_embeddings(y_true, y_pred, names=("y_true", "y_pred")):
    """Checked (labels [B], embeddings [B, D] float32, the dtype of the result: y_pred's)."""
    embeddings = _matrix(names[1], y_pred, "a [B, D] matrix of embeddings (one row per example)")
    rows = (static_shape(embeddings) or (None,))[0]
    if rows == 0:
        raise ValueError(f"{names[1]} is an empty batch (shape {static_shape(embeddings)}): at least one row is needed")
    labels = _class_labels(names[0], y_true, rows, names[1])
    return labels, ops.cast(embeddings, "float32"), _float_dtype(embeddings)


# ---------------------------------------------------------------------------------------------- distances


def _angular(embeddings):
    """1 - cos(e_i, e_j) of float32 embeddings [B, D] -> [B, B], clipped at 0 (no zeroing of the diagonal)."""
    normalized = l2_normalize(embeddings, axis=1)
    return ops.maximum(1.0 - ops.matmul(normalized, ops.transpose(normalized)), 0.0)


def pairwise_distance(feature, squared=False):
    """The euclidean distance matrix of the rows of `feature`; equals TFA's `metric_learning.pairwise_distance`.

    D[i, j] = ||f_i - f_j||, from ||f_i||² - 2 f_i·f_j + ||f_j||² clipped at 0 against rounding, with an exactly
    zero diagonal; zero distances go through sqrt(0 + 1e-16) and back to 0, so their gradient is 0, not NaN.
    This is `model.losses.distances.pairwise_distances`, computed in float32 and returned in the dtype of
    `feature` (TFA worked in float32 only).

    Args:
        feature: [N, D] float tensor.
        squared: if True, the squared distances ||f_i - f_j||².

    Returns:
        [N, N] distances, symmetric, zero diagonal, dtype of `feature`.
    """
    feature = _matrix("feature", feature, "a [N, D] matrix (one row per example)")
    distances = pairwise_distances(ops.cast(feature, "float32"), squared=bool(squared))
    return ops.cast(distances, _float_dtype(feature))


def angular_distance(feature):
    """The angular distance matrix; equals TFA's `metric_learning.angular_distance`.

    A[i, j] = max(1 - f_i·f_j / (||f_i|| ||f_j||), 0), the rows L2-normalised as `tf.math.l2_normalize` does
    (x / sqrt(max(Σx², 1e-12)), so a zero row has distance 1 to every row, itself included). As in TFA the
    diagonal is not set to 0: it is 1 - ||n_i||², 0 up to rounding.

    Args:
        feature: [N, D] float tensor.

    Returns:
        [N, N] distances in [0, 2], dtype of `feature` (computed in float32).
    """
    feature = _matrix("feature", feature, "a [N, D] matrix (one row per example)")
    return ops.cast(_angular(ops.cast(feature, "float32")), _float_dtype(feature))


def _distance_matrix(embeddings, distance_metric):
    """Float32 embeddings [B, D] -> the [B, B] float32 matrix of `distance_metric` (see DISTANCE_METRICS)."""
    if distance_metric == "L2":
        return pairwise_distances(embeddings)
    if distance_metric == "squared-L2":
        return pairwise_distances(embeddings, squared=True)
    if distance_metric == "angular":
        return _angular(embeddings)
    distances = ops.convert_to_tensor(distance_metric(embeddings))
    shape, batch = static_shape(distances), static_shape(embeddings)[0]
    wrong_size = batch is not None and shape is not None and any(size not in (None, batch) for size in shape)
    if shape is not None and (len(shape) != 2 or wrong_size):
        raise ValueError(f"distance_metric must return the [B, B] = [{batch}, {batch}] distance matrix of the "
                         f"embeddings, got shape {shape}")
    return ops.cast(distances, "float32")


# ----------------------------------------------------------------------------------- TFA's masked reductions


def _row_max_or_min(values, mask):
    """Per row, the maximum of `values` where `mask` is True, or the row's minimum over all entries where it is
    False everywhere: TFA's `_masked_maximum`, (max over the mask of values - row min) + row min. [B, R] -> [B]."""
    return ops.where(ops.any(mask, axis=1), masked_maximum(values, mask), ops.min(values, axis=1))


def _row_min_or_max(values, mask):
    """Per row, the minimum where `mask` is True, or the row's maximum where it is empty: TFA's `_masked_minimum`."""
    return ops.where(ops.any(mask, axis=1), masked_minimum(values, mask), ops.max(values, axis=1))


# ------------------------------------------------------------------------------------------------ functions


def triplet_semihard_loss(y_true, y_pred, margin=1.0, distance_metric="L2"):
    """Triplet loss with semi-hard negative mining; equals TFA's `triplet_semihard_loss`.

    For every positive pair (a, p), a != p and y_a = y_p, the negative is the closest one farther than p,
        d(a, n*) = min {d(a, n) : y_n != y_a, d(a, n) > d(a, p)},
    or, when no negative is farther, the farthest negative max_n d(a, n); when a has no negative at all (a
    batch of one class), TFA's masked maximum over nothing, the minimum of the whole row d(a, ·) (d(a, a) = 0
    for "L2" and "squared-L2"). Then
        loss = Σ_{positive pairs} relu(d(a, p) - d(a, n*) + margin) / #{positive pairs},
    the mean over all ordered positive pairs; 0 when there is none (TFA: 0/0 = NaN). NaN when an embedding is
    NaN or infinite, as in TFA. The selection is the toolkit's (`model.losses.triplet.
    semihard_negative_distances`, one sort per anchor, O(B²) memory instead of TFA's O(B³)); the native
    `model.losses.batch_semihard_triplet_loss` gives the same value for "L2"/"squared-L2" except that it
    leaves out anchors without negatives, where TFA counts relu(d(a, p) + margin).
    Reference: Schroff, Kalenichenko and Philbin, "FaceNet: A Unified Embedding for Face Recognition and
    Clustering", CVPR 2015.

    Args:
        y_true: [B] or [B, 1] integer class labels.
        y_pred: [B, D] float embeddings (TFA advises L2-normalised ones); any float dtype, computed in float32.
        margin: float >= 0.
        distance_metric: "L2" (euclidean), "squared-L2", "angular" (1 - cosine similarity) or a callable
            `embeddings [B, D] float32 -> distances [B, B]`.

    Returns:
        Scalar loss in the dtype of `y_pred`.
    """
    margin, distance_metric = _check_margin(margin), _check_distance_metric(distance_metric)
    labels, embeddings, dtype = _labels_and_embeddings(y_true, y_pred)
    distances = _distance_matrix(embeddings, distance_metric)  # [B, B]
    positive_mask = anchor_positive_mask(labels)  # [B, B]: same label, a != p
    negative_mask = anchor_negative_mask(labels)  # [B, B]
    chosen, has_negative = semihard_negative_distances(distances, negative_mask)  # [B, B], [B, 1]
    chosen = ops.where(has_negative, chosen, ops.min(distances, axis=1, keepdims=True))
    loss = reduce_terms(ops.relu(distances - chosen + margin), positive_mask, "all")
    return ops.cast(nan_unless_finite(loss, embeddings), dtype)


def triplet_hard_loss(y_true, y_pred, margin=1.0, soft=False, distance_metric="L2"):
    """Triplet loss with the hardest positive and the hardest negative of every anchor; equals TFA's
    `triplet_hard_loss`.

    For every anchor a of the batch,
        hp_a = max {d(a, p) : p != a, y_p = y_a}, or min_j d(a, j) over the whole row when a has no positive
               (d(a, a) = 0 for "L2"/"squared-L2": TFA's masked maximum over nothing),
        hn_a = min {d(a, n) : y_n != y_a},         or max_j d(a, j) when a has no negative,
        l_a  = relu(hp_a - hn_a + margin), or softplus(hp_a - hn_a) = log(1 + exp(hp_a - hn_a)) when `soft`
               (computed stably: TFA's log1p(exp(x)) is inf for x > 88),
    and loss = (1/B) Σ_a l_a, the mean over all B anchors, those without a positive or a negative included.
    This is where it differs from the native `model.losses.batch_hard_triplet_loss`, which averages over the
    anchors that have both. NaN when an embedding is NaN or infinite, as in TFA.
    Reference: Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person Re-Identification", 2017.

    Args:
        y_true: [B] or [B, 1] integer class labels.
        y_pred: [B, D] float embeddings; any float dtype, computed in float32.
        margin: float >= 0 (not used when `soft`).
        soft: if True, the soft margin softplus(hp - hn).
        distance_metric: "L2", "squared-L2", "angular" or a callable, as in `triplet_semihard_loss`.

    Returns:
        Scalar loss in the dtype of `y_pred`.
    """
    margin, distance_metric = _check_margin(margin), _check_distance_metric(distance_metric)
    labels, embeddings, dtype = _labels_and_embeddings(y_true, y_pred)
    distances = _distance_matrix(embeddings, distance_metric)  # [B, B]
    hardest_positive = _row_max_or_min(distances, anchor_positive_mask(labels))  # [B]
    hardest_negative = _row_min_or_max(distances, anchor_negative_mask(labels))  # [B]
    difference = hardest_positive - hardest_negative
    terms = ops.softplus(difference) if soft else ops.relu(difference + margin)
    return ops.cast(nan_unless_finite(ops.mean(terms), embeddings), dtype)


def lifted_struct_loss(labels, embeddings, margin=1.0):
    """Lifted structured loss; equals TFA's `lifted_struct_loss`.

    For every positive pair (i, j), i != j and y_i = y_j, with euclidean distances D,
        J_ij = log( Σ_{k: y_k != y_i} exp(margin - D_ik) + Σ_{l: y_l != y_j} exp(margin - D_jl) ) + D_ij,
        loss = Σ_{i<j positive} relu(J_ij)² / (2 · #{i<j positive pairs}),
    each log-sum-exp with its maximum subtracted. This is the toolkit's own `model.losses.lifted_struct_loss`
    (reduction "all"), the same formula; it gives 0, not TFA's NaN, for a batch without positive pairs (0/0)
    and for a batch of one class (-inf·0 in TFA's masked sum). NaN when an embedding is NaN or infinite.
    Reference: Oh Song, Xiang, Jegelka and Savarese, "Deep Metric Learning via Lifted Structured Feature
    Embedding", CVPR 2016.

    Args:
        labels: [B] or [B, 1] class labels (integer, or float as TFA's tests pass them).
        embeddings: [B, D] float embeddings, not L2-normalised (TFA's advice); computed in float32.
        margin: float >= 0.

    Returns:
        Scalar loss in the dtype of `embeddings`.
    """
    margin = _check_margin(margin)
    labels, float_embeddings, dtype = _labels_and_embeddings(labels, embeddings, names=("labels", "embeddings"))
    return ops.cast(_native_lifted_struct_loss(labels, float_embeddings, margin), dtype)


def _pair_inputs(y_true, y_pred):
    """Pair labels and pair distances of the same shape (a trailing axis of 1 on either side is squeezed, as
    Keras's and TFA's loss wrappers do) -> (labels float32, distances float32, y_pred's dtype)."""
    y_pred, y_true = ops.convert_to_tensor(y_pred), ops.convert_to_tensor(y_true)
    dtype = _float_dtype(y_pred)
    pred_shape, true_shape = static_shape(y_pred), static_shape(y_true)
    if pred_shape is not None and true_shape is not None:
        if len(pred_shape) == len(true_shape) + 1 and pred_shape[-1] == 1:
            y_pred = ops.squeeze(y_pred, axis=-1)
        elif len(true_shape) == len(pred_shape) + 1 and true_shape[-1] == 1:
            y_true = ops.squeeze(y_true, axis=-1)
        pred_shape, true_shape = static_shape(y_pred), static_shape(y_true)
        if len(pred_shape) != len(true_shape) or any(
            a is not None and b is not None and a != b for a, b in zip(pred_shape, true_shape, strict=True)
        ):
            raise ValueError(f"y_true (one 0/1 label per pair) must have the shape of y_pred (one distance per pair), "
                             f"got y_true {true_shape} and y_pred {pred_shape}")
    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"), dtype


def contrastive_loss(y_true, y_pred, margin=1.0):
    """Contrastive loss of given pairs; equals TFA's `contrastive_loss`.

    Per pair i, with y_i = 1 for a positive pair (same class), 0 for a negative one, and d_i its distance:
        loss_i = y_i · d_i² + (1 - y_i) · relu(margin - d_i)².
    TFA's form, one value per pair, not a mean: the pairs and their distances are the caller's (e.g. a siamese
    network's two branches, d = ||a - b||), while the toolkit's own `model.losses.contrastive_loss` forms
    every pair of a batch of labelled embeddings itself and averages. Its Keras class averages (or sums) with
    Keras's reduction and sample weights.
    Reference: Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006.

    Args:
        y_true: [B] pair labels, 1 positive and 0 negative (any numeric dtype).
        y_pred: [B] float distances of the pairs ([B, 1] is squeezed); computed in float32.
        margin: float >= 0, the distance beyond which a negative pair costs nothing.

    Returns:
        [B] losses, one per pair, in the dtype of `y_pred`.
    """
    margin = _check_margin(margin)
    labels, distances, dtype = _pair_inputs(y_true, y_pred)
    loss = labels * ops.square(distances) + (1.0 - labels) * ops.square(ops.relu(margin - distances))
    return ops.cast(loss, dtype)


def _similarity_matrix(y_pred):
    """A checked square similarity matrix [B, B]: y_pred as a float32 tensor, and its dtype."""
    y_pred = _matrix("y_pred", y_pred, "a square [B, B] similarity matrix (anchor i against positive j)")
    shape = static_shape(y_pred)
    if shape is not None and None not in shape and shape[0] != shape[1]:
        raise ValueError(f"y_pred must be a square [B, B] similarity matrix (anchor i against positive j), got "
                         f"shape {shape}")
    return ops.cast(y_pred, "float32"), _float_dtype(y_pred)


def _soft_target_cross_entropy(targets, logits):
    """mean_i -Σ_j targets_ij · log softmax(logits_i)_j of float32 [B, B] targets and logits -> scalar."""
    return ops.mean(-ops.sum(targets * ops.log_softmax(logits, axis=1), axis=1))


def npairs_loss(y_true, y_pred):
    """N-pairs loss of a similarity matrix; equals TFA's `npairs_loss`.

    Row i of y_pred holds the similarities of anchor i to the positives j of the batch (e.g. S = A Pᵀ for anchor
    and positive embeddings A, P [B, D]); each row is a softmax over the batch whose target spreads evenly over
    the columns of i's class:
        T_ij = [y_i = y_j] / #{j : y_j = y_i},    loss = (1/B) Σ_i -Σ_j T_ij log softmax(S_i)_j.
    With one pair per class this is (1/B) Σ_i log(1 + Σ_{j != i} exp(S_ij - S_ii)). Labels are compared in their
    own dtype (TFA cast them to y_pred's: float16 merges labels above 2048). The toolkit has no N-pairs loss of
    its own; its in-batch losses take labels and embeddings instead of a similarity matrix.
    Reference: Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016.

    Args:
        y_true: [B] or [B, 1] class labels.
        y_pred: [B, B] float similarity matrix; computed in float32.

    Returns:
        Scalar loss in the dtype of `y_pred`.
    """
    logits, dtype = _similarity_matrix(y_pred)
    labels = _class_labels("y_true", y_true, (static_shape(logits) or (None,))[0], "y_pred")
    targets = ops.cast(same_label_mask(labels), "float32")  # [B, B], the diagonal included: rows sum to >= 1
    targets = targets / ops.sum(targets, axis=1, keepdims=True)
    return ops.cast(_soft_target_cross_entropy(targets, logits), dtype)


def npairs_multilabel_loss(y_true, y_pred):
    """N-pairs loss with multi-label targets; equals TFA's `npairs_multilabel_loss`.

    With Y [B, C] the binary class indicators (Y_ic = 1 when sample i is in class c), the target of row i is
    the number of classes i shares with each j, normalised to sum to one:
        L = Y Yᵀ,   T_ij = L_ij / Σ_j L_ij,   loss = (1/B) Σ_i -Σ_j T_ij log softmax(S_i)_j.
    With one class per sample this is `npairs_loss`. A sample without any class has no target and contributes
    0 (TFA: NaN from 0/0).
    Reference: Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016.

    Args:
        y_true: [B, C] binary indicators, a dense tensor or (TensorFlow backend) a `tf.SparseTensor`.
        y_pred: [B, B] float similarity matrix; computed in float32.

    Returns:
        Scalar loss in the dtype of `y_pred`.
    """
    logits, dtype = _similarity_matrix(y_pred)
    indicators = ops.convert_to_tensor(y_true, dtype="float32", sparse=False)
    shape, rows = static_shape(indicators), (static_shape(logits) or (None,))[0]
    if shape is not None and len(shape) != 2:
        raise ValueError(f"y_true must be a [B, C] matrix of binary class indicators, got shape {shape}")
    if shape is not None and None not in (shape[0], rows) and shape[0] != rows:
        raise ValueError(f"y_true has {shape[0]} rows but y_pred has {rows}: one row of indicators per anchor")
    shared = ops.matmul(indicators, ops.transpose(indicators))  # [B, B]: classes shared by i and j
    totals = ops.sum(shared, axis=1, keepdims=True)  # [B, 1]
    targets = shared / ops.where(totals > 0, totals, 1.0)
    return ops.cast(_soft_target_cross_entropy(targets, logits), dtype)


# -------------------------------------------------------------------------------------------- Keras classes


def _exact_class_ids(labels):
    """Integer labels -> each label's rank among the sorted labels of the batch (equal labels, equal ids), so
    that they stay distinct through Keras's cast to float32; other dtypes are returned as they are."""
    labels = ops.convert_to_tensor(labels)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if "int" not in dtype:
        return labels
    flat = ops.reshape(labels if dtype in ("int32", "int64") else ops.cast(labels, "int32"), (-1,))
    ids = ops.searchsorted(ops.sort(flat), flat, side="left")
    return ops.reshape(ids, ops.shape(labels))


class _AddonsLoss(keras.losses.Loss):
    """A TFA loss as a Keras 3 loss: its function, keyword arguments, default name and reduction.

    `__call__` returns the loss in the dtype of `y_pred` (TFA's rule) and, when y_true holds class labels
    (`class_labels`), replaces integer labels by exact small ids before Keras casts them to float32.
    """

    fn = None  # the loss function, set by each subclass (a staticmethod)
    class_labels = True

    def __init__(self, name, reduction, dtype=None, **fn_kwargs):
        reduction = _KERAS2_REDUCTIONS.get(reduction, reduction)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.fn_kwargs = fn_kwargs

    def call(self, y_true, y_pred):
        return type(self).fn(y_true, y_pred, **self.fn_kwargs)

    def __call__(self, y_true, y_pred, sample_weight=None):
        dtype = _float_dtype(y_pred, default=None)
        if self.class_labels:
            y_true = _exact_class_ids(y_true)
        loss = super().__call__(y_true, y_pred, sample_weight=sample_weight)
        return loss if dtype is None else ops.cast(loss, dtype)

    def get_config(self):
        config = {**super().get_config(), **self.fn_kwargs}
        if callable(config.get("distance_metric")):
            config["distance_metric"] = keras.saving.serialize_keras_object(config["distance_metric"])
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("distance_metric"), dict):
            config["distance_metric"] = keras.saving.deserialize_keras_object(config["distance_metric"])
        return cls(**config)


@keras.saving.register_keras_serializable(package=PACKAGE)
class TripletSemiHardLoss(_AddonsLoss):
    """Triplet loss with semi-hard negative mining (see `triplet_semihard_loss`); equals TFA's
    `TripletSemiHardLoss`. y_true: [B] class labels, y_pred: [B, D] embeddings -> a scalar.

    Args:
        margin: float >= 0 (default 1.0).
        distance_metric: "L2", "squared-L2", "angular" or a callable (see `triplet_semihard_loss`).
        name: the loss's name (default "triplet_semihard_loss").
        reduction: Keras 3's; TFA's "none" by default (the loss is one scalar per batch already).
        dtype: Keras 3's loss dtype (the dtype inputs are cast to before `call`).
    """

    fn = staticmethod(triplet_semihard_loss)

    def __init__(self, margin=1.0, distance_metric="L2", name=None, reduction="none", dtype=None):
        super().__init__(name or "triplet_semihard_loss", reduction, dtype, margin=_check_margin(margin),
                         distance_metric=_check_distance_metric(distance_metric))


@keras.saving.register_keras_serializable(package=PACKAGE)
class TripletHardLoss(_AddonsLoss):
    """Triplet loss with the hardest positive and negative of each anchor (see `triplet_hard_loss`); equals
    TFA's `TripletHardLoss`. y_true: [B] class labels, y_pred: [B, D] embeddings -> a scalar.

    Args:
        margin: float >= 0 (default 1.0).
        soft: if True, the soft margin log(1 + exp(hp - hn)).
        distance_metric: "L2", "squared-L2", "angular" or a callable.
        name: the loss's name (default "triplet_hard_loss").
        reduction: Keras 3's; TFA's "none" by default.
        dtype: Keras 3's loss dtype.
    """

    fn = staticmethod(triplet_hard_loss)

    def __init__(self, margin=1.0, soft=False, distance_metric="L2", name=None, reduction="none", dtype=None):
        if not isinstance(soft, bool):
            raise ValueError(f"soft must be True or False, got {soft!r}")
        super().__init__(name or "triplet_hard_loss", reduction, dtype, margin=_check_margin(margin), soft=soft,
                         distance_metric=_check_distance_metric(distance_metric))


@keras.saving.register_keras_serializable(package=PACKAGE)
class LiftedStructLoss(_AddonsLoss):
    """Lifted structured loss (see `lifted_struct_loss`); equals TFA's `LiftedStructLoss`.
    y_true: [B] class labels, y_pred: [B, D] embeddings -> a scalar.

    Args:
        margin: float >= 0 (default 1.0).
        name: the loss's name (default "lifted_struct_loss").
        reduction: Keras 3's; TFA's "none" by default.
        dtype: Keras 3's loss dtype.
    """

    fn = staticmethod(lifted_struct_loss)

    def __init__(self, margin=1.0, name=None, reduction="none", dtype=None):
        super().__init__(name or "lifted_struct_loss", reduction, dtype, margin=_check_margin(margin))


@keras.saving.register_keras_serializable(package=PACKAGE)
class ContrastiveLoss(_AddonsLoss):
    """Contrastive loss of given pairs (see `contrastive_loss`); equals TFA's `ContrastiveLoss`.
    y_true: [B] pair labels (1 positive, 0 negative), y_pred: [B] pair distances -> the per-pair losses reduced
    by `reduction` with the sample weights (Keras's mean over the batch by default). Not the toolkit's
    `model.losses.ContrastiveLoss`, which takes class labels and embeddings and forms the pairs itself.

    Args:
        margin: float >= 0 (default 1.0).
        reduction: Keras 3's, "sum_over_batch_size" by default as in TFA.
        name: the loss's name (default "contrastive_loss").
        dtype: Keras 3's loss dtype.
    """

    fn = staticmethod(contrastive_loss)
    class_labels = False

    def __init__(self, margin=1.0, reduction="sum_over_batch_size", name="contrastive_loss", dtype=None):
        super().__init__(name, reduction, dtype, margin=_check_margin(margin))


@keras.saving.register_keras_serializable(package=PACKAGE)
class NpairsLoss(_AddonsLoss):
    """N-pairs loss of a similarity matrix (see `npairs_loss`); equals TFA's `NpairsLoss`.
    y_true: [B] class labels, y_pred: [B, B] similarities -> a scalar.

    Args:
        name: the loss's name (default "npairs_loss").
        reduction: Keras 3's; TFA's "none" by default.
        dtype: Keras 3's loss dtype.
    """

    fn = staticmethod(npairs_loss)

    def __init__(self, name="npairs_loss", reduction="none", dtype=None):
        super().__init__(name, reduction, dtype)


@keras.saving.register_keras_serializable(package=PACKAGE)
class NpairsMultilabelLoss(_AddonsLoss):
    """N-pairs loss with multi-label targets (see `npairs_multilabel_loss`); equals TFA's `NpairsMultilabelLoss`.
    y_true: [B, C] binary indicators (dense or tf.SparseTensor), y_pred: [B, B] similarities -> a scalar.

    Args:
        name: the loss's name (default "npairs_multilabel_loss").
        reduction: Keras 3's; TFA's "none" by default.
        dtype: Keras 3's loss dtype.
    """

    fn = staticmethod(npairs_multilabel_loss)
    class_labels = False

    def __init__(self, name="npairs_multilabel_loss", reduction="none", dtype=None):
        super().__init__(name, reduction, dtype)


# TFA registered its loss functions too ("Addons>triplet_semihard_loss", ...), not its distance functions.
_FUNCTIONS = (triplet_semihard_loss, triplet_hard_loss, lifted_struct_loss, contrastive_loss, npairs_loss,
              npairs_multilabel_loss)
for _function in _FUNCTIONS:
    keras.saving.register_keras_serializable(package=PACKAGE)(_function)


def _register_string_identifiers():
    """Make `model.compile(loss="Addons>name")` find these losses.

    Keras 3's `keras.losses.get` reads a string only from its own table of built-in losses, not from the
    registered objects as Keras 2 (and so TFA) did, so the "Addons>..." names are added to that table; a
    Keras without it (a private module) leaves the names to `keras.losses.deserialize` and `custom_objects`.
    """
    try:
        from keras.src.losses import ALL_OBJECTS_DICT
    except ImportError:  # pragma: no cover - another Keras layout
        return
    for obj in (*_FUNCTIONS, TripletSemiHardLoss, TripletHardLoss, LiftedStructLoss, ContrastiveLoss, NpairsLoss,
                NpairsMultilabelLoss):
        ALL_OBJECTS_DICT.setdefault(keras.saving.get_registered_name(obj), obj)


_register_string_identifiers()

# `from model import tfa_losses as tfa` keeps `tfa.losses.TripletSemiHardLoss()` working unchanged.
losses = sys.modules[__name__]

__all__ = [
    "ContrastiveLoss", "LiftedStructLoss", "NpairsLoss", "NpairsMultilabelLoss", "TripletHardLoss",
    "TripletSemiHardLoss", "angular_distance", "contrastive_loss", "lifted_struct_loss", "npairs_loss",
    "npairs_multilabel_loss", "pairwise_distance", "triplet_hard_loss", "triplet_semihard_loss",
]
