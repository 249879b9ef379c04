"""TriNet (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person Re-Identification", 2017).

    network = trinet(image_size=[256, 128], embedding_size=128, weights="imagenet")

images [B, H, W, 3] → ResNet-50 preprocessing → ResNet-50 (no top, global average pooling) [B, 2048]
→ dense 1024, no bias → batch norm (ε = 1e-5) → ReLU → dense E, orthogonal initialisation
→ [L2 normalisation; the paper has none] → [B, E].
"""

import keras
from keras import layers

from model.nets.applications import application, rgb_shape
from model.nets.family import BN_MOMENTUM, EMBEDDING_SIZE, L2_NORMALIZE, WEIGHTS, register_network
from model.nets.layers import ImageNetPreprocessing, L2Normalize


@register_network("trinet", options=(BN_MOMENTUM, EMBEDDING_SIZE, L2_NORMALIZE, WEIGHTS), channels=3)
def trinet(*, image_size, channels=3, embedding_size=128, weights="imagenet", bn_momentum=0.9, l2_normalize=False):
    """TriNet, the person re-identification embedding network (see the module docstring).

    Args:
        image_size: int or [h, w] (the paper: [256, 128]), or None for any size.
        channels: 3 (ImageNet backbones read RGB).
        embedding_size: E.
        weights: "imagenet", None (random) or a ResNet-50 no-top weights file.
        bn_momentum: momentum of the head's batch normalisation.
        l2_normalize: an L2Normalize output layer.

    Returns:
        keras.Model named "trinet": images [B, H, W, 3] in [0, 255] → embeddings [B, E] float32.
    """
    shape = rgb_shape(image_size, channels, "trinet")
    resnet = application(keras.applications.ResNet50, weights, include_top=False, input_shape=shape, pooling="avg")
    inputs = keras.Input(shape, name="images")
    x = ImageNetPreprocessing("resnet50", name="preprocess")(inputs)
    x = resnet(x)
    x = layers.Dense(1024, use_bias=False, name="head_fc1024")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, epsilon=1e-5, name="head_bn")(x)
    x = layers.ReLU(name="head_relu")(x)
    outputs = layers.Dense(embedding_size, kernel_initializer="orthogonal", dtype="float32", name="embedding")(x)
    if l2_normalize:
        outputs = L2Normalize(name="l2_normalize")(outputs)
    return keras.Model(inputs, outputs, name="trinet")
