"""The convnet of the classic TensorFlow triplet-loss recipe (Moindrot, tensorflow-triplet-loss).

    network = mnist_convnet(image_size=28, channels=1, embedding_size=64, use_batch_norm=True)

images [B, H, W, C] → /255 → conv blocks (3×3 conv → [batch norm] → ReLU → 2×2 max-pool; two in the
recipe, block i with num_channels·2^i filters) → flatten → [dropout, training only] → dense embedding
→ [L2 normalisation] → embeddings [B, E]. Its batch norm is `FusedBatchNormalization`: Keras's layer with
TensorFlow's fused training kernel.
"""

import keras
from keras import layers

from model.nets.applications import input_shape
from model.nets.batch_norm import FusedBatchNormalization
from model.nets.family import (
    BN_MOMENTUM,
    EMBEDDING_SIZE,
    L2_NORMALIZE,
    NUM_CHANNELS,
    USE_BATCH_NORM,
    register_network,
)
from model.nets.layers import L2Normalize
from model.registry import FLOAT, INT, Option, OptionError


def conv_block(x, filters, use_batch_norm, bn_momentum, name):
    """3×3 conv (same padding) → [batch norm (momentum `bn_momentum`)] → ReLU → 2×2 max-pool."""
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    if use_batch_norm:
        x = FusedBatchNormalization(momentum=bn_momentum, name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def _check_dropout(value):
    if not 0 <= value < 1:  # a rate of 1 drops every feature: no embedding is left
        raise OptionError("dropout", value, "a number in [0, 1), e.g. 0.3")


CONV_BLOCKS = Option("conv_blocks", (INT,), 2, "mnist_convnet: conv blocks; block i has num_channels·2^i filters",
                     positive=True)
DROPOUT = Option("dropout", (INT, FLOAT), 0.0, "mnist_convnet: dropout rate before the embedding layer, in [0, 1)",
                 minimum=0, check=_check_dropout)


@register_network("mnist_convnet", options=(NUM_CHANNELS, CONV_BLOCKS, USE_BATCH_NORM, DROPOUT, BN_MOMENTUM,
                                            EMBEDDING_SIZE, L2_NORMALIZE))
def mnist_convnet(*, image_size, channels=1, embedding_size=64, num_channels=32, conv_blocks=2, use_batch_norm=False,
                  dropout=0.0, bn_momentum=0.9, l2_normalize=False):
    """The convnet of the TensorFlow triplet-loss recipe (see the module docstring).

    Args:
        image_size: int or [h, w], fixed (the dense layer's input size depends on it).
        channels: 1 or 3.
        embedding_size: E.
        num_channels: filters of the first block; block i has num_channels·2^i.
        conv_blocks: the number of blocks (two in the recipe).
        use_batch_norm: batch normalisation after each convolution, with momentum `bn_momentum`.
        dropout: rate of dropout before the embedding layer (training only), in [0, 1).
        l2_normalize: an L2Normalize output layer.

    Returns:
        keras.Model named "mnist_convnet": images [B, H, W, C] in [0, 255] → embeddings [B, E] float32.
    """
    shape = input_shape(image_size, channels)
    if None in shape:
        raise ValueError(f"mnist_convnet needs a fixed image_size, got {image_size!r}.")
    if min(shape[:2]) < 2**conv_blocks:  # each block's 2×2 pool halves the image (rounding down)
        raise ValueError(
            f"mnist_convnet with conv_blocks={conv_blocks} halves the image {conv_blocks} times: "
            f"images of {shape[0]}×{shape[1]} pixels would vanish; expected at least {2**conv_blocks} "
            f"pixels per side (a larger image_size or fewer conv_blocks)."
        )
    inputs = keras.Input(shape, name="images")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block in range(conv_blocks):
        x = conv_block(x, num_channels * 2**block, use_batch_norm, bn_momentum, f"block{block + 1}")
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(embedding_size, dtype="float32", name="embedding")(x)
    if l2_normalize:
        outputs = L2Normalize(name="l2_normalize")(outputs)
    return keras.Model(inputs, outputs, name="mnist_convnet")
