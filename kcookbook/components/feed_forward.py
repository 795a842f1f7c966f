"""Position-wise feed-forward networks of decoder blocks.

* ``FeedForward``: ``dense → activation → dense`` (GPT-2's MLP).
* ``GatedFeedForward``: ``down(activation(gate(x)) * up(x))`` (Shazeer, 2020, "GLU variants"):
  SwiGLU with ``activation="silu"``, GeGLU with ``"gelu_approximate"``. ``gate`` and ``up`` are
  one fused ``(hidden, 2 · intermediate)`` matmul (gate columns first).

    >>> ffn = GatedFeedForward(intermediate_dim=16, activation="silu")
    >>> tuple(ffn(ops.ones((2, 3, 8))).shape)
    (2, 3, 8)
"""

import keras
from keras import ops  # noqa: F401  (used by the docstring example)

from kcookbook.components.activations import get_activation
from kcookbook.components.torch_speedups import KERAS_CALLS


@keras.saving.register_keras_serializable(package="kcookbook")
class FeedForward(keras.layers.Layer):
    """``output(activation(intermediate(x)))``, back to the input width."""

    def __init__(self, intermediate_dim, activation="gelu", use_bias=True,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        common = {"use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                  "dtype": self.dtype_policy}
        self.intermediate = keras.layers.Dense(
            self.intermediate_dim, activation=get_activation(self.activation), name="intermediate",
            **common)
        self.intermediate.build(input_shape)
        self.output_dense = keras.layers.Dense(input_shape[-1], name="output", **common)
        self.output_dense.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))

    def call(self, x, calls=KERAS_CALLS):
        """``calls``: how the dense layers are called (``torch_speedups.LayerCalls``)."""
        return calls(self.output_dense, calls(self.intermediate, x))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"intermediate_dim": self.intermediate_dim, "activation": self.activation,
                       "use_bias": self.use_bias,
                       "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)})
        return config


@keras.saving.register_keras_serializable(package="kcookbook")
class GatedFeedForward(FeedForward):
    """``output(activation(gate(x)) * up(x))`` with ``gate`` and ``up`` fused in ``gate_up``."""

    def __init__(self, intermediate_dim, activation="silu", use_bias=False,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(intermediate_dim, activation, use_bias, kernel_initializer, **kwargs)

    def build(self, input_shape):
        common = {"use_bias": self.use_bias, "kernel_initializer": self.kernel_initializer,
                  "dtype": self.dtype_policy}
        self.gate_up = keras.layers.Dense(2 * self.intermediate_dim, name="gate_up", **common)
        self.gate_up.build(input_shape)
        self.output_dense = keras.layers.Dense(input_shape[-1], name="output", **common)
        self.output_dense.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self._activation_fn = get_activation(self.activation)

    def call(self, x, calls=KERAS_CALLS):
        gate_up = calls(self.gate_up, x)  # halves by slicing: no Keras op per call
        gate, up = gate_up[..., :self.intermediate_dim], gate_up[..., self.intermediate_dim:]
        return calls(self.output_dense, calls.activation(self._activation_fn)(gate) * up)
