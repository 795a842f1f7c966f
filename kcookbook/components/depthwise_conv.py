"""A depthwise 2-D convolution that XLA on CPU runs fast: a sum of k×k shifted multiply-adds.

Why it exists: Keras's ``DepthwiseConv2D`` lowers to ``conv_general_dilated`` with
``feature_group_count=channels`` on jax, and XLA's CPU backend runs grouped convolutions very slowly
(it rewrites them into much larger dense convolutions); the shifted sum is an order of magnitude
faster there. TensorFlow and PyTorch have native depthwise kernels that beat the shifted sum, so
``implementation="auto"`` uses it on jax only.

On torch, ``"auto"`` runs Keras's op in ``channels_first`` on a transposed *view* of the input: Keras's
torch backend copies a channels-last input to NCHW (``permute().contiguous()``) and back to torch's
channels-last memory format before every convolution; the view is already channels-last in memory, so
both copies go. Same numbers bit for bit, and faster.

The measurements behind both choices (per layer and on EfficientNet-Lite0, dated) are in
``benchmarks/README.md``, "EfficientNet-Lite0 ImageClassifier vs the PyTorch reference".

The result is Keras's ``DepthwiseConv2D`` exactly (same padding — TensorFlow "same", extra row/column
at the bottom/right —, same weights ``kernel (kh, kw, channels, depth_multiplier)`` and ``bias``), and
the class keeps Keras's name so that ``model.weights.h5`` files written with
``keras.layers.DepthwiseConv2D`` load unchanged (Keras addresses saved layers by class name).

    >>> import numpy as np
    >>> layer = DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)
    >>> tuple(layer(np.ones((1, 7, 7, 4), "float32")).shape)
    (1, 4, 4, 4)
"""

import keras
from keras import ops

IMPLEMENTATIONS = ("auto", "shifted_sum", "channels_first_view", "native")


def same_padding(size, kernel, stride):
    """TensorFlow "same": output ``ceil(size / stride)``; (before, after) padding, the extra one after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def depthwise_conv_shifted_sum(inputs, kernel, strides=(1, 1), padding="same"):
    """``ops.depthwise_conv`` (channels last, no dilation) as ``Σ_ij shifted(inputs) · kernel[i, j]``.

    ``inputs`` (batch, height, width, channels) with static height and width; ``kernel``
    (kh, kw, channels, multiplier). Output channel ``c·multiplier + m``, as Keras orders them.
    """
    inputs, kernel = ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel)
    kh, kw, channels, multiplier = kernel.shape
    height, width = inputs.shape[1], inputs.shape[2]
    if height is None or width is None:
        raise ValueError("depthwise_conv_shifted_sum needs static height and width; got input shape "
                         f"{inputs.shape}. Use the native implementation for dynamic shapes.")
    sh, sw = strides
    if padding == "same":
        out_h, top, bottom = same_padding(height, kh, sh)
        out_w, left, right = same_padding(width, kw, sw)
        inputs = ops.pad(inputs, ((0, 0), (top, bottom), (left, right), (0, 0)))
    elif padding == "valid":
        out_h, out_w, top, left = (height - kh) // sh + 1, (width - kw) // sw + 1, 0, 0
    else:
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}.")

    def reads_data(tap, stride, out, before, size):  # does this tap's window touch a real row/column?
        return any(before <= tap + stride * r < before + size for r in range(out))

    # Taps that only ever read padding add zeros: skipping them is exact and keeps the graph small on
    # small feature maps (a 5×5 kernel on a 2×2 map touches data with 3×3 taps; on 1×1, with one).
    taps = [(i, j) for i in range(kh) for j in range(kw)
            if reads_data(i, sh, out_h, top, height) and reads_data(j, sw, out_w, left, width)]
    if multiplier != 1:
        inputs = ops.repeat(inputs, multiplier, axis=-1)  # channel c·m + j, the order Keras uses
    kernel = ops.reshape(kernel, (kh, kw, channels * multiplier))
    outputs = None
    for i, j in taps:
        window = inputs[:, i:i + sh * (out_h - 1) + 1:sh, j:j + sw * (out_w - 1) + 1:sw, :]
        term = window * kernel[i, j]
        outputs = term if outputs is None else outputs + term
    return outputs


@keras.saving.register_keras_serializable(package="kcookbook")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` whose jax path is a shifted multiply-add sum (see the module).

    Args:
        implementation: ``"auto"`` (shifted sum on jax, channels-first view on torch, Keras's
            ``ops.depthwise_conv`` on tensorflow), ``"shifted_sum"``, ``"channels_first_view"`` or
            ``"native"``. The shifted sum needs channels-last data, no dilation
            and static height/width (jax traces with concrete shapes); otherwise the native op runs.
        Other arguments: those of ``keras.layers.DepthwiseConv2D``.
    """

    def __init__(self, *args, implementation="auto", **kwargs):
        super().__init__(*args, **kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}.")
        self.implementation = implementation

    def uses_shifted_sum(self, input_shape):
        wanted = (self.implementation == "shifted_sum"
                  or (self.implementation == "auto" and keras.backend.backend() == "jax"))
        return (wanted and self.data_format == "channels_last" and tuple(self.dilation_rate) == (1, 1)
                and input_shape[1] is not None and input_shape[2] is not None)

    def uses_channels_first_view(self):
        wanted = (self.implementation == "channels_first_view"
                  or (self.implementation == "auto" and keras.backend.backend() == "torch"))
        return wanted and self.data_format == "channels_last"

    def call(self, inputs):
        if self.uses_shifted_sum(inputs.shape):
            outputs = depthwise_conv_shifted_sum(inputs, self.kernel, self.strides, self.padding)
        elif self.uses_channels_first_view():
            outputs = ops.depthwise_conv(ops.transpose(inputs, (0, 3, 1, 2)), self.kernel, self.strides,
                                         self.padding, data_format="channels_first",
                                         dilation_rate=self.dilation_rate)
            outputs = ops.transpose(outputs, (0, 2, 3, 1))
        else:
            return super().call(inputs)
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            return self.activation(outputs)
        return outputs

    def get_config(self):
        return {**super().get_config(), "implementation": self.implementation}
