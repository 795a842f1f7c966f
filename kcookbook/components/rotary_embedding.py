"""Rotary position embedding (Su et al., 2021, "RoFormer"): positions as rotations of query/key pairs.

Each head vector is split into two halves ``(x1, x2)``; pair ``i`` is rotated by the angle
``position / max_wavelength ** (2i / head_dim)``. Attention scores then depend only on the distance
between query and key. This is the "rotate half" layout of Hugging Face checkpoints (Llama, Mistral,
Gemma, Mixtral, SmolLM2).

    >>> rotary = RotaryEmbedding(max_wavelength=10000)
    >>> x = ops.ones((1, 3, 2, 4))  # (batch, length, heads, head_dim)
    >>> tuple(rotary(x, positions=ops.arange(3)).shape)
    (1, 3, 2, 4)
"""

import keras
import numpy as np
from keras import ops

from kcookbook.components.torch_speedups import cast_if_needed, concatenate


@keras.saving.register_keras_serializable(package="kcookbook")
class RotaryEmbedding(keras.layers.Layer):
    """Rotate ``(batch, length, heads, head_dim)`` vectors by their positions; no weights.

    Args:
        max_wavelength: the base of the frequencies (``rope_theta``: 10,000 in Llama-2, 100,000 in
            SmolLM2, 1,000,000 in Mixtral).
        scaling_factor: positions are divided by it ("linear" RoPE scaling for longer contexts).
    """

    def __init__(self, max_wavelength=10000, scaling_factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor
        # No weights, and attention calls cos_sin directly, so no call ever builds it: say it is
        # built, or Keras refuses to quantise a model holding it ("not built yet").
        self.built = True

    def call(self, x, positions):
        """``positions``: int tensor ``(length,)``, the absolute position of each row of ``x``."""
        return self.rotate(x, *self.cos_sin(positions, x.shape[-1], x.dtype))

    def cos_sin(self, positions, head_dim, dtype="float32"):
        """The ``(1, length, 1, head_dim)`` cosines and sines of ``positions``' rotation angles; compute
        them once and ``rotate`` queries and keys with them."""
        # computed in float64 by numpy, then float32 (a numpy array: converting a Python list is
        # ~170 µs per decoding step on eager torch, the array ~10)
        inverse_frequencies = float(self.max_wavelength) ** (-np.arange(0, head_dim, 2) / head_dim)
        positions = ops.cast(positions, "float32") / self.scaling_factor
        angles = positions[:, None] * ops.convert_to_tensor(inverse_frequencies.astype("float32"))[None, :]
        angles = ops.concatenate([angles, angles], axis=-1)[None, :, None, :]
        return cast_if_needed(ops.cos(angles), dtype), cast_if_needed(ops.sin(angles), dtype)

    @staticmethod
    def rotate(x, cos, sin):
        """``x · cos + rotate_half(x) · sin``; ``x`` may hold several heads (queries and keys
        together): ``cos`` and ``sin`` broadcast over the heads axis."""
        half = x.shape[-1] // 2
        return x * cos + concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength, "scaling_factor": self.scaling_factor})
        return config
