"""Backbones of the NetVLAD networks: images → a feature map `[B, h, w, D]` of local descriptors.

    features = BACKBONES["vgg16"].component(image_size=[480, 640], weights="imagenet")

  vgg16     VGG16 conv5_3 before its ReLU (the NetVLAD paper)             [B, H/16, W/16, 512]
  resnet50  ResNet-50 up to conv4                                         [B, H/16, W/16, 1024]
  small     a small convnet for tests and small images                    [B, H/4, W/4, 4·num_channels]
  alexnet   AlexNet conv5 before its ReLU (pytorch-NetVlad's --arch)      [B, h, w, 256]
"""

import warnings

import keras
from keras import layers

from model.nets.applications import (
    application,
    check_weights,
    freeze_before,
    input_shape,
    rgb_shape,
    with_preprocessing,
)
from model.nets.convnet import conv_block
from model.nets.family import BN_MOMENTUM, NUM_CHANNELS, USE_BATCH_NORM, WEIGHTS
from model.registry import Registry

BACKBONES = Registry("backbone", key="backbone", default="vgg16", meaning="netvlad backbone")


@BACKBONES.register("vgg16", options=(WEIGHTS,))
def vgg16_backbone(*, image_size, channels=3, weights="imagenet"):
    """VGG16 cropped at conv5_3 *before* its ReLU (as in the NetVLAD paper): [B, H/16, W/16, 512].

    keras.applications' block5_conv3 has its ReLU fused in, so it is replaced by an identical linear
    convolution carrying the same weights. With pretrained weights, layers below conv5 are frozen
    (the paper trains conv5 onwards; pytorch-NetVlad does the same).
    """
    weights = check_weights(weights)
    shape = rgb_shape(image_size, channels, "the vgg16 backbone")
    vgg = application(keras.applications.VGG16, weights, include_top=False, input_shape=shape)
    fused = vgg.get_layer("block5_conv3")
    linear = layers.Conv2D(fused.filters, fused.kernel_size, padding="same", name="block5_conv3")
    features = linear(vgg.get_layer("block5_conv2").output)
    linear.set_weights(fused.get_weights())
    cropped = keras.Model(vgg.inputs, features, name="vgg16_conv5_3")
    if weights is not None:
        freeze_before(cropped, "block5_conv1")
    return with_preprocessing(cropped, shape, "vgg16")


@BACKBONES.register("resnet50", options=(WEIGHTS,))
def resnet50_backbone(*, image_size, channels=3, weights="imagenet"):
    """ResNet-50 cropped after its conv4 stage (conv4_block6_out): [B, H/16, W/16, 1024].

    With pretrained weights, layers below conv4 are frozen (only the last kept stage is fine-tuned,
    the analogue of training VGG16 from conv5).
    """
    weights = check_weights(weights)
    shape = rgb_shape(image_size, channels, "the resnet50 backbone")
    resnet = application(keras.applications.ResNet50, weights, include_top=False, input_shape=shape)
    cropped = keras.Model(resnet.inputs, resnet.get_layer("conv4_block6_out").output, name="resnet50_conv4")
    if weights is not None:
        freeze_before(cropped, "conv4_block1_1_conv")
    return with_preprocessing(cropped, shape, "resnet50")


@BACKBONES.register("small", options=(NUM_CHANNELS, USE_BATCH_NORM, BN_MOMENTUM, WEIGHTS))
def small_backbone(*, image_size, channels=3, num_channels=32, use_batch_norm=False, bn_momentum=0.9, weights=None):
    """A small convnet for tests and small images: [B, H/4, W/4, 4·num_channels].

    /255 → block(num_channels) → block(2·num_channels) → 3×3 conv(4·num_channels), linear like the
    VGG16 crop (NetVLAD sees signed features). It has no pretrained weights: a weights file is an error,
    and "imagenet" (the default of params.json's weights) is ignored with a warning.
    """
    if weights not in (None, "imagenet"):
        raise ValueError(f"weights is {weights!r}, but the small backbone has no pretrained weights to "
                         'load: set "weights": null, or choose backbone vgg16 or resnet50')
    if weights == "imagenet":
        warnings.warn('the small backbone has no ImageNet weights: "weights": "imagenet" is ignored (random '
                      'initialisation); set "weights": null to say so', stacklevel=2)
    inputs = keras.Input(input_shape(image_size, channels), name="images")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = conv_block(x, num_channels, use_batch_norm, bn_momentum, "block1")
    x = conv_block(x, 2 * num_channels, use_batch_norm, bn_momentum, "block2")
    features = layers.Conv2D(4 * num_channels, 3, padding="same", name="features")(x)
    return keras.Model(inputs, features, name="backbone")


@BACKBONES.register("alexnet", options=(WEIGHTS,))
def alexnet_backbone(*, image_size, channels=3, weights=None):
    """AlexNet's convolutional part cropped at conv5 *before* its ReLU (pytorch-NetVlad's --arch=alexnet,
    which drops the last ReLU and max-pool of torchvision's `alexnet().features`): [B, h, w, 256].

    torchvision's layers, channels-last: zero-pad 2 → conv1 64 11×11 stride 4 → ReLU → max-pool 3 stride 2
    → conv2 192 5×5 (pad 2) → ReLU → max-pool 3/2 → conv3 384 3×3 (pad 1) → ReLU → conv4 256 3×3 → ReLU
    → conv5 256 3×3, linear; h = ⌊(⌊(⌊(H − 7) / 4⌋ + 1 − 3) / 2⌋ + 1 − 3) / 2⌋ + 1 (13 for 224).
    keras.applications has no AlexNet, so `weights` is None (random) or a file written by
    `save_weights` of this cropped model (e.g. torchvision's weights converted, kernels transposed to
    [kh, kw, in, out]); "imagenet" is refused. With a weights file, only conv5 trains (as in pytorch-NetVlad).
    """
    if weights == "imagenet":
        raise ValueError(
            'weights = "imagenet" is not available for backbone "alexnet" (keras.applications has no '
            "AlexNet): set weights to null (random initialisation) or to a .weights.h5 file of the alexnet backbone."
        )
    weights = check_weights(weights)
    shape = rgb_shape(image_size, channels, "the alexnet backbone")
    inputs = keras.Input(shape, name="images")
    x = layers.ZeroPadding2D(2, name="conv1_pad")(inputs)
    x = layers.Conv2D(64, 11, strides=4, name="conv1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
    x = layers.Conv2D(192, 5, padding="same", name="conv2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
    for index, filters in ((3, 384), (4, 256)):
        x = layers.Conv2D(filters, 3, padding="same", name=f"conv{index}")(x)
        x = layers.ReLU(name=f"relu{index}")(x)
    features = layers.Conv2D(256, 3, padding="same", name="conv5")(x)
    cropped = keras.Model(inputs, features, name="alexnet_conv5")
    if weights is not None:
        cropped.load_weights(weights)
        freeze_before(cropped, "conv5")
    return with_preprocessing(cropped, shape, "alexnet")

