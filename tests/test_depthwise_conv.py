"""kcookbook's DepthwiseConv2D (shifted multiply-add sum) against keras.layers.DepthwiseConv2D: outputs,
gradients w.r.t. input and kernel, TensorFlow-"same" asymmetric padding with stride 2, and weights files
written with Keras's layer loading unchanged."""

import numpy as np
import pytest

import keras
from keras import ops

from kcookbook.components.depthwise_conv import DepthwiseConv2D, depthwise_conv_shifted_sum

# (height, width, channels, kernel, stride, padding, depth multiplier): odd and even sizes, so "same"
# padding with stride 2 is asymmetric (the extra row/column goes after, as in TensorFlow).
CASES = [
    (7, 9, 4, 3, 2, "same", 1),
    (8, 6, 5, 5, 2, "same", 1),
    (9, 9, 3, 5, 1, "same", 1),
    (6, 5, 3, 3, 1, "valid", 2),
    (7, 8, 2, 3, 2, "valid", 1),
    (1, 2, 3, 5, 1, "same", 1),  # maps smaller than the kernel: taps reading only padding are skipped
    (2, 3, 2, 5, 2, "same", 1),
]


def gradients(function, x, kernel, weights):
    """d sum(function(x, kernel) · weights) / d(x, kernel), as numpy, on the current backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        grad = jax.jit(jax.grad(lambda a, b: (function(a, b) * weights).sum(), (0, 1)))  # one compile
        return [np.asarray(g) for g in grad(x, kernel)]
    if backend == "tensorflow":
        import tensorflow as tf

        x, kernel = tf.Variable(x), tf.Variable(kernel)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(function(x, kernel) * weights)
        return [g.numpy() for g in tape.gradient(loss, [x, kernel])]
    import torch

    x, kernel = torch.tensor(x, requires_grad=True), torch.tensor(kernel, requires_grad=True)
    (function(x, kernel) * torch.tensor(weights)).sum().backward()
    return [x.grad.numpy(), kernel.grad.numpy()]


@pytest.mark.parametrize("height, width, channels, kernel_size, stride, padding, multiplier", CASES)
def test_shifted_sum_matches_keras_depthwise_conv_and_its_gradients(height, width, channels, kernel_size,
                                                                     stride, padding, multiplier):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, height, width, channels)).astype("float32")
    kernel = rng.standard_normal((kernel_size, kernel_size, channels, multiplier)).astype("float32")

    def keras_op(a, b):
        return ops.depthwise_conv(a, b, strides=stride, padding=padding)

    def ours(a, b):
        return depthwise_conv_shifted_sum(a, b, (stride, stride), padding)

    expected = ops.convert_to_numpy(keras_op(x, kernel))
    got = ops.convert_to_numpy(ours(x, kernel))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    weights = rng.standard_normal(expected.shape).astype("float32")
    for theirs, mine in zip(gradients(keras_op, x, kernel, weights), gradients(ours, x, kernel, weights)):
        np.testing.assert_allclose(mine, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("implementation", ["auto", "shifted_sum", "channels_first_view", "native"])
def test_layer_matches_keras_layer_with_the_same_weights(implementation):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 9, 8, 6)).astype("float32")
    theirs = keras.layers.DepthwiseConv2D(5, 2, padding="same", use_bias=True, activation="relu")
    mine = DepthwiseConv2D(5, 2, padding="same", use_bias=True, activation="relu",
                           implementation=implementation)
    theirs.build(x.shape), mine.build(x.shape)
    assert [(w.path.split("/")[-1], w.shape) for w in mine.weights] == \
           [(w.path.split("/")[-1], w.shape) for w in theirs.weights]
    mine.set_weights([rng.standard_normal(w.shape).astype("float32") for w in mine.weights])
    theirs.set_weights(mine.get_weights())
    np.testing.assert_allclose(ops.convert_to_numpy(mine(x)), ops.convert_to_numpy(theirs(x)), atol=1e-5)
    assert mine.uses_shifted_sum(x.shape) == (
        implementation == "shifted_sum" or (implementation == "auto" and keras.backend.backend() == "jax"))
    assert DepthwiseConv2D.from_config(mine.get_config()).implementation == implementation


def test_weights_written_with_keras_layer_load_into_ours(tmp_path):
    def model(depthwise):
        inputs = keras.Input((8, 8, 3))
        x = depthwise(3, 2, padding="same", use_bias=False, name="dw")(inputs)
        return keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))

    theirs, mine = model(keras.layers.DepthwiseConv2D), model(DepthwiseConv2D)
    theirs.set_weights([np.random.default_rng(2).standard_normal(w.shape).astype("float32")
                        for w in theirs.weights])
    theirs.save_weights(tmp_path / "model.weights.h5")
    mine.load_weights(tmp_path / "model.weights.h5")
    for a, b in zip(mine.weights, theirs.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


def test_bad_implementation_and_dynamic_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="implementation must be one of"):
        DepthwiseConv2D(3, implementation="fast")
    with pytest.raises(ValueError, match="padding must be 'same' or 'valid'"):
        depthwise_conv_shifted_sum(np.ones((1, 4, 4, 2), "float32"), np.ones((3, 3, 2, 1), "float32"),
                                   padding="causal")
