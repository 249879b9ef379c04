"""NetVLAD: a trainable VLAD pooling layer, its k-means initialisation and PCA-whitening.

NetVLAD (Arandjelović et al., "NetVLAD: CNN architecture for weakly supervised place recognition",
CVPR 2016) pools a feature map of N = H·W local descriptors x_n ∈ R^D into one global descriptor by
soft-assigning every descriptor to K learned cluster centres c_k and summing the residuals:

    a_k(x_n) = softmax_k(w_kᵀ x_n + b_k)                   soft assignment, a 1×1 convolution
    V_k      = Σ_n a_k(x_n) (x_n − c_k)                     [K, D] residual aggregation
    V_k      ← V_k / ‖V_k‖                                  intra-normalisation
    v        = flatten_K-major(V) / ‖flatten_K-major(V)‖    [K·D] global descriptor

This module holds the Keras layer `NetVLAD` and `NetVLAD.init_from_kmeans` (the paper's
initialisation), with `netvlad_layer` / `needs_clustering` to find it in a network. The steps that
fit it to data (k-means cluster step, PCA-whitening) are in `model.nets.netvlad_fitting`.

A network using this layer has a layer named "netvlad" fed directly by the backbone's feature map
(see `model.nets.build_netvlad`); that name is how the fitting code finds its way in the model.
"""

import math

import keras
import numpy as np
from keras import ops

from model.ops import l2_normalize
from model.registry import KERAS_PACKAGE

NETVLAD_LAYER = "netvlad"
WHITENING_LAYER = "whitening"

# Ratio between the two largest soft assignments of a descriptor right after initialisation (paper: 100).
_ASSIGNMENT_RATIO = 100.0


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class NetVLAD(keras.Layer):
    """NetVLAD pooling: `[B, H, W, D]` feature map → `[B, K·D]` unit-norm descriptor (Arandjelović 2016).

    The forward pass follows the module docstring. Descriptors are L2-normalised first when
    `normalize_input` is set. The aggregation is `Vᵀ = aᵀ x − (Σ_n a)ᵀ c` (two matrix products), so no
    `[B, N, K, D]` tensor is ever built. The output is flattened cluster by cluster (K-major), the
    order of pytorch-NetVlad, so weights and descriptors can be compared with that implementation.

    The layer computes in float32 whatever the global dtype policy (its default `dtype` is
    "float32"): the softmax and the sums over thousands of locations lose too much in float16.

    Weights (created in `build`):
        kernel: [D, K], the 1×1 convolution of the soft assignment.
        bias: [K], only with `vladv2`.
        centroids: [K, D], the cluster centres c_k.
        alpha: scalar, non-trainable; the assignment sharpness chosen by `init_from_kmeans`, 0 until
            then (so `initialised` is saved with the model).

    Args:
        num_clusters: K, the number of cluster centres.
        normalize_input: L2-normalise every input descriptor before assigning it.
        vladv2: use the assignment derived from squared distances (with a bias) instead of cosine
            similarity; changes `init_from_kmeans` (see there).
    """

    def __init__(self, num_clusters=64, normalize_input=True, vladv2=False, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if not isinstance(num_clusters, int) or num_clusters < 2:
            raise ValueError(f"NetVLAD num_clusters must be an int >= 2, got {num_clusters!r}.")
        self.num_clusters = num_clusters
        self.normalize_input = bool(normalize_input)
        self.vladv2 = bool(vladv2)

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"NetVLAD expects a channels-last feature map [B, H, W, D] with known D, "
                f"got input shape {input_shape}."
            )
        dim = input_shape[-1]
        self.kernel = self.add_weight(
            name="kernel", shape=(dim, self.num_clusters), initializer="glorot_uniform"
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.num_clusters,), initializer="zeros")
            if self.vladv2
            else None
        )
        # Uniform in [0, 1) as pytorch-NetVlad; meaningful values come from init_from_kmeans.
        self.centroids = self.add_weight(
            name="centroids",
            shape=(self.num_clusters, dim),
            initializer=keras.initializers.RandomUniform(0.0, 1.0),
        )
        self._alpha = self.add_weight(name="alpha", shape=(), initializer="zeros", trainable=False)

    @property
    def alpha(self):
        """The assignment sharpness set by `init_from_kmeans` (float; 0.0 before it ran)."""
        return float(ops.convert_to_numpy(self._alpha)) if self.built else 0.0

    @property
    def initialised(self):
        """Whether `init_from_kmeans` has set the weights (saved with the model)."""
        return self.alpha > 0.0

    def _flat_descriptors(self, inputs):
        """`[B, H, W, D]` → `[B, N, D]` float32 descriptors, L2-normalised if `normalize_input`."""
        x = ops.cast(inputs, "float32")
        x = ops.reshape(x, (ops.shape(x)[0], -1, self.kernel.shape[0]))  # [B, N, D]
        return l2_normalize(x, axis=-1) if self.normalize_input else x

    def _assign(self, x):
        """Soft assignment `softmax_k(x·kernel + bias)` of descriptors `x: [B, N, D]` → `[B, N, K]`."""
        logits = ops.matmul(x, self.kernel)  # [B, N, K]
        if self.vladv2:
            logits = logits + self.bias
        return ops.softmax(logits, axis=-1)

    def soft_assignment(self, inputs):
        """Soft assignment of every location of `inputs: [B, H, W, D]` to the clusters: `[B, H·W, K]`."""
        return self._assign(self._flat_descriptors(inputs))

    def call(self, inputs):
        x = self._flat_descriptors(inputs)  # [B, N, D]
        a = self._assign(x)  # [B, N, K]
        # V_k = Σ_n a_nk x_n − (Σ_n a_nk) c_k, as two products instead of a [B, N, K, D] tensor.
        weighted_sum = ops.matmul(ops.transpose(a, (0, 2, 1)), x)  # [B, K, D]
        mass = ops.sum(a, axis=1)[:, :, None]  # [B, K, 1]
        vlad = weighted_sum - mass * self.centroids  # [B, K, D]
        vlad = l2_normalize(vlad, axis=-1)  # intra-normalisation
        vlad = ops.reshape(vlad, (-1, self.num_clusters * self.kernel.shape[0]))  # [B, K·D], K-major
        return l2_normalize(vlad, axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_clusters * input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(
            num_clusters=self.num_clusters,
            normalize_input=self.normalize_input,
            vladv2=self.vladv2,
        )
        return config

    def init_from_kmeans(self, centroids, descriptors):
        """Set kernel, bias and centroids from k-means centres so assignments start sharp (paper §3.2).

        v1 (cosine assignment; `descriptors` should be L2-normalised like the layer's inputs):
            c̄_k = c_k / ‖c_k‖;  dots = c̄ · descriptorsᵀ: [K, M], sorted decreasingly over clusters;
            alpha = −ln(0.01) / mean_m(dots[0, m] − dots[1, m]);  kernel = alpha · c̄ᵀ;  centroids = c.
            Then `a_first / a_second = exp(alpha · gap)` has geometric mean 100 over the descriptors.
        v2 (distance assignment, `a_k ∝ exp(−alpha ‖x − c_k‖²)`):
            for each centre, d1 ≤ d2 are the squared distances to its two nearest descriptors;
            alpha = −ln(0.01) / mean_k(d2 − d1);  kernel = 2·alpha·cᵀ;  bias = −alpha·‖c_k‖²;
            centroids = c. (pytorch-NetVlad squares the neighbour *indices* here by mistake.)

        Args:
            centroids: [K, D] k-means centres.
            descriptors: [M, D] descriptors the centres were computed from (M ≥ 2).

        Raises:
            ValueError: if the layer is not built, the shapes do not match the layer, or the
                descriptors do not separate the clusters (mean gap ≤ 0: alpha would be infinite).
        """
        if not self.built:
            raise ValueError(f"NetVLAD layer '{self.name}' is not built: call it on a feature map first.")
        dim = self.kernel.shape[0]
        centroids = np.asarray(centroids, dtype=np.float64)
        descriptors = np.asarray(descriptors, dtype=np.float64)
        if centroids.shape != (self.num_clusters, dim):
            raise ValueError(
                f"centroids must have shape {(self.num_clusters, dim)} (num_clusters, descriptor "
                f"dim) for layer '{self.name}', got {centroids.shape}."
            )
        if descriptors.ndim != 2 or descriptors.shape[1] != dim or len(descriptors) < 2:
            raise ValueError(
                f"descriptors must have shape [M >= 2, {dim}] for layer '{self.name}', "
                f"got {descriptors.shape}."
            )
        if self.vladv2:
            alpha, kernel, bias = _distance_init(centroids, descriptors)
            self.bias.assign(bias.astype(np.float32))
        else:
            alpha, kernel = _cosine_init(centroids, descriptors)
        self.kernel.assign(kernel.astype(np.float32))
        self.centroids.assign(centroids.astype(np.float32))
        self._alpha.assign(np.float32(alpha))


def _sharpness(mean_gap):
    """alpha such that `exp(alpha · mean_gap) = 100`; ValueError if the gap cannot separate clusters."""
    if not mean_gap > 0.0:
        raise ValueError(
            f"Cannot initialise NetVLAD: the mean gap between the two best clusters is {mean_gap}; "
            f"the centroids are probably duplicated or the descriptors degenerate."
        )
    return math.log(_ASSIGNMENT_RATIO) / mean_gap


def _cosine_init(centroids, descriptors):
    """v1 initialisation: returns (alpha, kernel [D, K]); see `NetVLAD.init_from_kmeans`."""
    unit_centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)  # [K, D]
    dots = np.sort(unit_centroids @ descriptors.T, axis=0)[::-1]  # [K, M], best cluster first
    alpha = _sharpness(float(np.mean(dots[0] - dots[1])))
    return alpha, alpha * unit_centroids.T


def _distance_init(centroids, descriptors):
    """v2 initialisation: returns (alpha, kernel [D, K], bias [K]); see `NetVLAD.init_from_kmeans`."""
    squared = (
        np.sum(centroids**2, axis=1)[:, None]
        + np.sum(descriptors**2, axis=1)[None, :]
        - 2.0 * centroids @ descriptors.T
    )  # [K, M] squared distances centre → descriptor
    nearest_two = np.sort(np.partition(np.maximum(squared, 0.0), 1, axis=1)[:, :2], axis=1)  # [K, 2]
    alpha = _sharpness(float(np.mean(nearest_two[:, 1] - nearest_two[:, 0])))
    return alpha, 2.0 * alpha * centroids.T, -alpha * np.sum(centroids**2, axis=1)


def netvlad_layer(model):
    """The model's NetVLAD layer (the layer named "netvlad"); ValueError if it has none."""
    try:
        layer = model.get_layer(NETVLAD_LAYER)
    except ValueError:
        raise ValueError(
            f"Model '{model.name}' has no layer named '{NETVLAD_LAYER}'; build it with "
            f"model='netvlad' (model.nets.build_model)."
        ) from None
    if not isinstance(layer, NetVLAD):
        raise ValueError(
            f"Layer '{NETVLAD_LAYER}' of model '{model.name}' is a {type(layer).__name__}, not NetVLAD."
        )
    return layer


def needs_clustering(model):
    """True iff `model` has a NetVLAD layer that `init_from_kmeans` has not initialised yet."""
    try:
        layer = netvlad_layer(model)
    except ValueError:
        return False
    return not layer.initialised
