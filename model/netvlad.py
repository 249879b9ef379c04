"""NetVLAD: a trainable VLAD pooling layer, its k-means initialisation and PCA-whitening.

NetVLAD (Arandjelović et al., "NetVLAD: CNN architecture for weakly supervised place recognition",
CVPR 2016) pools a feature map of N = H·W local descriptors x_n ∈ R^D into one global descriptor by
soft-assigning every descriptor to K learned cluster centres c_k and summing the residuals:

    a_k(x_n) = softmax_k(w_kᵀ x_n + b_k)                   soft assignment, a 1×1 convolution
    V_k      = Σ_n a_k(x_n) (x_n − c_k)                     [K, D] residual aggregation
    V_k      ← V_k / ‖V_k‖                                  intra-normalisation
    v        = flatten_K-major(V) / ‖flatten_K-major(V)‖    [K·D] global descriptor

This module holds:
- `NetVLAD`, the Keras layer, and `NetVLAD.init_from_kmeans` (the paper's initialisation);
- `sample_descriptors` / `cluster_netvlad`: the cluster step that runs the backbone over training images,
  runs k-means with faiss and initialises the layer (training calls it while `needs_clustering`);
- `fit_whitening`: PCA-whitening of the NetVLAD descriptors of a database, written into the model's
  "whitening" dense layer (the paper's dimensionality reduction, fitted after training).

A network using this module has a layer named "netvlad" fed directly by the backbone's feature map
(see `model.nets.build_netvlad`); that name is how the functions below find their way in the model.
"""

import math
import warnings
from pathlib import Path

import faiss
import keras
import numpy as np
from keras import ops

from model.distances import l2_normalize

NETVLAD_LAYER = "netvlad"
WHITENING_LAYER = "whitening"

# Ratio between the two largest soft assignments of a descriptor right after initialisation (paper: 100).
_ASSIGNMENT_RATIO = 100.0


@keras.saving.register_keras_serializable(package="metric_learning")
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


def _images_of(batch):
    """The images of a dataset element: `(images, labels)` tuples and bare image batches both occur."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def sample_descriptors(model, dataset, num_images=500, descriptors_per_image=100, seed=0):
    """Sample local descriptors from the backbone feature maps (the NetVLAD layer's input).

    The first `num_images` images of `dataset` go through the backbone; from each feature map
    `[H, W, D]`, `descriptors_per_image` distinct locations are drawn uniformly (numpy, seeded). The
    descriptors are L2-normalised when the layer normalises its inputs (the default, the paper's v1),
    so that k-means runs in the space the layer assigns in.

    Args:
        model: a NetVLAD network (has a layer "netvlad" fed by the backbone).
        dataset: tf.data dataset of `(images, labels)` batches (or image batches), images
            `[B, H, W, C]` in [0, 255].
        num_images: how many images to use; fewer are used (with a warning) if the dataset ends.
        descriptors_per_image: locations per image; all locations (with a warning) if the feature
            map has fewer.
        seed: seed of the location sampling.

    Returns:
        descriptors: [M, D] float32, M = images used × locations per image.
    """
    layer = netvlad_layer(model)
    features = keras.Model(model.input, layer.input)
    rng = np.random.default_rng(seed)
    progress = keras.utils.Progbar(num_images, unit_name="image")
    sampled, used = [], 0
    for batch in dataset:
        maps = ops.convert_to_numpy(features(_images_of(batch), training=False))  # [B, H, W, D]
        maps = maps[: num_images - used]  # the last batch may hold more images than needed
        maps = maps.reshape(len(maps), -1, maps.shape[-1])  # [B, N, D]
        locations = maps.shape[1]
        if locations < descriptors_per_image and used == 0:
            warnings.warn(
                f"Feature maps have only {locations} locations, fewer than descriptors_per_image="
                f"{descriptors_per_image}; using all of them.",
                stacklevel=2,
            )
        for descriptors in maps:  # [N, D] per image
            picked = rng.choice(locations, min(descriptors_per_image, locations), replace=False)
            sampled.append(descriptors[picked])
        used += len(maps)
        progress.update(used)
        if used >= num_images:
            break
    if used == 0:
        raise ValueError("The dataset given to the NetVLAD cluster step yielded no images.")
    if used < num_images:
        warnings.warn(
            f"The dataset yielded only {used} images for the NetVLAD cluster step "
            f"(num_images={num_images}); clustering with those.",
            stacklevel=2,
        )
    descriptors = np.concatenate(sampled).astype(np.float32)
    if layer.normalize_input:
        descriptors = ops.convert_to_numpy(l2_normalize(descriptors, axis=-1))
    return descriptors


def cluster_netvlad(model, dataset, out_path, num_images=500, descriptors_per_image=100, seed=0):
    """The NetVLAD cluster step: sample descriptors, k-means them, save and apply the centres.

    Runs `sample_descriptors`, then faiss k-means (K = the layer's `num_clusters`, 100 iterations,
    seeded, as pytorch-NetVlad), saves the centroids `[K, D]` as a .npy file at `out_path` and calls
    `init_from_kmeans(centroids, descriptors)` on the model's NetVLAD layer.

    Args:
        model: a NetVLAD network; its layer "netvlad" is initialised in place.
        dataset: tf.data dataset of `(images, labels)` batches, images in [0, 255].
        out_path: where to write the centroids; must end in ".npy" (parent folders are created).
        num_images, descriptors_per_image, seed: see `sample_descriptors`; `seed` also seeds k-means.

    Returns:
        centroids: [K, D] float32.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".npy":
        raise ValueError(f"NetVLAD centroids are saved as .npy; out_path must end in .npy: {out_path}")
    layer = netvlad_layer(model)
    descriptors = sample_descriptors(model, dataset, num_images, descriptors_per_image, seed)
    if len(descriptors) < layer.num_clusters:
        raise ValueError(
            f"Only {len(descriptors)} descriptors for {layer.num_clusters} NetVLAD clusters: "
            f"raise num_images or descriptors_per_image."
        )
    kmeans = faiss.Kmeans(descriptors.shape[1], layer.num_clusters, niter=100, seed=seed)
    kmeans.train(descriptors)
    centroids = kmeans.centroids.astype(np.float32)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(out_path, centroids)
    layer.init_from_kmeans(centroids, descriptors)
    return centroids


def fit_whitening(model, database_dataset, dim):
    """Fit PCA-whitening on the database's NetVLAD descriptors into the model's "whitening" layer.

    The paper reduces NetVLAD descriptors with PCA-whitening followed by L2 normalisation. With the
    descriptors v_i: [M, K·D] of the database images, mean μ, and the thin SVD `V − μ = U S Pᵀ`
    (principal directions P, eigenvalues λ_j = s_j² / (M − 1)), the projection is

        y = (v − μ) P_:dim / sqrt(λ_:dim)    i.e. kernel = P_:dim / sqrt(λ_:dim), bias = −μ · kernel,

    so y has zero mean and identity covariance on the database; the model L2-normalises y after the
    dense layer. The SVD is on the centred data matrix, never on the [K·D, K·D] covariance. Fit it
    after training (the descriptors change while the network learns) and before evaluation.

    Args:
        model: a NetVLAD network built with `netvlad_dim = dim` (it has the dense layer "whitening").
        database_dataset: tf.data dataset of `(images, labels)` batches (or image batches).
        dim: output dimension; must equal the whitening layer's units and be < number of images.

    Returns:
        eigenvalues: [dim] float64, the variances λ of the kept directions (largest first).
    """
    layer = netvlad_layer(model)
    try:
        whitening = model.get_layer(WHITENING_LAYER)
    except ValueError:
        raise ValueError(
            f"Model '{model.name}' has no '{WHITENING_LAYER}' layer: build it with netvlad_dim={dim}."
        ) from None
    if whitening.units != dim:
        raise ValueError(
            f"fit_whitening dim={dim} but the model's '{WHITENING_LAYER}' layer has "
            f"{whitening.units} units (netvlad_dim when the model was built)."
        )
    descriptors_model = keras.Model(model.input, layer.output)
    progress = keras.utils.Progbar(None, unit_name="image")
    batches = []
    for batch in database_dataset:
        batches.append(ops.convert_to_numpy(descriptors_model(_images_of(batch), training=False)))
        progress.add(len(batches[-1]))
    vectors = np.concatenate(batches).astype(np.float64) if batches else np.zeros((0, 0))
    if len(vectors) <= dim:
        raise ValueError(
            f"PCA-whitening to {dim} dimensions needs more than {dim} database images, got {len(vectors)}."
        )
    mean = vectors.mean(axis=0)
    _, singular, directions = np.linalg.svd(vectors - mean, full_matrices=False)
    eigenvalues = singular[:dim] ** 2 / (len(vectors) - 1)
    if eigenvalues[-1] <= 1e-12 * eigenvalues[0]:
        raise ValueError(
            f"The database descriptors span fewer than {dim} dimensions (eigenvalue "
            f"{eigenvalues[-1]:.3g} vs largest {eigenvalues[0]:.3g}); lower netvlad_dim."
        )
    kernel = directions[:dim].T / np.sqrt(eigenvalues)  # [K·D, dim]
    whitening.set_weights([kernel.astype(np.float32), (-mean @ kernel).astype(np.float32)])
    return eigenvalues
