"""What the builders share: input shapes, keras.applications backbones and their weights, freezing.

Every network maps images `[B, H, W, C]`, float32 in [0, 255], channels-last, to embeddings `[B, E]`.
`image_size` is an int, `[height, width]`, or None (any size, where the network allows it); `channels`
is 1 or 3. `weights` of an ImageNet backbone is "imagenet", None (random) or the path of a weights file.
"""

import warnings
from pathlib import Path

import keras

from model.nets.layers import ImageNetPreprocessing


def input_shape(image_size, channels):
    """`(H, W, C)` from `image_size` (int, [h, w] or None: any size) and `channels` (1 or 3)."""
    if image_size is None:
        height = width = None
    elif isinstance(image_size, int):
        height = width = image_size
    elif isinstance(image_size, (list, tuple)) and len(image_size) == 2:
        height, width = image_size
    else:
        raise ValueError(f"image_size must be an int, [height, width] or null, got {image_size!r}.")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}.")
    return (height, width, channels)


def rgb_shape(image_size, channels, what):
    """Input shape for an ImageNet backbone, which needs 3 channels."""
    shape = input_shape(image_size, channels)
    if shape[-1] != 3:
        raise ValueError(f"{what} needs RGB images (channels = 3), got channels={shape[-1]}.")
    return shape


def check_weights(weights):
    """Validate `weights` for an ImageNet backbone: "imagenet", None or an existing file."""
    if weights in ("imagenet", None):
        return weights
    if not isinstance(weights, (str, Path)):
        raise ValueError(f"weights must be 'imagenet', null or a path to a weights file, got {weights!r}.")
    if not Path(weights).is_file():
        raise FileNotFoundError(f"weights: backbone weights file not found: {weights}")
    return str(weights)


def _first_line(error):
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def application(constructor, weights, **kwargs):
    """`constructor(weights=..., **kwargs)` of keras.applications, with `weights` checked.

    Without the network (a machine offline, a proxy) the "imagenet" download fails deep inside Keras;
    it is reported as what it is, with the two ways on: random weights or a local weights file. A
    weights file that does not fit the network is reported by name, not by its arrays, nor after Keras's
    warnings about each layer it could not fill.
    """
    weights = check_weights(weights)
    try:
        # Keras warns once per layer it cannot fill from a foreign file (about 200 lines for ResNet-50) before it
        # fails: those warnings are held back, and passed on only when the network loads.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            network = constructor(weights=weights, **kwargs)
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        return network
    except Exception as error:  # noqa: BLE001 (urllib, HTTP, h5py and Keras errors all end here)
        name = constructor.__name__
        if weights == "imagenet":
            raise ValueError(
                f'weights is "imagenet" but the ImageNet weights of {name} could not be loaded ({_first_line(error)}). '
                f'Offline? Set "weights": null to train from a random initialisation, or "weights": "/path/to/the '
                f'{name} no-top weights file (.h5)" downloaded elsewhere.'
            ) from None
        if weights is not None:
            raise ValueError(f"weights: {weights} is not a weights file of keras.applications.{name} without its top "
                             f"({_first_line(error)})") from None
        raise


def freeze_before(model, first_trainable):
    """Freeze every layer of `model` listed before the layer named `first_trainable`."""
    for layer in model.layers:
        if layer.name == first_trainable:
            return
        layer.trainable = False
    raise ValueError(f"Model '{model.name}' has no layer named '{first_trainable}'.")


def with_preprocessing(cropped, shape, network):
    """Backbone model: raw images → ImageNet preprocessing of `network` → `cropped` feature map."""
    inputs = keras.Input(shape, name="images")
    features = cropped(ImageNetPreprocessing(network, name="preprocess")(inputs))
    return keras.Model(inputs, features, name="backbone")

