"""The blocks of encoder-decoder transformers (T5, Whisper, BART…): attention that reads its keys and
values from the block's own input (self-attention) or from the encoder's output (cross-attention),
scores shifted by an additive float32 bias (padding, relative positions), and a key/value cache.

    encoder block:  x = x + self_attention(norm(x))                    bidirectional
                    x = x + feed_forward(norm(x))
    decoder block:  x = x + self_attention(norm(x))                    causal, cached in generation
                    x = x + cross_attention(norm(x), encoder output)   keys/values computed once
                    x = x + feed_forward(norm(x))

Keys and values travel as one tensor ``(batch, heads, 2, length, head_dim)``: the self-attention
cache (written at the decoding position) and the cross-attention keys/values of the encoder output
(``EncoderDecoderAttention.key_value``: computed before the generation loop and never rewritten).
Heads before positions is the layout the score and output products read: on torch, keys stored
``(batch, length, heads, head_dim)`` were re-laid-out by ``einsum`` (a strided copy of every key)
in every layer at every decoding step — for Whisper's 1,500 encoder positions that copy was most
of a step.

    >>> block = EncoderDecoderBlock(num_heads=2, head_dim=4, intermediate_dim=16, cross_attention=True)
    >>> x, source = ops.ones((1, 3, 8)), ops.ones((1, 5, 8))
    >>> tuple(block(x, encoder_output=source, causal=True).shape)
    (1, 3, 8)
"""

import keras
from keras import ops

from kcookbook.components.causal_attention import MASKED
from kcookbook.components.feed_forward import FeedForward, GatedFeedForward
from kcookbook.components.rms_normalization import RMSNormalization
from kcookbook.components.torch_speedups import (
    KERAS_CALLS,
    cast_if_needed,
    contiguous,
    fused_attention_heads_first,
    reshape,
    shape,
    standard_dtype,
    transpose,
    write_slice_in_place,
)

NORMALIZATIONS = ("rms", "layer")
FEED_FORWARDS = ("dense", "gated")


def padding_bias(padding_mask):
    """``(batch, length)`` 0/1 mask of keys → float32 bias ``(batch, 1, 1, length)``: 0 on tokens,
    ``MASKED`` on padding."""
    return (1.0 - ops.cast(padding_mask, "float32"))[:, None, None, :] * MASKED


@keras.saving.register_keras_serializable(package="kcookbook")
class EncoderDecoderAttention(keras.layers.Layer):
    """Multi-head attention with a ``query`` projection and one fused ``key_value`` projection.

    Args:
        num_heads, head_dim: heads and their width (``num_heads * head_dim`` need not equal the
            input width: T5's ``d_kv``).
        use_bias: biases on the projections.
        score_scale: multiplies ``query · key``; None is ``head_dim ** -0.5``. T5 uses 1.0 (its
            scale is folded into the initialisation).
        dropout: on the attention probabilities, in training.

    ``call(x, attention_bias=, causal=, source=, key_value=, cache=, cache_index=)``:

    * self-attention: keys and values from ``x``; with ``cache`` (``(batch, heads, 2, max_length,
      head_dim)``) they are written at ``cache_index…`` and the queries attend over the cache;
      returns ``(output, cache)``;
    * cross-attention: keys and values from ``source`` (projected here) or ``key_value`` (from
      ``key_value(source)``, computed once).

    ``causal`` lets a query at position ``cache_index + i`` see keys at or before it; ``attention_bias``
    (float32, broadcastable to ``(batch, heads, queries, keys)``) is added to the scores.
    """

    def __init__(self, num_heads, head_dim, use_bias=False, score_scale=None, dropout=0.0,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.use_bias = use_bias
        self.score_scale = score_scale
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        inner = num_heads * head_dim
        common = {"use_bias": use_bias, "kernel_initializer": self.kernel_initializer,
                  "dtype": self.dtype_policy}
        self.query = keras.layers.Dense(inner, name="query", **common)
        self.key_value_dense = keras.layers.Dense(2 * inner, name="key_value", **common)
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def build(self, input_shape, source_shape=None):
        self.query.build(input_shape)
        self.key_value_dense.build(source_shape or input_shape)
        self.output_dense = keras.layers.Dense(
            input_shape[-1], use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy, name="output")
        self.output_dense.build(tuple(input_shape[:-1]) + (self.num_heads * self.head_dim,))

    def key_value(self, source, calls=KERAS_CALLS):
        """Keys and values of ``source`` (batch, length, width) as ``(batch, heads, 2, length,
        head_dim)``, laid out in that order (``contiguous``) on torch."""
        kv = calls(self.key_value_dense, source)
        kv = reshape(kv, shape(kv)[:-1] + (2, self.num_heads, self.head_dim))
        return contiguous(transpose(kv, (0, 3, 2, 1, 4)))

    def empty_cache(self, batch_size, max_length, dtype=None):
        """A zero self-attention cache ``(batch, heads, 2, max_length, head_dim)``."""
        return ops.zeros((batch_size, self.num_heads, 2, max_length, self.head_dim),
                         dtype or self.compute_dtype)

    @staticmethod
    def write_cache(cache, key_value, cache_index):
        """``cache[:, :, :, i:i + n] = key_value`` (``n`` new positions from ``cache_index``): in
        place on torch, a ``slice_update`` that compiles inside a ``while_loop`` elsewhere."""
        if keras.config.backend() == "torch":
            return write_slice_in_place(cache, key_value, cache_index, axis=3)
        index = ops.cast(cache_index, "int32")
        zero = ops.zeros((), "int32")
        return ops.slice_update(cache, (zero, zero, zero, index, zero), ops.cast(key_value, cache.dtype))

    def call(self, x, attention_bias=None, causal=False, source=None, key_value=None, cache=None,
             cache_index=0, training=None, calls=KERAS_CALLS):
        query = calls(self.query, x)
        query = reshape(query, shape(query)[:-1] + (self.num_heads, self.head_dim))
        if key_value is None:
            key_value = self.key_value(x if source is None else source, calls)
        if cache is not None:
            key_value = cache = self.write_cache(cache, key_value, cache_index)
        key, value = key_value[:, :, 0], key_value[:, :, 1]
        scale = self.head_dim ** -0.5 if self.score_scale is None else self.score_scale
        if (keras.config.backend() == "torch" and not (training and self.dropout)
                and standard_dtype(query.dtype) == "float32"):
            bias = None if attention_bias is None else cast_if_needed(attention_bias, "float32")
            out = fused_attention_heads_first(query, key, value, scale, bias=bias, masked=MASKED,
                                              first_query_position=cache_index if causal else None)
            out = calls(self.output_dense, reshape(out, shape(out)[:2] + (self.num_heads * self.head_dim,)))
            return out if cache is None else (out, cache)
        scores = cast_if_needed(ops.einsum("bqhd,bhkd->bhqk", query, key), "float32")
        if scale != 1.0:
            scores = scores * scale
        if attention_bias is not None:
            scores = scores + cast_if_needed(attention_bias, "float32")  # bfloat16 models: float32 scores
        if causal:
            queries = ops.arange(ops.shape(x)[1], dtype="int32") + ops.cast(cache_index, "int32")
            keys = ops.arange(ops.shape(key)[2], dtype="int32")
            scores = ops.where(keys[None, :] <= queries[:, None], scores, ops.full_like(scores, MASKED))
        probabilities = cast_if_needed(ops.softmax(scores, axis=-1), value.dtype)
        probabilities = calls(self.dropout_layer, probabilities, training=training)
        out = ops.einsum("bhqk,bhkd->bqhd", probabilities, value)
        out = calls(self.output_dense, reshape(out, shape(out)[:2] + (self.num_heads * self.head_dim,)))
        return out if cache is None else (out, cache)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "head_dim": self.head_dim, "use_bias": self.use_bias,
                       "score_scale": self.score_scale, "dropout": self.dropout,
                       "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)})
        return config


@keras.saving.register_keras_serializable(package="kcookbook")
class EncoderDecoderBlock(keras.layers.Layer):
    """Pre-norm self-attention, cross-attention (``cross_attention=True``: a decoder block) and a
    feed-forward network, each with a residual.

    Args:
        num_heads, head_dim: attention heads.
        intermediate_dim: feed-forward width.
        cross_attention: add attention over the encoder output (a decoder block).
        activation: feed-forward activation (``"relu"``, ``"gelu_approximate"``…).
        feed_forward: ``"dense"`` (``output(act(intermediate(x)))``) or ``"gated"``
            (``output(act(gate(x)) * up(x))``).
        normalization: ``"rms"`` (no centring, no bias: T5) or ``"layer"``; ``norm_epsilon``.
        use_bias: biases on the projections and the feed-forward layers.
        score_scale: see ``EncoderDecoderAttention``.
        dropout: after each sublayer and on attention probabilities, in training.
    """

    def __init__(self, num_heads, head_dim, intermediate_dim, cross_attention=False, activation="relu",
                 feed_forward="dense", normalization="rms", norm_epsilon=1e-6, use_bias=False,
                 score_scale=None, dropout=0.0, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if feed_forward not in FEED_FORWARDS:
            raise ValueError(f"feed_forward={feed_forward!r}; expected one of {FEED_FORWARDS}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r}; expected one of {NORMALIZATIONS}.")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.has_cross_attention = cross_attention
        self.activation = activation
        self.feed_forward_type = feed_forward
        self.normalization = normalization
        self.norm_epsilon = norm_epsilon
        self.use_bias = use_bias
        self.score_scale = score_scale
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        attention = {"use_bias": use_bias, "score_scale": score_scale, "dropout": dropout,
                     "kernel_initializer": self.kernel_initializer, "dtype": self.dtype_policy}
        self.self_attention = EncoderDecoderAttention(num_heads, head_dim, name="self_attention",
                                                      **attention)
        self.self_attention_norm = self._norm("self_attention_norm")
        self.cross_attention = self.cross_attention_norm = None
        if cross_attention:
            self.cross_attention = EncoderDecoderAttention(num_heads, head_dim, name="cross_attention",
                                                           **attention)
            self.cross_attention_norm = self._norm("cross_attention_norm")
        feed_forward_cls = GatedFeedForward if feed_forward == "gated" else FeedForward
        self.feed_forward = feed_forward_cls(intermediate_dim, activation, use_bias=use_bias,
                                             kernel_initializer=self.kernel_initializer,
                                             dtype=self.dtype_policy, name="feed_forward")
        self.feed_forward_norm = self._norm("feed_forward_norm")
        self.dropout_layer = keras.layers.Dropout(dropout, dtype=self.dtype_policy)

    def _norm(self, name):
        if self.normalization == "rms":
            return RMSNormalization(self.norm_epsilon, dtype=self.dtype_policy, name=name)
        return keras.layers.LayerNormalization(epsilon=self.norm_epsilon, dtype=self.dtype_policy,
                                               name=name)

    def build(self, input_shape):
        for layer in (self.self_attention, self.self_attention_norm, self.feed_forward,
                      self.feed_forward_norm):
            layer.build(input_shape)
        if self.has_cross_attention:  # the encoder output has the decoder's width
            self.cross_attention.build(input_shape)
            self.cross_attention_norm.build(input_shape)

    def call(self, x, self_attention_bias=None, causal=False, encoder_output=None,
             cross_key_value=None, cross_attention_bias=None, cache=None, cache_index=0,
             training=None, calls=KERAS_CALLS):
        """``cache``/``cache_index``: the self-attention cache (returns ``(x, cache)``);
        ``cross_key_value``: the cross-attention keys/values of the encoder output (else projected
        from ``encoder_output``)."""
        attended = calls.nested(self.self_attention, calls(self.self_attention_norm, x),
                                attention_bias=self_attention_bias, causal=causal, cache=cache,
                                cache_index=cache_index, training=training)
        if cache is not None:
            attended, cache = attended
        x = x + calls(self.dropout_layer, attended, training=training)
        if self.has_cross_attention:
            attended = calls.nested(self.cross_attention, calls(self.cross_attention_norm, x),
                                    attention_bias=cross_attention_bias, source=encoder_output,
                                    key_value=cross_key_value, training=training)
            x = x + calls(self.dropout_layer, attended, training=training)
        feed_forward = calls.nested(self.feed_forward, calls(self.feed_forward_norm, x))
        x = x + calls(self.dropout_layer, feed_forward, training=training)
        return x if cache is None else (x, cache)

    def compute_output_shape(self, input_shape, *args, **kwargs):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads, "head_dim": self.head_dim,
            "intermediate_dim": self.intermediate_dim, "cross_attention": self.has_cross_attention,
            "activation": self.activation, "feed_forward": self.feed_forward_type,
            "normalization": self.normalization, "norm_epsilon": self.norm_epsilon,
            "use_bias": self.use_bias, "score_scale": self.score_scale, "dropout": self.dropout,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config
