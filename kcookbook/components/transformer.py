"""The transformer encoder block: self-attention and a feed-forward network, each with a residual.

``normalize_first=False`` is BERT's post-norm order (``x = norm(x + sublayer(x))``);
``normalize_first=True`` is the pre-norm order of ViT and GPT-2 (``x = x + sublayer(norm(x))``).

``query_length=n`` computes the block's output for the first ``n`` positions only, equal to
``block(x)[:, :n]``: their queries attend to every position's keys and values, and the residuals,
layer norms and feed-forward network run on those ``n`` positions. A classifier that reads only
``[CLS]`` calls its last block with ``query_length=1``.

    >>> block = TransformerEncoderBlock(num_heads=2, intermediate_dim=16)
    >>> x = ops.ones((2, 5, 8))
    >>> tuple(block(x, padding_mask=ops.ones((2, 5), "int32")).shape)
    (2, 5, 8)
    >>> tuple(block(x, padding_mask=ops.ones((2, 5), "int32"), query_length=1).shape)
    (2, 1, 8)
"""

import keras
from keras import ops

from kcookbook.components.attention import MultiHeadAttention, check_query_length, query_length_shape


def padding_to_attention_mask(padding_mask):
    """(batch, length) with 1 on real tokens → (batch, 1, 1, length) bool, for every query."""
    return ops.cast(padding_mask, "bool")[:, None, None, :]


@keras.saving.register_keras_serializable(package="kcookbook")
class TransformerEncoderBlock(keras.layers.Layer):
    """Bidirectional transformer block.

    Args:
        num_heads: attention heads; the head width is ``hidden // num_heads``.
        intermediate_dim: width of the feed-forward hidden layer.
        activation: feed-forward activation (``"gelu"`` is the exact, erf-based GELU).
        dropout: dropout after attention and after the feed-forward network (training only).
        layer_norm_epsilon: epsilon of both layer norms.
        normalize_first: pre-norm (True) or post-norm (False) order.
        kernel_initializer: initializer of every kernel.
    """

    def __init__(self, num_heads, intermediate_dim, activation="gelu", dropout=0.0,
                 layer_norm_epsilon=1e-5, normalize_first=False, kernel_initializer="glorot_uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.intermediate_dim = intermediate_dim
        self.activation = keras.activations.get(activation)
        self.dropout = dropout
        self.layer_norm_epsilon = layer_norm_epsilon
        self.normalize_first = normalize_first
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        hidden = input_shape[-1]
        if hidden % self.num_heads:
            raise ValueError(
                f"{self.name}: hidden width {hidden} is not divisible by num_heads={self.num_heads}.")
        common = {"dtype": self.dtype_policy}
        self.attention = MultiHeadAttention(
            self.num_heads, hidden // self.num_heads, kernel_initializer=self.kernel_initializer,
            name="attention", **common)
        self.attention.build(input_shape)
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="attention_norm", **common)
        self.attention_norm.build(input_shape)
        self.ffn_intermediate = keras.layers.Dense(
            self.intermediate_dim, activation=self.activation,
            kernel_initializer=self.kernel_initializer, name="ffn_intermediate", **common)
        self.ffn_intermediate.build(input_shape)
        self.ffn_output = keras.layers.Dense(
            hidden, kernel_initializer=self.kernel_initializer, name="ffn_output", **common)
        self.ffn_output.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        self.ffn_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, name="ffn_norm", **common)
        self.ffn_norm.build(input_shape)
        self.dropout_layer = keras.layers.Dropout(self.dropout, **common)

    def call(self, x, padding_mask=None, attention_mask=None, training=None, query_length=None,
             is_causal=False):
        """``query_length`` (a Python int): outputs of the first ``query_length`` positions only;
        ``is_causal``: each position attends to itself and the positions before it (CLIP's text)."""
        if attention_mask is None and padding_mask is not None:
            attention_mask = padding_to_attention_mask(padding_mask)
        residual = x
        if query_length is not None:
            check_query_length(self, query_length)
            residual = x[:, :query_length]

        def attention(h):  # keys and values from all of h; queries from its first query_length
            out = self.attention(h, attention_mask=attention_mask, is_causal=is_causal,
                                 query_length=query_length)
            return self.dropout_layer(out, training=training)

        def feed_forward(h):
            return self.dropout_layer(self.ffn_output(self.ffn_intermediate(h)), training=training)

        if self.normalize_first:
            x = residual + attention(self.attention_norm(x))
            return x + feed_forward(self.ffn_norm(x))
        x = self.attention_norm(residual + attention(x))
        return self.ffn_norm(x + feed_forward(x))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(self, x, *args, query_length=None, **kwargs):
        return keras.KerasTensor(query_length_shape(x.shape, query_length), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads, "intermediate_dim": self.intermediate_dim,
            "activation": keras.activations.serialize(self.activation), "dropout": self.dropout,
            "layer_norm_epsilon": self.layer_norm_epsilon, "normalize_first": self.normalize_first,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config
