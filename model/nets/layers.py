"""The layers the networks add around Keras's own, registered so that a saved `.keras` file loads by itself."""

import functools

import keras

from model.ops import l2_normalize
from model.registry import KERAS_PACKAGE

# keras.applications preprocessing of each ImageNet backbone: VGG16 and ResNet-50 are "caffe" mode
# (RGB → BGR, minus the ImageNet mean pixel, no scaling); AlexNet's torchvision weights expect "torch"
# mode (/255, minus the ImageNet mean, divided by its standard deviation, RGB), as pytorch-NetVlad feeds it.
_IMAGENET_PREPROCESSING = {
    "vgg16": keras.applications.vgg16.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
    "alexnet": functools.partial(keras.applications.imagenet_utils.preprocess_input, mode="torch"),
}


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
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


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class L2Normalize(keras.Layer):
    """`x / ‖x‖` along the last axis, zero-safe (see `model.ops.l2_normalize`); float32 by default."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs):
        return l2_normalize(inputs, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

