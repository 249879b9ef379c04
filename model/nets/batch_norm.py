"""Batch normalisation whose training step is one fused kernel on the TensorFlow backend.

Training mode normalises each channel of `x: [B, H, W, C]` by its batch statistics over B·H·W:

    y = γ · (x − μ) / sqrt(σ² + ε) + β,        μ, σ² = mean and (biased) variance of x per channel,

and updates the moving statistics used at inference: m ← momentum·m + (1 − momentum)·μ (same for σ²).
Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift" (ICML 2015).

Why a layer of our own: Keras 3's `BatchNormalization` builds this from separate ops on every
backend (the mean, the mean squared deviation, then the scale and shift), and its gradient is as many
further passes over the activations. On a CPU those passes cost as much as the convolutions: in the
MNIST convnet's training step (128 images, 2 cores) batch norm took 18 of 40 ms. TensorFlow has one
kernel for the forward pass and one for the backward (FusedBatchNormV3 and its gradient), which
bring the step to 28 ms (`benchmarks/bench_training.py` times the step with both, side by side).

`FusedBatchNormalization` is Keras's layer, with the same weights, config and results: outputs,
gradients and moving statistics equal to float rounding (tests/test_batch_norm.py). It takes the
fused path only where the kernel computes exactly what Keras does: the TensorFlow backend, training
mode, trainable, 4-D channels-last inputs, no mask, no renorm, no synchronised statistics, ε above the
kernel's floor. Everywhere else (JAX, PyTorch, inference, dense inputs) it is Keras's own code.
`with_keras_batch_norm(network)` gives the same network with Keras's layer, to compare the two.
"""

import keras
from keras import ops

from model.registry import KERAS_PACKAGE

# cuDNN's fused batch norm refuses a smaller ε (CUDNN_BN_MIN_EPSILON); TensorFlow's GPU kernel would
# silently raise it to this floor, so a smaller ε stays on Keras's path and is honoured exactly.
_MIN_FUSED_EPSILON = 1.001e-5


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` (same arguments) with a fused TensorFlow training step."""

    def _fusable(self, inputs, training, mask):
        return (
            bool(training)
            and self.trainable
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4
            and list(self._reduction_axes) == [0, 1, 2]
            and mask is None
            and not self.renorm
            and not self.synchronized
            and self.epsilon >= _MIN_FUSED_EPSILON
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # the fused kernel is TensorFlow's; _fusable checked the backend

        # Float32 statistics under a mixed-precision policy, as Keras computes them.
        x = ops.cast(inputs, "float32")
        channels = x.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,), "float32")
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,), "float32")
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, epsilon=self.epsilon, is_training=True, data_format="NHWC"
        )
        # The kernel normalises with the biased variance but returns the unbiased one (times
        # n / (n − 1)); Keras's moving variance averages the biased one.
        count = ops.cast(ops.prod(ops.shape(x)[:-1]), "float32")
        variance = variance * (count - 1.0) / ops.maximum(count, 1.0)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return ops.cast(outputs, self.compute_dtype)


def with_keras_batch_norm(network):
    """A copy of `network` with each FusedBatchNormalization replaced by Keras's layer (same config, weights)."""

    def clone(layer):
        cls = keras.layers.BatchNormalization if isinstance(layer, FusedBatchNormalization) else layer.__class__
        return cls.from_config(layer.get_config())

    copy = keras.models.clone_model(network, clone_function=clone)
    copy.set_weights(network.get_weights())
    return copy
