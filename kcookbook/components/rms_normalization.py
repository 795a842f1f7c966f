"""Root-mean-square normalisation (Zhang & Sennrich, 2019): ``x / rms(x) * scale``, no centring.

Computed in float32 whatever the compute dtype. ``unit_offset=True`` multiplies by ``1 + scale``
with ``scale`` starting at zero (Gemma's variant) instead of by ``scale`` starting at one.

    >>> norm = RMSNormalization(epsilon=1e-6)
    >>> [round(float(v), 4) for v in norm(ops.convert_to_tensor([[3.0, 4.0]]))[0]]
    [0.8485, 1.1314]
"""

import keras
from keras import ops

from kcookbook.components.torch_speedups import cast_if_needed, fused_rms_normalization, variable_tensor


@keras.saving.register_keras_serializable(package="kcookbook")
class RMSNormalization(keras.layers.Layer):
    """RMS normalisation over the last axis with a learned per-feature scale.

    Args:
        epsilon: added to the mean square before the square root.
        unit_offset: scale by ``1 + weight`` (weights initialised at 0) instead of ``weight`` (at 1).
    """

    def __init__(self, epsilon=1e-6, unit_offset=False, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon
        self.unit_offset = unit_offset

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(input_shape[-1],),
            initializer="zeros" if self.unit_offset else "ones")

    def call(self, x):
        x32 = cast_if_needed(x, "float32")
        torch = keras.config.backend() == "torch"
        scale = cast_if_needed(variable_tensor(self.scale) if torch else self.scale.value, "float32")
        scale = 1.0 + scale if self.unit_offset else scale
        if torch:  # one kernel, not six dispatched ops
            return cast_if_needed(fused_rms_normalization(x32, scale, self.epsilon), x.dtype)
        normed = x32 * ops.rsqrt(ops.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return cast_if_needed(normed * scale, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"epsilon": self.epsilon, "unit_offset": self.unit_offset})
        return config
