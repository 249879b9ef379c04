"""Fitting NetVLAD to data: the k-means cluster step before training and PCA-whitening after it.

- `sample_descriptors` / `cluster_netvlad`: run the backbone over training images, k-means the local
  descriptors with faiss and initialise the layer (`NetVLAD.init_from_kmeans`), the paper's §3.2;
- `fit_whitening`: PCA-whitening of the NetVLAD descriptors of a database, written into the model's
  "whitening" dense layer (the paper's dimensionality reduction, fitted after training);
The same two as steps of a run, before and after `fit`, are the NetVLAD family's (`model.nets.netvlad`).
"""

import logging
import os

import faiss
import keras
import numpy as np
from keras import ops

from model.atomic import save_array
from model.nets.netvlad_layer import WHITENING_LAYER, netvlad_layer
from model.ops import l2_normalize
from model.progress import progress_bar

logger = logging.getLogger(__name__)


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
    progress = progress_bar(num_images, "image")
    sampled, used = [], 0
    for batch in dataset:
        maps = ops.convert_to_numpy(features(_images_of(batch), training=False))  # [B, H, W, D]
        maps = maps[: num_images - used]  # the last batch may hold more images than needed
        maps = maps.reshape(len(maps), -1, maps.shape[-1])  # [B, N, D]
        locations = maps.shape[1]
        if locations < descriptors_per_image and used == 0:
            logger.warning("Feature maps have only %d locations, fewer than descriptors_per_image=%d; using all of "
                           "them.", locations, descriptors_per_image)
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
        logger.warning("The dataset yielded only %d images for the NetVLAD cluster step (num_images=%d); "
                       "clustering with those.", used, num_images)
    descriptors = np.concatenate(sampled).astype(np.float32)
    if layer.normalize_input:
        descriptors = ops.convert_to_numpy(l2_normalize(descriptors, axis=-1))
    return descriptors


def cluster_netvlad(model, dataset, out_path=None, num_images=500, descriptors_per_image=100, seed=0):
    """The NetVLAD cluster step: sample descriptors, k-means them, save and apply the centres.

    Runs `sample_descriptors`, then faiss k-means (K = the layer's `num_clusters`, 100 iterations,
    seeded, as pytorch-NetVlad), saves the centroids `[K, D]` as a .npy file at `out_path` and calls
    `init_from_kmeans(centroids, descriptors)` on the model's NetVLAD layer.

    Args:
        model: a NetVLAD network; its layer "netvlad" is initialised in place.
        dataset: tf.data dataset of `(images, labels)` batches, images in [0, 255].
        out_path: where to write the centroids, ending in ".npy" (parent folders are created); None: not saved.
        num_images, descriptors_per_image, seed: see `sample_descriptors`; `seed` also seeds k-means.

    Returns:
        centroids: [K, D] float32.
    """
    if out_path is not None and not str(out_path).endswith(".npy"):
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
    if out_path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        save_array(out_path, centroids)
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
    progress = progress_bar(None, "image")
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
