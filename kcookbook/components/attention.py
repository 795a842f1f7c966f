"""Multi-head self-attention with one fused query/key/value projection.

One ``(hidden, (heads + 2·kv_heads)·head_dim)`` matmul instead of three: fewer, larger kernels are
faster on every backend (and on torch, fewer Python-level layer calls). The attention itself is
``keras.ops.dot_product_attention``, which each backend lowers to its fused implementation
(``jax.nn.dot_product_attention``, ``torch.nn.functional.scaled_dot_product_attention``, XLA on TF).

Grouped-query attention: ``num_key_value_heads < num_heads`` shares each key/value head among
``num_heads // num_key_value_heads`` query heads.

    >>> attention = MultiHeadAttention(num_heads=2, head_dim=4)
    >>> x = ops.ones((1, 3, 8))
    >>> tuple(attention(x, attention_mask=ops.ones((1, 1, 1, 3), "bool")).shape)
    (1, 3, 8)
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kcookbook")
class MultiHeadAttention(keras.layers.Layer):
    """Self-attention.

    Args:
        num_heads: query heads.
        head_dim: width of one head.
        num_key_value_heads: key/value heads (defaults to ``num_heads``).
        use_bias: biases on the projections.
        output_dim: width of the output (defaults to the input width).
        kernel_initializer: initializer of the projection kernels.

    Call with ``attention_mask`` broadcastable to ``(batch, heads, query_len, key_len)``, True where
    attending is allowed, and ``is_causal`` for decoder self-attention.
    """

    def __init__(self, num_heads, head_dim, num_key_value_heads=None, use_bias=True, output_dim=None,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.num_key_value_heads = num_key_value_heads or num_heads
        if num_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads})."
            )
        self.use_bias = use_bias
        self.output_dim = output_dim
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.qkv = keras.layers.Dense(
            (num_heads + 2 * self.num_key_value_heads) * head_dim, use_bias=use_bias,
            kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy, name="qkv")

    def build(self, input_shape):
        hidden = input_shape[-1]
        self.qkv.build(input_shape)
        self.output_dense = keras.layers.Dense(
            self.output_dim or hidden, use_bias=self.use_bias,
            kernel_initializer=self.kernel_initializer, dtype=self.dtype_policy, name="output")
        self.output_dense.build(tuple(input_shape[:-1]) + (self.num_heads * self.head_dim,))

    def split_heads(self, qkv):
        """(batch, length, fused) → query, key, value each (batch, length, heads, head_dim)."""
        q_width = self.num_heads * self.head_dim
        kv_width = self.num_key_value_heads * self.head_dim
        lead = ops.shape(qkv)[:-1]
        query = ops.reshape(qkv[..., :q_width], lead + (self.num_heads, self.head_dim))
        key = ops.reshape(qkv[..., q_width:q_width + kv_width],
                          lead + (self.num_key_value_heads, self.head_dim))
        value = ops.reshape(qkv[..., q_width + kv_width:],
                            lead + (self.num_key_value_heads, self.head_dim))
        return query, key, value

    def attend(self, query, key, value, attention_mask=None, is_causal=False):
        """Scaled dot-product attention, then merge heads and project."""
        if self.num_key_value_heads != self.num_heads:
            repeats = self.num_heads // self.num_key_value_heads
            key = ops.repeat(key, repeats, axis=2)
            value = ops.repeat(value, repeats, axis=2)
        if attention_mask is not None:
            attention_mask = ops.cast(attention_mask, "bool")
        out = ops.dot_product_attention(query, key, value, mask=attention_mask, is_causal=is_causal)
        out = ops.reshape(out, ops.shape(out)[:-2] + (self.num_heads * self.head_dim,))
        return self.output_dense(out)

    def call(self, inputs, attention_mask=None, is_causal=False):
        query, key, value = self.split_heads(self.qkv(inputs))
        return self.attend(query, key, value, attention_mask, is_causal)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads, "head_dim": self.head_dim,
            "num_key_value_heads": self.num_key_value_heads, "use_bias": self.use_bias,
            "output_dim": self.output_dim,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config
