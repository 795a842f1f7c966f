"""Pooling a sequence of hidden states into one vector per example."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kcookbook")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean over the real (unpadded) positions, as sentence-transformers pools.

    >>> pool = MaskedMeanPooling()
    >>> x = ops.convert_to_tensor([[[1.0], [3.0], [100.0]]])
    >>> float(pool(x, padding_mask=ops.convert_to_tensor([[1, 1, 0]]))[0, 0])
    2.0
    """

    def call(self, sequence, padding_mask=None):
        if padding_mask is None:
            return ops.mean(sequence, axis=1)
        mask = ops.cast(padding_mask, sequence.dtype)[:, :, None]
        total = ops.sum(sequence * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), 1e-9)
        return total / count

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="kcookbook")
class L2Normalization(keras.layers.Layer):
    """Scale each vector to unit length (``x / max(‖x‖, 1e-12)``, as torch's F.normalize)."""

    def call(self, x):
        norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
        return x / ops.maximum(norm, 1e-12)
