"""kcookbook's Conv2D (1×1 as a matmul) against keras.layers.Conv2D, and fold_batch_norms against the
unfolded model in inference mode (a toy model and YOLOv8n's detector, with non-trivial statistics)."""

import keras
import numpy as np
import pytest

from kcookbook.backbones import YOLOv8Backbone
from kcookbook.components.convolution import Conv2D, FoldedConvBatchNorm, fold_batch_norms
from kcookbook.tasks import ObjectDetector


def random_statistics(model, seed=0):
    """Batch norms with moving means/variances and γ/β far from their initial 0/1."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(0, 0.5, channels).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 2.0, channels).astype("float32"))
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.5, channels).astype("float32"))


@pytest.mark.parametrize("kernel, strides, padding, use_bias", [
    (1, 1, "same", True), (1, 1, "valid", False), (3, 1, "same", True), (1, 2, "valid", True),
    (3, 2, "valid", True), (3, 2, "same", False), (2, 1, "same", True)])
def test_conv2d_equals_keras_conv2d(kernel, strides, padding, use_bias):
    x = np.random.default_rng(0).normal(size=(2, 9, 7, 5)).astype("float32")
    ours = Conv2D(6, kernel, strides, padding=padding, use_bias=use_bias, bias_initializer="random_normal")
    theirs = keras.layers.Conv2D(6, kernel, strides, padding=padding, use_bias=use_bias)
    ours.build(x.shape)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    assert ours.is_pointwise() == (kernel == 1 and strides == 1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours(x)), keras.ops.convert_to_numpy(theirs(x)),
                               rtol=1e-5, atol=1e-5)
    assert keras.layers.deserialize(keras.layers.serialize(ours)).get_config() == ours.get_config()


@pytest.mark.skipif(keras.config.backend() != "torch", reason="torch's inference-time kernel layout")
def test_conv2d_kept_kernel_layout_follows_assign_and_gradients():
    import torch

    x = np.random.default_rng(1).normal(size=(1, 6, 6, 3)).astype("float32")
    ours, theirs = Conv2D(4, 3, padding="same"), keras.layers.Conv2D(4, 3, padding="same")
    ours.build(x.shape), theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    for scale in (1.0, -2.0):  # the kept layout is made again after an assign
        ours.kernel.assign(ours.kernel * scale)
        theirs.kernel.assign(theirs.kernel * scale)
        with torch.no_grad():
            np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=1e-5, atol=1e-5)
    out = ours(x)  # gradients on: the kernel is laid out from the variable itself
    out.sum().backward()
    assert ours.kernel.value.grad is not None


def test_fold_batch_norms_toy_model():
    inputs = keras.Input((8, 8, 3))
    x = Conv2D(4, 1, use_bias=True, bias_initializer="random_normal")(inputs)
    x = keras.layers.BatchNormalization(epsilon=1e-3)(x)
    y = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(keras.layers.Activation("silu")(x))
    shared = keras.layers.BatchNormalization()(y)
    out = keras.layers.Add()([shared, y])  # y feeds two layers: this pair must stay unfolded
    model = keras.Model(inputs, out)
    random_statistics(model)
    folded = fold_batch_norms(model)
    assert sum(isinstance(layer, FoldedConvBatchNorm) for layer in folded.layers) == 1
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(folded(x)),
                               keras.ops.convert_to_numpy(model(x, training=False)), rtol=1e-5, atol=1e-5)


def test_folded_detector_equals_unfolded_and_follows_weights():
    detector = ObjectDetector(YOLOv8Backbone.from_scale("n"), num_classes=3, image_size=64)
    random_statistics(detector)
    folded = fold_batch_norms(detector)
    x = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    for attempt in range(2):
        expected, got = detector(x, training=False), folded(x)
        for key in ("boxes", "classes"):
            np.testing.assert_allclose(keras.ops.convert_to_numpy(got[key]), keras.ops.convert_to_numpy(expected[key]),
                                       rtol=1e-5, atol=1e-5)
        random_statistics(detector, seed=attempt + 1)  # the copy reads the live variables
