"""Distances and similarities between anchors `[B, D]` and references `[R, D]` (the batch itself by default)."""

from keras import ops

from model.losses.inputs import as_float32
from model.ops import l2_normalize


def pairwise_distances(embeddings, squared=False, ref_embeddings=None):
    """Euclidean distance matrix between anchors and references (the batch itself by default).

    D[i, j] = ||e_i - r_j||, computed as ||e_i||² - 2 e_i·r_j + ||r_j||², clipped at 0 against rounding.
    Without references the diagonal (each embedding against itself) is set to exactly 0; with
    references it is not touched, whatever `remove_diagonal` says (the masks leave those pairs out).
    The square root of an exact zero has an infinite derivative, so zero entries go through
    sqrt(0 + eps) and are then set back to exactly 0: the gradient there is 0 instead of NaN.

    Args:
        embeddings: [B, D] float tensor.
        squared: if True return squared euclidean distances ||e_i - r_j||².
        ref_embeddings: [R, D] float tensor, or None for the batch itself (R = B).

    Returns:
        distances: [B, R] float32 (without references: symmetric, zero diagonal).
    """
    embeddings = as_float32(embeddings)
    if ref_embeddings is None:
        dot = ops.matmul(embeddings, ops.transpose(embeddings))  # [B, B]
        square_norm = ops.diagonal(dot)  # [B]
        ref_square_norm = square_norm
    else:
        ref_embeddings = as_float32(ref_embeddings)
        dot = ops.matmul(embeddings, ops.transpose(ref_embeddings))  # [B, R]
        square_norm = ops.sum(ops.square(embeddings), axis=1)  # [B]
        ref_square_norm = ops.sum(ops.square(ref_embeddings), axis=1)  # [R]
    distances = ops.expand_dims(ref_square_norm, 0) - 2.0 * dot + ops.expand_dims(square_norm, 1)
    distances = ops.maximum(distances, 0.0)  # [B, R]
    if ref_embeddings is None:
        # Exact zeros on the diagonal: the expansion above leaves rounding residue there.
        distances = distances * (1.0 - ops.eye(ops.shape(distances)[0], dtype="float32"))
    if squared:
        return distances
    zero = ops.cast(ops.equal(distances, 0.0), "float32")  # [B, R]
    distances = ops.sqrt(distances + zero * 1e-16)
    return distances * (1.0 - zero)


def pairwise_cosine_similarity(embeddings, ref_embeddings=None):
    """S[i, j] = cos(e_i, r_j) for embeddings [B, D] and references [R, D] (default: the batch) -> [B, R] float32.

    Zero rows give 0.
    """
    normalized = l2_normalize(as_float32(embeddings))
    ref_normalized = normalized if ref_embeddings is None else l2_normalize(as_float32(ref_embeddings))
    return ops.matmul(normalized, ops.transpose(ref_normalized))

