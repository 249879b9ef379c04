"""The re-ID strong baseline's network (Luo, Gu, Liao, Lai and Jiang, "Bag of Tricks and A Strong Baseline for
Deep Person Re-identification", CVPRW 2019), the "bot" family.

    network = bot(image_size=[256, 128], weights="imagenet")          # images -> what evaluation sees
    f_t, f_i = NETWORKS["bot"].trained_part(network)(images)        # what the losses see in training

images [B, H, W, 3] → ResNet-50 preprocessing → ResNet-50 without its top, conv5 at stride `last_stride`
(1: a 16 × 8 feature map at 256 × 128, twice ResNet-50's own) → global average pooling: f_t [B, 2048], the
features of the metric (triplet) and center losses → BNNeck: batch normalisation without a learned shift
(`bnneck`): f_i [B, 2048], the features of the ID loss (a bias-free classifier beside it in training,
params.json's "classification") and of evaluation → [L2 normalisation (`feature_norm`): evaluation, export
and search then rank by cosine distance] → [B, 2048].

The saved network is images → f_i (normalised): what evaluate.py, export.py and search.py see. Training
optimises its trained part, images → (f_t, f_i) (`bnneck_part`), which gives each loss its features
(`model.training.model.EmbeddingModel`). Without the BNNeck, f_i = f_t: every loss and evaluation see the
pooled features (the paper's baseline).
"""

import keras
from keras import layers

from model.nets.applications import application, rgb_shape
from model.nets.family import BN_MOMENTUM, WEIGHTS, register_network
from model.nets.layers import ImageNetPreprocessing, L2Normalize
from model.registry import BOOL, INT, Option, OptionError

FEATURES, NECK = "features", "bnneck"  # the layers of f_t and f_i


def resnet50_last_stride(weights="imagenet", last_stride=1):
    """keras.applications' ResNet-50 without its top, for any input size, with conv5's stride `last_stride`.

    With stride 1 the network is cloned with conv5_block1's two stride-2 convolutions (the block's first 1×1
    convolution and its shortcut) at stride 1, and the weights are copied: a convolution's weights do not
    depend on its stride. The layers keep their names.

    Args:
        weights: "imagenet", None (random) or a ResNet-50 no-top weights file (`model.nets.applications`).
        last_stride: 1 or 2 (ResNet-50's own).

    Returns:
        keras.Model "resnet50": preprocessed images [B, H, W, 3] → feature map [B, H/16, W/16, 2048] with
        stride 1 (H/32, W/32 with 2).
    """
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    resnet = application(keras.applications.ResNet50, weights, include_top=False, input_shape=(None, None, 3))
    if last_stride == 2:
        return resnet

    def restride(layer):
        config = layer.get_config()
        if layer.name.startswith("conv5_block1_") and tuple(config.get("strides", (1, 1))) == (2, 2):
            config["strides"] = (last_stride, last_stride)
        return layer.__class__.from_config(config)

    strided = keras.models.clone_model(resnet, clone_function=restride)
    strided.set_weights(resnet.get_weights())
    return strided


def _check_last_stride(value):
    if value not in (1, 2):
        raise OptionError("last_stride", value, "1 (the strong baseline: a 16 × 8 feature map at 256 × 128) or 2 "
                                                "(ResNet-50's own)")


LAST_STRIDE = Option("last_stride", (INT,), 1, "bot: stride of ResNet-50's conv5, 1 (a 16 × 8 feature map at "
                     "256 × 128) or 2 (ResNet-50's own)", check=_check_last_stride)
BNNECK = Option("bnneck", (BOOL,), True, "bot: BNNeck, a batch norm without shift between the metric loss's "
                "features and those of the ID loss and evaluation (false: all on the pooled features)")
FEATURE_NORM = Option("feature_norm", (BOOL,), True, "bot: the saved network L2-normalises its features, so "
                      "evaluation, export and search rank by cosine distance (false: euclidean)")


def bnneck_part(network):
    """The part of a bot network that training optimises: images → (f_t, f_i), or images → f_t without a BNNeck."""
    features = network.get_layer(FEATURES).output
    try:
        neck = network.get_layer(NECK).output
    except ValueError:  # no BNNeck: one feature for every loss
        return keras.Model(network.input, features, name="bot_trained")
    return keras.Model(network.input, [features, neck], name="bot_trained")


@register_network("bot", options=(BN_MOMENTUM, WEIGHTS, LAST_STRIDE, BNNECK, FEATURE_NORM), channels=3,
                  trained_part=bnneck_part)
def bot(*, image_size, channels=3, weights="imagenet", last_stride=1, bnneck=True, feature_norm=True,
        bn_momentum=0.9):
    """The strong baseline's network (see the module docstring).

    Args:
        image_size: int or [h, w] (the paper: [256, 128]), or None for any size.
        channels: 3 (ImageNet backbones read RGB).
        weights: "imagenet", None (random) or a ResNet-50 no-top weights file.
        last_stride: conv5's stride, 1 or 2.
        bnneck: the BNNeck (batch normalisation without shift, ε = 1e-5) after the pooling.
        feature_norm: L2-normalise the output (cosine ranking).
        bn_momentum: momentum of the BNNeck's moving statistics (0.9 is PyTorch's default 0.1).

    Returns:
        keras.Model named "bot": images [B, H, W, 3] in [0, 255] → f_i (or f_t) [B, 2048] float32.
    """
    shape = rgb_shape(image_size, channels, "bot")
    backbone = resnet50_last_stride(weights, last_stride)
    inputs = keras.Input(shape, name="images")
    x = backbone(ImageNetPreprocessing("resnet50", name="preprocess")(inputs))
    outputs = layers.GlobalAveragePooling2D(dtype="float32", name=FEATURES)(x)  # f_t
    if bnneck:  # f_i; no learned shift (center=False), as the paper's neck whose bias is frozen at 0
        outputs = layers.BatchNormalization(center=False, momentum=bn_momentum, epsilon=1e-5, dtype="float32",
                                            name=NECK)(outputs)
    if feature_norm:
        outputs = L2Normalize(name="l2_normalize")(outputs)
    return keras.Model(inputs, outputs, name="bot")
