"""Embedding networks, built by name from experiment params: images → embeddings.

Every model maps images `[B, H, W, C]`, float32 in [0, 255], channels-last, to embeddings `[B, E]`
(float32 even under a mixed-precision policy). Each model does its own input preprocessing inside
the graph, so a saved `.keras` file is self-contained; importing this module registers the custom
layers, so `keras.models.load_model(path)` needs no `custom_objects`.

Models (`params.model`), chosen from the `MODELS` registry by `build_model(params)`:
- "mnist_convnet": the classic TensorFlow triplet-loss recipe (Moindrot, tensorflow-triplet-loss):
  blocks of 3×3 conv → [batch norm] → ReLU → 2×2 max-pool (two in the recipe), then [dropout and] a dense
  embedding layer. Its batch norm (and the small backbone's) is `model.batch_norm.FusedBatchNormalization`:
  Keras's layer with TensorFlow's fused training kernel.
- "trinet": Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person Re-Identification"
  (2017): ResNet-50 with global average pooling → dense 1024 → batch norm → ReLU → dense E.
- "netvlad": Arandjelović et al., "NetVLAD" (CVPR 2016): a cropped backbone (`params.backbone`:
  "vgg16" conv5_3 before its ReLU, "resnet50" up to conv4, "alexnet" conv5 before its ReLU, or a
  "small" convnet) → pooling (`params.pooling`: the NetVLAD layer of `model.netvlad`, or global max /
  average pooling, pytorch-NetVlad's --pooling) → optional PCA-whitening dense layer (`netvlad_dim`,
  NetVLAD pooling only) → L2 normalisation.

Params attributes read: model, image_size (int, [h, w], or None for any size except mnist_convnet),
channels (1 or 3), num_channels (mnist_convnet and the small backbone), conv_blocks and dropout (mnist_convnet),
use_batch_norm, bn_momentum, embedding_size, l2_normalize (an L2Normalize output layer; NetVLAD's output always
is), weights ("imagenet" | None | path to a weights file of the Keras application, read by the ImageNet
backbones only; AlexNet has no "imagenet" weights), backbone, pooling, num_clusters, vladv2, netvlad_dim (int
or None).
"""

import functools
import warnings
from pathlib import Path

import keras
from keras import layers

from model.batch_norm import FusedBatchNormalization
from model.distances import l2_normalize
from model.netvlad import NETVLAD_LAYER, WHITENING_LAYER, NetVLAD

# keras.applications preprocessing of each ImageNet backbone: VGG16 and ResNet-50 are "caffe" mode
# (RGB → BGR, minus the ImageNet mean pixel, no scaling); AlexNet's torchvision weights expect "torch"
# mode (/255, minus the ImageNet mean, divided by its standard deviation, RGB), as pytorch-NetVlad feeds it.
_IMAGENET_PREPROCESSING = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "alexnet": functools.partial(keras.applications.imagenet_utils.preprocess_input, mode="torch"),
}


@keras.saving.register_keras_serializable(package="metric_learning")
class ImageNetPreprocessing(keras.Layer):
    """The keras.applications `preprocess_input` of `network`, as a layer saved with the model.

    Args:
        network: "vgg16", "resnet50" or "alexnet"; inputs are RGB `[B, H, W, 3]` in [0, 255].
    """

    def __init__(self, network, **kwargs):
        super().__init__(**kwargs)
        if network not in _IMAGENET_PREPROCESSING:
            raise ValueError(
                f"ImageNetPreprocessing network must be one of {sorted(_IMAGENET_PREPROCESSING)}, "
                f"got {network!r}."
            )
        self.network = network

    def call(self, inputs):
        return _IMAGENET_PREPROCESSING[self.network](inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "network": self.network}


@keras.saving.register_keras_serializable(package="metric_learning")
class L2Normalize(keras.Layer):
    """`x / ‖x‖` along the last axis, zero-safe (see `model.distances.l2_normalize`); float32 by default."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        return l2_normalize(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def _input_shape(params):
    """`(H, W, C)` from `params.image_size` (int, [h, w] or None: any size) and `params.channels` (1 or 3)."""
    size = params.image_size
    if size is None:
        height = width = None
    elif isinstance(size, int):
        height = width = size
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        height, width = size
    else:
        raise ValueError(f"params.image_size must be an int, [height, width] or null, got {size!r}.")
    if params.channels not in (1, 3):
        raise ValueError(f"params.channels must be 1 or 3, got {params.channels!r}.")
    return (height, width, params.channels)


def _check_weights(params):
    """Validate `params.weights` for an ImageNet backbone: "imagenet", None or an existing file."""
    weights = params.weights
    if weights in ("imagenet", None):
        return weights
    if not isinstance(weights, (str, Path)):
        raise ValueError(
            f"params.weights must be 'imagenet', null or a path to a weights file, got {weights!r}."
        )
    if not Path(weights).is_file():
        raise FileNotFoundError(f"params.weights: backbone weights file not found: {weights}")
    return str(weights)


def _application(constructor, params, **kwargs):
    """`constructor(weights=..., **kwargs)` of keras.applications, with `params.weights` checked.

    Without the network (a machine offline, a proxy) the "imagenet" download fails deep inside Keras;
    it is reported as what it is, with the two ways on: random weights or a local weights file. A
    weights file that does not fit the network is reported by name, not by its arrays.
    """
    weights = _check_weights(params)
    try:
        return constructor(weights=weights, **kwargs)
    except Exception as error:  # noqa: BLE001 (urllib, HTTP, h5py and Keras errors all end here)
        name = constructor.__name__
        if weights == "imagenet":
            raise ValueError(
                f'params.weights is "imagenet" but the ImageNet weights of {name} could not be loaded '
                f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}). Offline? "
                f'Set "weights": null to train from a random initialisation, or "weights": "/path/to/the '
                f'{name} no-top weights file (.h5)" downloaded elsewhere.'
            ) from None
        if weights is not None:
            raise ValueError(
                f"params.weights: {weights} is not a weights file of keras.applications.{name} without its top "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''})"
            ) from None
        raise


def _rgb_shape(params, what):
    """Input shape for an ImageNet backbone, which needs 3 channels."""
    shape = _input_shape(params)
    if shape[-1] != 3:
        raise ValueError(f"{what} needs RGB images (params.channels = 3), got channels={shape[-1]}.")
    return shape


def _freeze_before(model, first_trainable):
    """Freeze every layer of `model` listed before the layer named `first_trainable`."""
    for layer in model.layers:
        if layer.name == first_trainable:
            return
        layer.trainable = False
    raise ValueError(f"Model '{model.name}' has no layer named '{first_trainable}'.")


def _conv_block(x, filters, params, name):
    """3×3 conv (same padding) → [batch norm (params.bn_momentum)] → ReLU → 2×2 max-pool."""
    x = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv")(x)
    if params.use_batch_norm:
        x = FusedBatchNormalization(momentum=params.bn_momentum, name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(x)


def build_mnist_convnet(params):
    """The convnet of the TensorFlow triplet-loss recipe (Moindrot, tensorflow-triplet-loss), which has two blocks.

    images [B, H, W, C] → /255 → block(num_channels) → block(2·num_channels) → … (params.conv_blocks blocks,
    block i with num_channels·2^i filters) → flatten → [dropout(params.dropout), training only]
    → dense(embedding_size) → [L2 normalisation if params.l2_normalize] → embeddings [B, E].
    """
    shape = _input_shape(params)
    if None in shape:
        raise ValueError(f"mnist_convnet needs a fixed params.image_size, got {params.image_size!r}.")
    if min(shape[:2]) < 2**params.conv_blocks:  # each block's 2×2 pool halves the image (rounding down)
        raise ValueError(
            f"mnist_convnet with conv_blocks={params.conv_blocks} halves the image {params.conv_blocks} times: "
            f"images of {shape[0]}×{shape[1]} pixels would vanish; expected at least {2**params.conv_blocks} "
            f"pixels per side (a larger image_size or fewer conv_blocks)."
        )
    inputs = keras.Input(shape, name="images")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block in range(params.conv_blocks):
        x = _conv_block(x, params.num_channels * 2**block, params, f"block{block + 1}")
    x = layers.Flatten(name="flatten")(x)
    if params.dropout:
        x = layers.Dropout(params.dropout, name="dropout")(x)
    outputs = layers.Dense(params.embedding_size, dtype="float32", name="embedding")(x)
    if params.l2_normalize:
        outputs = L2Normalize(name="l2_normalize")(outputs)
    return keras.Model(inputs, outputs, name="mnist_convnet")


def build_trinet(params):
    """TriNet (Hermans et al. 2017): the person re-identification embedding network.

    images [B, H, W, 3] → ResNet-50 preprocessing → ResNet-50 (no top, global average pooling,
    `params.weights`) [B, 2048] → dense 1024, no bias → batch norm (params.bn_momentum, ε = 1e-5)
    → ReLU → dense embedding_size, orthogonal initialisation → [L2 normalisation if params.l2_normalize;
    the paper has none] → [B, E].
    """
    shape = _rgb_shape(params, "trinet")
    resnet = _application(keras.applications.ResNet50, params, include_top=False, input_shape=shape, pooling="avg")
    inputs = keras.Input(shape, name="images")
    x = ImageNetPreprocessing("resnet50", name="preprocess")(inputs)
    x = resnet(x)
    x = layers.Dense(1024, use_bias=False, name="head_fc1024")(x)
    x = layers.BatchNormalization(momentum=params.bn_momentum, epsilon=1e-5, name="head_bn")(x)
    x = layers.ReLU(name="head_relu")(x)
    outputs = layers.Dense(
        params.embedding_size,
        kernel_initializer="orthogonal",
        dtype="float32",
        name="embedding",
    )(x)
    if params.l2_normalize:
        outputs = L2Normalize(name="l2_normalize")(outputs)
    return keras.Model(inputs, outputs, name="trinet")


def vgg16_backbone(params):
    """VGG16 cropped at conv5_3 *before* its ReLU (as in the NetVLAD paper): [B, H/16, W/16, 512].

    keras.applications' block5_conv3 has its ReLU fused in, so it is replaced by an identical linear
    convolution carrying the same weights. With pretrained weights, layers below conv5 are frozen
    (the paper trains conv5 onwards; pytorch-NetVlad does the same).
    """
    weights = _check_weights(params)
    shape = _rgb_shape(params, "the vgg16 backbone")
    vgg = _application(keras.applications.VGG16, params, include_top=False, input_shape=shape)
    fused = vgg.get_layer("block5_conv3")
    linear = layers.Conv2D(fused.filters, fused.kernel_size, padding="same", name="block5_conv3")
    features = linear(vgg.get_layer("block5_conv2").output)
    linear.set_weights(fused.get_weights())
    cropped = keras.Model(vgg.inputs, features, name="vgg16_conv5_3")
    if weights is not None:
        _freeze_before(cropped, "block5_conv1")
    return _with_preprocessing(cropped, shape, "vgg16")


def resnet50_backbone(params):
    """ResNet-50 cropped after its conv4 stage (conv4_block6_out): [B, H/16, W/16, 1024].

    With pretrained weights, layers below conv4 are frozen (only the last kept stage is fine-tuned,
    the analogue of training VGG16 from conv5).
    """
    weights = _check_weights(params)
    shape = _rgb_shape(params, "the resnet50 backbone")
    resnet = _application(keras.applications.ResNet50, params, include_top=False, input_shape=shape)
    cropped = keras.Model(resnet.inputs, resnet.get_layer("conv4_block6_out").output, name="resnet50_conv4")
    if weights is not None:
        _freeze_before(cropped, "conv4_block1_1_conv")
    return _with_preprocessing(cropped, shape, "resnet50")


def alexnet_backbone(params):
    """AlexNet's convolutional part cropped at conv5 *before* its ReLU (pytorch-NetVlad's --arch=alexnet,
    which drops the last ReLU and max-pool of torchvision's `alexnet().features`): [B, h, w, 256].

    torchvision's layers, channels-last: zero-pad 2 → conv1 64 11×11 stride 4 → ReLU → max-pool 3 stride 2
    → conv2 192 5×5 (pad 2) → ReLU → max-pool 3/2 → conv3 384 3×3 (pad 1) → ReLU → conv4 256 3×3 → ReLU
    → conv5 256 3×3, linear; h = ⌊(⌊(⌊(H − 7) / 4⌋ + 1 − 3) / 2⌋ + 1 − 3) / 2⌋ + 1 (13 for 224).
    keras.applications has no AlexNet, so `params.weights` is null (random) or a file written by
    `save_weights` of this cropped model (e.g. torchvision's weights converted, kernels transposed to
    [kh, kw, in, out]); "imagenet" is refused. With a weights file, only conv5 trains (as in pytorch-NetVlad).
    """
    if params.weights == "imagenet":
        raise ValueError(
            'params.weights = "imagenet" is not available for backbone "alexnet" (keras.applications has no '
            "AlexNet): set weights to null (random initialisation) or to a .weights.h5 file of the alexnet backbone."
        )
    weights = _check_weights(params)
    shape = _rgb_shape(params, "the alexnet backbone")
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
        _freeze_before(cropped, "conv5")
    return _with_preprocessing(cropped, shape, "alexnet")


def small_backbone(params):
    """A small convnet for tests and small images: [B, H/4, W/4, 4·num_channels].

    /255 → block(num_channels) → block(2·num_channels) → 3×3 conv(4·num_channels), linear like the
    VGG16 crop (NetVLAD sees signed features). It has no pretrained weights: a weights file is an error,
    and "imagenet" (the default of params.weights) is ignored with a warning.
    """
    if params.weights not in (None, "imagenet"):
        raise ValueError(f"params.weights is {params.weights!r}, but the small backbone has no pretrained weights to "
                         'load: set "weights": null, or choose backbone vgg16 or resnet50')
    if params.weights == "imagenet":
        warnings.warn('the small backbone has no ImageNet weights: "weights": "imagenet" is ignored (random '
                      'initialisation); set "weights": null to say so', stacklevel=2)
    inputs = keras.Input(_input_shape(params), name="images")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = _conv_block(x, params.num_channels, params, "block1")
    x = _conv_block(x, 2 * params.num_channels, params, "block2")
    features = layers.Conv2D(4 * params.num_channels, 3, padding="same", name="features")(x)
    return keras.Model(inputs, features, name="backbone")


def _with_preprocessing(cropped, shape, network):
    """Backbone model: raw images → ImageNet preprocessing of `network` → `cropped` feature map."""
    inputs = keras.Input(shape, name="images")
    features = cropped(ImageNetPreprocessing(network, name="preprocess")(inputs))
    return keras.Model(inputs, features, name="backbone")


BACKBONES = {
    "vgg16": vgg16_backbone,
    "resnet50": resnet50_backbone,
    "small": small_backbone,
    "alexnet": alexnet_backbone,
}
# pytorch-NetVlad's --pooling besides NetVLAD: global pooling of the feature map [B, h, w, D] → [B, D], then
# L2 normalisation. Computed in float32, like the NetVLAD layer, under a mixed-precision policy.
GLOBAL_POOLINGS = {"max": layers.GlobalMaxPooling2D, "avg": layers.GlobalAveragePooling2D}
POOLINGS = ("netvlad", *GLOBAL_POOLINGS)


def build_netvlad(params):
    """NetVLAD network (Arandjelović et al. 2016), or its backbone with global pooling (pytorch-NetVlad).

    params.pooling "netvlad": images → backbone (params.backbone) [B, h, w, D] → NetVLAD(num_clusters,
    vladv2), layer name "netvlad" [B, K·D] → if params.netvlad_dim: dense "whitening" [B, netvlad_dim], not
    trainable (fitted by `model.netvlad_fitting.fit_whitening` after training) → L2 normalisation. The
    NetVLAD layer must be initialised by the cluster step (`model.netvlad_fitting.cluster_netvlad`) before
    training.
    params.pooling "max" / "avg": images → backbone [B, h, w, D] → global max / average pooling, layer
    name "pooling" [B, D] → L2 normalisation (pytorch-NetVlad's pool: AdaptiveMax/AvgPool2d, Flatten, L2Norm);
    no cluster step and no whitening (netvlad_dim must be None: the source has no PCA for them).
    """
    if params.backbone not in BACKBONES:
        raise ValueError(
            f"Unknown params.backbone {params.backbone!r}; valid backbones: {sorted(BACKBONES)}."
        )
    if params.pooling not in POOLINGS:
        raise ValueError(f"Unknown params.pooling {params.pooling!r}; valid poolings: {list(POOLINGS)}.")
    if params.pooling != "netvlad" and params.netvlad_dim is not None:
        raise ValueError(
            f"params.netvlad_dim={params.netvlad_dim} whitens NetVLAD descriptors; with pooling "
            f"{params.pooling!r} set it to null."
        )
    backbone = BACKBONES[params.backbone](params)
    inputs = keras.Input(backbone.input_shape[1:], name="images")
    features = backbone(inputs)
    if params.pooling != "netvlad":
        pooled = GLOBAL_POOLINGS[params.pooling](dtype="float32", name="pooling")(features)
        outputs = L2Normalize(name="l2_normalize")(pooled)
        return keras.Model(inputs, outputs, name=f"{params.pooling}_pooling")
    outputs = NetVLAD(params.num_clusters, vladv2=params.vladv2, name=NETVLAD_LAYER)(features)
    if params.netvlad_dim is not None:
        # Not trained: fitted after training by PCA-whitening (model.netvlad_fitting.fit_whitening).
        outputs = layers.Dense(params.netvlad_dim, dtype="float32", trainable=False, name=WHITENING_LAYER)(outputs)
        outputs = L2Normalize(name="l2_normalize")(outputs)
    return keras.Model(inputs, outputs, name="netvlad")


MODELS = {"mnist_convnet": build_mnist_convnet, "trinet": build_trinet, "netvlad": build_netvlad}


def build_model(params):
    """Build the embedding network named by `params.model` (a key of `MODELS`).

    Args:
        params: any object with the attributes listed in the module docstring.

    Returns:
        keras.Model: images [B, H, W, C] in [0, 255] → embeddings [B, E], float32.

    Raises:
        ValueError: for an unknown model name (the message lists the valid ones) or bad params.
    """
    if params.model not in MODELS:
        raise ValueError(f"Unknown params.model {params.model!r}; valid models: {sorted(MODELS)}.")
    return MODELS[params.model](params)
