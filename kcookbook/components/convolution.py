"""A 2D convolution whose 1×1 case is a matmul, and conv → batch-norm folding for inference.

``Conv2D`` is ``keras.layers.Conv2D`` (same config, weights and results) except that a 1×1, stride-1,
undilated, ungrouped convolution on channels-last inputs runs as ``ops.matmul`` over the channels:
torch's backend otherwise transposes to channels-first and back around every convolution, and a
matmul is the plainest op for XLA and oneDNN too. On torch, the other float32 channels-last
convolutions skip Keras' copies of the input and kernel (``torch_speedups.conv2d_channels_last``).

``fold_batch_norms(model)`` returns an inference copy of a functional model in which every
convolution whose only consumer is a ``BatchNormalization`` (the conv-BN-activation pattern) and that
batch norm are one convolution: with ``s = γ / √(σ² + ε)``, kernel ``W·s`` and bias ``β + (b - μ)·s``.
The folded kernel is computed from the original layers' variables at every call, so the copy stays
right while the model keeps training; the copy shares every other layer (and so every other weight)
with the model. It computes the batch norms' inference form (moving statistics): use it for
prediction, never for training.

    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(inputs)
    >>> model = keras.Model(inputs, keras.layers.BatchNormalization()(x))
    >>> folded = fold_batch_norms(model)
    >>> [type(layer).__name__ for layer in folded.layers]
    ['InputLayer', 'FoldedConvBatchNorm']
"""

import keras
from keras import ops

from kcookbook.components.torch_speedups import conv2d_channels_last


@keras.saving.register_keras_serializable(package="kcookbook")
class Conv2D(keras.layers.Conv2D):
    """``keras.layers.Conv2D``, with 1×1 stride-1 channels-last convolutions computed as a matmul."""

    def is_pointwise(self):
        return (tuple(self.kernel_size) == (1, 1) and tuple(self.strides) == (1, 1)
                and tuple(self.dilation_rate) == (1, 1) and self.groups == 1 and self.data_format == "channels_last")

    def convolution_op(self, inputs, kernel):
        if self.is_pointwise():  # (…, h, w, c_in) @ (c_in, c_out); "same" and "valid" agree at 1×1
            return ops.matmul(inputs, ops.reshape(kernel, kernel.shape[2:]))
        return super().convolution_op(inputs, kernel)

    def torch_padding(self):
        """The pixels torch pads on each side, or None where that is not Keras' padding ("same" with
        strides: Keras pads more on the bottom and right when the padding is odd)."""
        if self.padding == "valid":
            return (0, 0)
        if tuple(self.strides) != (1, 1):
            return None
        pads = [(k - 1) * d for k, d in zip(self.kernel_size, self.dilation_rate)]
        return None if any(p % 2 for p in pads) else tuple(p // 2 for p in pads)

    def call(self, inputs):
        """On torch, a float32 channels-last k×k convolution (not 1×1: a matmul) runs as
        ``torch_speedups.conv2d_channels_last``, bias included, without Keras' layout copies."""
        if (keras.config.backend() == "torch" and not self.is_pointwise() and self.data_format == "channels_last"
                and self.groups == 1 and not self.lora_enabled and self.quantization_mode is None
                and self.compute_dtype == "float32" and self._kernel.dtype == "float32"
                and keras.backend.standardize_dtype(inputs.dtype) == "float32"
                and len(inputs.shape) == 4 and self.torch_padding() is not None):
            outputs = conv2d_channels_last(self, inputs, self._kernel, self.bias.value if self.use_bias else None,
                                           tuple(self.strides), self.torch_padding(), tuple(self.dilation_rate))
            return outputs if self.activation is None else self.activation(outputs)
        return super().call(inputs)


class FoldedConvBatchNorm(keras.layers.Layer):
    """``batch_norm(conv(x))`` at inference as one convolution, its kernel folded from both layers'
    live variables at each call (not serialisable: build it with ``fold_batch_norms``)."""

    def __init__(self, conv, batch_norm, **kwargs):
        super().__init__(dtype=conv.dtype_policy, **kwargs)
        self.conv = conv
        self.batch_norm = batch_norm

    def folded_weights(self):
        """``(kernel, bias)`` of the one convolution."""
        bn = self.batch_norm
        scale = ops.rsqrt(ops.cast(bn.moving_variance, "float32") + bn.epsilon)
        if bn.scale:
            scale = scale * ops.cast(bn.gamma, "float32")
        bias = -ops.cast(bn.moving_mean, "float32")
        if self.conv.use_bias:
            bias = bias + ops.cast(self.conv.bias, "float32")
        bias = bias * scale
        if bn.center:
            bias = bias + ops.cast(bn.beta, "float32")
        kernel = ops.cast(self.conv.kernel, "float32") * scale  # kernel (…, c_in, c_out): scale c_out
        return ops.cast(kernel, self.compute_dtype), ops.cast(bias, self.compute_dtype)

    def call(self, inputs):
        kernel, bias = self.folded_weights()
        return ops.add(self.conv.convolution_op(inputs, kernel), bias)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)


def _foldable_pairs(model):
    """``{conv: batch_norm}`` for every conv (any depth of nested functional models) used once, with
    no activation, whose only consumer is a channels-last batch norm."""
    pairs = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph"):
            pairs.update(_foldable_pairs(layer))
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        source = layer._inbound_nodes[0].input_tensors[0]._keras_history.operation
        if (isinstance(source, keras.layers.Conv2D) and source.data_format == "channels_last"
                and layer.axis in (-1, 3) and len(source._inbound_nodes) == 1
                and len(source._outbound_nodes) == 1 and source.activation in (None, keras.activations.linear)):
            pairs[source] = layer
    return pairs


def fold_batch_norms(model):
    """An inference copy of the functional ``model`` with conv → batch-norm pairs folded into one
    convolution each (module docstring); a plain ``keras.Model`` with the same inputs and outputs,
    sharing the model's layers otherwise. The model itself is unchanged."""
    pairs = _foldable_pairs(model)
    batch_norms = set(pairs.values())

    def clone(layer):
        if layer in pairs:
            return FoldedConvBatchNorm(layer, pairs[layer], name=layer.name)
        if layer in batch_norms:  # its input is already the folded conv's output
            return lambda inputs, **kwargs: inputs
        return layer  # shared, weights and all

    inputs = keras.tree.map_structure(lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name),
                                      model.input)
    outputs = _run_cloned(model, inputs, clone)
    return keras.Model(inputs, outputs, name=f"{model.name}_folded")


def _run_cloned(model, inputs, clone):
    """``model``'s graph on ``inputs`` with each layer replaced by ``clone(layer)``; nested functional
    models are walked into the same way."""
    def operation(layer):
        if isinstance(layer, keras.Model) and hasattr(layer, "_run_through_graph"):
            return lambda *args, **kwargs: _run_cloned(layer, args[0] if len(args) == 1 else args, clone)
        return clone(layer)

    return model._run_through_graph(inputs, operation_fn=operation)
