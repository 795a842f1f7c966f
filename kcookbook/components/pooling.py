"""Pooling: a sequence of hidden states into one vector per example; stride-1 max pooling of images."""

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


@keras.saving.register_keras_serializable(package="kcookbook")
class MaxPooling2D(keras.layers.MaxPooling2D):
    """``keras.layers.MaxPooling2D`` (same config, same outputs) whose stride-1 ``"same"`` pooling of
    channels-last images with an odd window runs, on JAX, as shifted maxima (``shifted_max``): the
    window's maximum over rows, then over columns (a max over a rectangle is separable), each the
    elementwise maximum of ``pool`` slices of the input padded with -inf.

    XLA's reduce-window pooling is slow on CPU, its gradient (select-and-scatter) far more: for
    YOLOv8's SPPF (three chained 5×5 pools at 8×10×10×128) jax took 44 ms forward and backward, the
    shifted maxima 6 ms. TensorFlow without XLA (Keras' default for the detector) and torch have fast
    native pooling gradients (2 ms and 12 ms against the shifted maxima's 33 and 31 ms), so they keep
    Keras' pooling (benchmarks/README.md, YOLOv8 section). Where several values tie for the maximum,
    the gradient may go to any of them (jax splits it between them; reduce-window gives it to one):
    both are gradients of the same function.

    >>> x = ops.reshape(ops.arange(9, dtype="float32"), (1, 3, 3, 1))
    >>> ops.convert_to_numpy(MaxPooling2D(3, strides=1, padding="same").shifted_max(x))[0, :, :, 0].tolist()
    [[4.0, 5.0, 5.0], [7.0, 8.0, 8.0], [7.0, 8.0, 8.0]]
    """

    def is_shifted(self):
        """Whether this pooling can run as shifted maxima (odd window, stride 1, "same", channels last)."""
        return (tuple(self.strides) == (1, 1) and self.padding == "same" and self.data_format == "channels_last"
                and all(size % 2 == 1 for size in self.pool_size))

    def shifted_max(self, inputs):
        """The pooling as shifted maxima (any backend; ``is_shifted()`` configurations only)."""
        if not self.is_shifted():
            raise ValueError(f"{self.name}: shifted maxima need an odd window, strides 1, padding 'same' and "
                             f"channels_last; got pool_size={self.pool_size}, strides={self.strides}, "
                             f"padding={self.padding!r}, data_format={self.data_format!r}.")
        x = inputs
        for axis, size in zip((1, 2), self.pool_size):
            x = _window_max(x, axis, size)
        return x

    def call(self, inputs):
        if keras.config.backend() == "jax" and self.is_shifted():
            return self.shifted_max(inputs)
        return super().call(inputs)


def _window_max(x, axis, size):
    """Maximum over a centred window of odd ``size`` along ``axis`` (stride 1, -inf beyond the edges)."""
    half = size // 2
    pads = [(0, 0)] * len(x.shape)
    pads[axis] = (half, half)
    padded = ops.pad(x, pads, constant_values=float("-inf"))
    out = None
    for offset in range(size):  # the slice that starts ``offset`` rows in, as long as ``x``
        index = [slice(None)] * len(x.shape)
        index[axis] = slice(offset, offset - 2 * half or None)
        window = padded[tuple(index)]
        out = window if out is None else ops.maximum(out, window)
    return out
