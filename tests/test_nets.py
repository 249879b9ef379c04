"""Tests for model/nets/: every builder's shapes and structure, the MNIST convnet against a numpy
forward pass, ImageNet preprocessing against the documented formula, `.keras` round trips, and
mixed precision. ResNet-50 and VGG16 models are built once per module (slow on CPU)."""


import keras
import numpy as np
import pytest

from model import nets
from model.nets.backbones import alexnet_backbone
from model.nets.netvlad_layer import NetVLAD
from tests.fixtures import build_small

IMAGENET_MEAN_BGR = np.array([103.939, 116.779, 123.68])




def random_images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=shape).astype(np.float32)


def caffe_preprocess(images):
    """keras.applications 'caffe' preprocessing written out: RGB → BGR, minus the ImageNet mean."""
    return images[..., ::-1] - IMAGENET_MEAN_BGR


def assert_save_load_identical(model, images, tmp_path):
    path = tmp_path / f"{model.name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded(images), model(images))


@pytest.fixture(scope="module")
def trinet():
    return build_small("trinet", image_size=[64, 32], embedding_size=128)


@pytest.fixture(scope="module")
def netvlad_resnet50():
    return build_small(backbone="resnet50", num_clusters=2)


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


# ---------------------------------------------------------------- registry and arguments


def test_unknown_model_lists_valid_names():
    message = r"Unknown network 'resnet'\. Valid networks: mnist_convnet, trinet, netvlad, bot\."
    with pytest.raises(ValueError, match=message):
        build_small("resnet")


def test_unknown_backbone_lists_valid_names():
    message = r"Unknown backbone 'googlenet'\. Valid backbones: vgg16, resnet50, small, alexnet\."
    with pytest.raises(ValueError, match=message):
        build_small(backbone="googlenet")


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (dict(image_size=[32, 32, 3]), ValueError, "image_size"),
        (dict(model="mnist_convnet", image_size=None), ValueError, "mnist_convnet needs a fixed image_size"),
        (dict(model="mnist_convnet", image_size=[None, 28]), ValueError, "mnist_convnet needs a fixed image_size"),
        (dict(channels=2), ValueError, "channels must be 1 or 3"),
        (dict(model="trinet", channels=1), ValueError, "trinet needs RGB"),
        (dict(backbone="vgg16", channels=1), ValueError, "vgg16 backbone needs RGB"),
        (dict(backbone="vgg16", weights="missing/vgg.weights.h5"), FileNotFoundError, "missing"),
        (dict(model="trinet", weights=3), ValueError, "weights must be 'imagenet'"),
        (dict(pooling="sum"), ValueError, "Unknown pooling 'sum'.*netvlad.*max.*avg"),
        (dict(pooling="max", netvlad_dim=4), ValueError, "netvlad_dim=4.*pooling 'max'"),
        (dict(backbone="alexnet", weights="imagenet"), ValueError, '"imagenet" is not available.*"alexnet"'),
        (dict(backbone="alexnet", channels=1), ValueError, "alexnet backbone needs RGB"),
        (dict(backbone="alexnet", weights="missing/alexnet.weights.h5"), FileNotFoundError, "missing"),
    ],
)
def test_bad_params(overrides, error, message):
    with pytest.raises(error, match=message):
        build_small(**overrides)


# ---------------------------------------------------------------- mnist_convnet


def conv3x3_same(x, kernel, bias):
    """x: [B, H, W, C], kernel: [3, 3, C, F] → [B, H, W, F], zero padding of 1."""
    height, width = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros(x.shape[:3] + kernel.shape[-1:]) + bias
    for di in range(3):
        for dj in range(3):
            out += padded[:, di : di + height, dj : dj + width] @ kernel[di, dj]
    return out


def max_pool_2x2(x):
    b, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def numpy_mnist_convnet(model, images, use_batch_norm, normalize, conv_blocks=2):
    """The recipe's forward pass in numpy with the model's weights (batch norm in inference mode, no dropout)."""
    x = images.astype(np.float64) / 255.0
    for block in range(1, conv_blocks + 1):
        x = conv3x3_same(x, *model.get_layer(f"block{block}_conv").get_weights())
        if use_batch_norm:
            bn = model.get_layer(f"block{block}_bn")
            gamma, beta, mean, variance = bn.get_weights()
            x = (x - mean) / np.sqrt(variance + bn.epsilon) * gamma + beta
        x = max_pool_2x2(np.maximum(x, 0.0))
    kernel, bias = model.get_layer("embedding").get_weights()
    out = x.reshape(len(x), -1) @ kernel + bias
    return out / np.linalg.norm(out, axis=1, keepdims=True) if normalize else out


@pytest.mark.parametrize(
    "use_batch_norm, normalize, conv_blocks, dropout",
    [(False, False, 2, 0.0), (True, True, 2, 0.0), (True, False, 3, 0.5)],
)
def test_mnist_convnet_matches_numpy(use_batch_norm, normalize, conv_blocks, dropout):
    model = build_small(
        "mnist_convnet", image_size=28, channels=1, num_channels=4, conv_blocks=conv_blocks, dropout=dropout,
        use_batch_norm=use_batch_norm, bn_momentum=0.7, embedding_size=6, l2_normalize=normalize,
    )  # fmt: skip
    rng = np.random.default_rng(1)
    blocks = [f"block{block}" for block in range(1, conv_blocks + 1)]
    if use_batch_norm:  # non-trivial moving statistics, so inference mode is really exercised
        for block in blocks:
            bn = model.get_layer(f"{block}_bn")
            assert bn.momentum == 0.7
            shapes = [w.shape for w in bn.get_weights()]
            bn.set_weights([rng.uniform(0.5, 2.0, s).astype(np.float32) for s in shapes])
    assert [model.get_layer(f"{block}_conv").filters for block in blocks] == [4 * 2**i for i in range(conv_blocks)]
    side = 28 // 2**conv_blocks  # 28 → 14 → 7 → 3
    assert model.get_layer("embedding").kernel.shape == (side * side * 4 * 2 ** (conv_blocks - 1), 6)
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == (
        [dropout] if dropout else []
    )
    images = random_images((3, 28, 28, 1))
    output = model(images)
    assert output.shape == (3, 6) and output.dtype == "float32"
    expected = numpy_mnist_convnet(model, images, use_batch_norm, normalize, conv_blocks)
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)


def test_mnist_convnet_dropout_drops_features_before_the_embedding_in_training_only():
    """Output j = feature j + feature j + 32 (ones in the embedding kernel): in training each feature is dropped
    (0) or kept and scaled by 1 / (1 - rate), independently, so the output is one of four sums with the chances
    of two independent drops; in inference both are kept as is. Dropout after the embedding would drop both or
    none."""
    rate = 0.25
    model = build_small("mnist_convnet", image_size=8, channels=1, num_channels=8, dropout=rate,
                        embedding_size=32)  # features: 2 × 2 × 16 = 64
    for block in ("block1", "block2"):  # positive kernels on positive images: every feature positive
        conv = model.get_layer(f"{block}_conv")
        kernel, bias = conv.get_weights()
        conv.set_weights([np.abs(kernel), bias])
    kernel = np.zeros((64, 32), np.float32)
    kernel[np.arange(32), np.arange(32)] = kernel[np.arange(32, 64), np.arange(32)] = 1.0
    model.get_layer("embedding").set_weights([kernel, np.zeros(32, np.float32)])
    images = random_images((64, 8, 8, 1))
    features = np.asarray(keras.Model(model.input, model.get_layer("flatten").output)(images))
    assert np.all(features > 0)
    first, second = features[:, :32], features[:, 32:]
    np.testing.assert_allclose(model(images, training=False), first + second, rtol=1e-5)
    trained = np.asarray(model(images, training=True)) * (1 - rate)
    sums = {"both dropped": 0 * first, "first kept": first, "second kept": second, "both kept": first + second}
    matches = {name: np.isclose(trained, value, rtol=1e-4) for name, value in sums.items()}
    assert np.all(sum(matches.values()) == 1)  # every output is exactly one of the four sums
    expected = {"both dropped": rate**2, "first kept": rate * (1 - rate), "second kept": rate * (1 - rate),
                "both kept": (1 - rate) ** 2}  # fmt: skip
    for name, chance in expected.items():  # 2,048 outputs: standard deviations of the fractions below 0.011
        assert abs(matches[name].mean() - chance) < 0.04, (name, matches[name].mean(), chance)


def test_mnist_convnet_refuses_images_its_blocks_would_pool_away():
    with pytest.raises(ValueError, match=r"conv_blocks=3 .* 28×4 pixels .* at least 8 pixels per side"):
        build_small("mnist_convnet", image_size=[28, 4], channels=1, conv_blocks=3)
    assert build_small("mnist_convnet", image_size=8, channels=1, conv_blocks=3).output_shape


def test_mnist_convnet_save_load(tmp_path):
    model = build_small("mnist_convnet", image_size=28, channels=1, use_batch_norm=True, l2_normalize=True)
    assert_save_load_identical(model, random_images((2, 28, 28, 1)), tmp_path)


def test_mixed_precision_outputs_float32(mixed_precision):
    mnist = build_small("mnist_convnet", image_size=28, channels=1)
    assert mnist.get_layer("block1_conv").compute_dtype == "float16"
    assert mnist(random_images((2, 28, 28, 1))).dtype == "float32"
    model = build_small(netvlad_dim=2)
    assert model.get_layer("netvlad").compute_dtype == "float32"
    output = model(random_images((3, 32, 32, 3)))
    assert output.dtype == "float32"
    np.testing.assert_allclose(np.linalg.norm(output, axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- trinet


def test_imagenet_preprocessing_layer():
    images = random_images((2, 5, 4, 3))
    np.testing.assert_allclose(
        nets.ImageNetPreprocessing("resnet50")(images), caffe_preprocess(images), atol=1e-4
    )
    with pytest.raises(ValueError, match="'inception'"):
        nets.ImageNetPreprocessing("inception")


def test_trinet_structure_and_output(trinet):
    assert trinet.input_shape == (None, 64, 32, 3)
    assert trinet.get_layer("resnet50").output_shape == (None, 2048)  # global average pooling
    fc = trinet.get_layer("head_fc1024")
    assert fc.units == 1024 and not fc.use_bias
    bn = trinet.get_layer("head_bn")
    assert (bn.momentum, bn.epsilon) == (0.9, 1e-5)
    kernel = np.asarray(trinet.get_layer("embedding").kernel)  # [1024, 128], orthonormal columns
    np.testing.assert_allclose(kernel.T @ kernel, np.eye(128), atol=1e-5)
    output = trinet(random_images((2, 64, 32, 3)))
    assert output.shape == (2, 128) and output.dtype == "float32"
    assert np.all(np.isfinite(output))


def test_trinet_save_load(trinet, tmp_path):
    assert_save_load_identical(trinet, random_images((2, 64, 32, 3)), tmp_path)


# ---------------------------------------------------------------- netvlad


def test_netvlad_small_shapes_and_unknown_size():
    model = build_small(image_size=None, num_clusters=3)
    assert model.output_shape == (None, 3 * 16)
    assert isinstance(model.get_layer("netvlad"), NetVLAD)
    for height, width in [(32, 32), (24, 40)]:
        output = model(random_images((2, height, width, 3)))
        assert output.shape == (2, 48)
        np.testing.assert_allclose(np.linalg.norm(output, axis=1), 1.0, rtol=1e-5)


def test_netvlad_small_with_whitening_save_load(tmp_path):
    model = build_small(netvlad_dim=5, vladv2=True, use_batch_norm=True)
    assert model.get_layer("netvlad").vladv2
    assert model.get_layer("whitening").kernel.shape == (3 * 16, 5)
    images = random_images((2, 32, 32, 3))
    output = model(images)
    assert output.shape == (2, 5)
    np.testing.assert_allclose(np.linalg.norm(output, axis=1), 1.0, rtol=1e-5)
    assert_save_load_identical(model, images, tmp_path)


def test_netvlad_vgg16_from_weights_file(tmp_path):
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights_path = tmp_path / "vgg16_notop.weights.h5"
    reference.save_weights(weights_path)
    model = build_small(backbone="vgg16", weights=str(weights_path))
    assert model.output_shape == (None, 3 * 512)
    cropped = model.get_layer("backbone").get_layer("vgg16_conv5_3")
    for name in ("block1_conv1", "block4_conv3", "block5_conv3"):
        ours, theirs = cropped.get_layer(name).get_weights(), reference.get_layer(name).get_weights()
        for our_weight, their_weight in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(our_weight, their_weight)
    # Pretrained: frozen below conv5 (paper), conv5 and NetVLAD trainable.
    assert not cropped.get_layer("block4_conv3").trainable
    assert cropped.get_layer("block5_conv1").trainable and cropped.get_layer("block5_conv3").trainable
    assert model.get_layer("netvlad").trainable
    # Features are conv5_3 before its ReLU, on caffe-preprocessed images.
    images = random_images((2, 32, 32, 3))
    features = np.asarray(model.get_layer("backbone")(images))  # [2, 2, 2, 512]
    conv5_3 = keras.Model(reference.input, reference.get_layer("block5_conv3").output)
    expected = np.asarray(conv5_3(caffe_preprocess(images).astype(np.float32)))  # with its ReLU
    assert features.min() < 0
    np.testing.assert_allclose(np.maximum(features, 0), expected, rtol=1e-4, atol=1e-3)
    assert_save_load_identical(model, images, tmp_path)


def test_netvlad_vgg16_random_weights_all_trainable():
    model = build_small(backbone="vgg16", image_size=[48, 32])
    assert model.output_shape == (None, 3 * 512)
    assert all(layer.trainable for layer in model.get_layer("backbone").get_layer("vgg16_conv5_3").layers)
    assert model(random_images((1, 48, 32, 3))).shape == (1, 1536)


def test_netvlad_resnet50(netvlad_resnet50, tmp_path):
    assert netvlad_resnet50.output_shape == (None, 2 * 1024)  # conv4_block6_out has 1024 channels
    cropped = netvlad_resnet50.get_layer("backbone").get_layer("resnet50_conv4")
    assert cropped.output_shape == (None, 2, 2, 1024)  # stride 16
    names = [layer.name for layer in cropped.layers]
    assert names[-1] == "conv4_block6_out" and not any(name.startswith("conv5") for name in names)
    first_conv4 = names.index("conv4_block1_1_conv")  # where pretrained freezing stops
    assert not any(name.startswith("conv4") for name in names[:first_conv4])
    images = random_images((2, 32, 32, 3))
    output = netvlad_resnet50(images)
    np.testing.assert_allclose(np.linalg.norm(output, axis=1), 1.0, rtol=1e-5)
    assert_save_load_identical(netvlad_resnet50, images, tmp_path)


# ---------------------------------------------------------------- global pooling (pytorch-NetVlad --pooling)


@pytest.mark.parametrize("pooling, reduce", [("max", np.max), ("avg", np.mean)])
def test_global_pooling_matches_numpy(pooling, reduce, tmp_path):
    model = build_small(pooling=pooling, image_size=None)
    assert model.output_shape == (None, 16)  # the small backbone's D = 4 · num_channels, no clusters
    assert not any(isinstance(layer, NetVLAD) for layer in model.layers)
    for height, width in [(32, 32), (24, 40)]:
        images = random_images((3, height, width, 3), seed=height)
        features = np.asarray(model.get_layer("backbone")(images), dtype=np.float64)  # [3, h, w, 16]
        pooled = reduce(features, axis=(1, 2))
        expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        np.testing.assert_allclose(model(images), expected, rtol=1e-5, atol=1e-6)
    assert_save_load_identical(model, random_images((2, 32, 32, 3)), tmp_path)


def test_global_pooling_is_float32_under_mixed_precision(mixed_precision):
    model = build_small(pooling="avg")
    assert model.get_layer("pooling").compute_dtype == "float32"
    output = model(random_images((2, 32, 32, 3)))
    assert output.dtype == "float32"
    np.testing.assert_allclose(np.linalg.norm(output, axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- alexnet


def conv2d(x, kernel, bias, stride=1, pad=0):
    """x: [B, H, W, C], kernel: [k, k, C, F] → [B, H', W', F], zero padding `pad`, like torch.nn.Conv2d."""
    k = kernel.shape[0]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    height, width = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros((len(x), height, width, kernel.shape[-1])) + bias
    for di in range(k):
        for dj in range(k):
            window = x[:, di : di + stride * (height - 1) + 1 : stride, dj : dj + stride * (width - 1) + 1 : stride]
            out += window @ kernel[di, dj]
    return out


def max_pool_3x3_stride_2(x):
    """torch.nn.MaxPool2d(3, 2): no padding, floor."""
    height, width = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    windows = [x[:, di : di + 2 * height - 1 : 2, dj : dj + 2 * width - 1 : 2] for di in range(3) for dj in range(3)]
    return np.max(windows, axis=0)


def numpy_alexnet_features(backbone, images):
    """torchvision's `alexnet().features[:-2]` (pytorch-NetVlad --arch=alexnet) in float64 numpy, on
    torch-mode preprocessed images, with the backbone's weights."""
    x = (images / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    cropped = backbone.get_layer("alexnet_conv5")
    weights = {name: cropped.get_layer(name).get_weights() for name in ("conv1", "conv2", "conv3", "conv4", "conv5")}
    x = max_pool_3x3_stride_2(np.maximum(conv2d(x, *weights["conv1"], stride=4, pad=2), 0))
    x = max_pool_3x3_stride_2(np.maximum(conv2d(x, *weights["conv2"], pad=2), 0))
    x = np.maximum(conv2d(x, *weights["conv3"], pad=1), 0)
    x = np.maximum(conv2d(x, *weights["conv4"], pad=1), 0)
    return conv2d(x, *weights["conv5"], pad=1)  # the last ReLU and max-pool are cropped


def test_alexnet_backbone_matches_numpy_torchvision_features():
    model = build_small(backbone="alexnet", image_size=[67, 75])
    backbone = model.get_layer("backbone")
    # torchvision's shapes: 11×11 stride 4 pad 2 → 16×18, pool → 7×8, pool → 3×3.
    assert backbone.output_shape == (None, 3, 3, 256) and model.output_shape == (None, 3 * 256)
    filters = [backbone.get_layer("alexnet_conv5").get_layer(f"conv{i}").filters for i in range(1, 6)]
    assert filters == [64, 192, 384, 256, 256]
    assert all(layer.trainable for layer in backbone.get_layer("alexnet_conv5").layers)  # random weights
    images = random_images((2, 67, 75, 3))
    features = np.asarray(backbone(images))
    expected = numpy_alexnet_features(backbone, images.astype(np.float64))
    assert features.min() < 0  # conv5 before its ReLU
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_alexnet_from_weights_file_trains_conv5_only(tmp_path):
    reference = alexnet_backbone(image_size=64, channels=3, weights=None)
    weights_path = tmp_path / "alexnet.weights.h5"
    reference.get_layer("alexnet_conv5").save_weights(weights_path)
    model = build_small(backbone="alexnet", image_size=64, weights=str(weights_path), pooling="max")
    cropped = model.get_layer("backbone").get_layer("alexnet_conv5")
    for name in ("conv1", "conv3", "conv5"):
        ours, theirs = cropped.get_layer(name).get_weights(), reference.get_layer("alexnet_conv5").get_layer(name)
        for our_weight, their_weight in zip(ours, theirs.get_weights(), strict=True):
            np.testing.assert_array_equal(our_weight, their_weight)
    assert [layer.name for layer in cropped.layers if layer.trainable] == ["conv5"]  # as pytorch-NetVlad
    images = random_images((2, 64, 64, 3))
    np.testing.assert_allclose(model(images), keras.ops.normalize(keras.ops.max(reference(images), axis=(1, 2))),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert_save_load_identical(model, images, tmp_path)


def test_the_small_backbone_says_it_has_no_pretrained_weights(tmp_path):
    with pytest.warns(UserWarning, match='"imagenet" is ignored'):
        build_small(weights="imagenet")
    weights = tmp_path / "backbone.h5"
    weights.write_bytes(b"")
    with pytest.raises(ValueError, match="small backbone has no pretrained weights"):
        build_small(weights=str(weights))
