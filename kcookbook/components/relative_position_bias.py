"""Bucketed relative position bias (Raffel et al., 2020, "T5"): positions enter attention as a learned
per-head bias on the scores, indexed by the bucket of ``key_position - query_position``.

Small distances get a bucket each; larger ones share logarithmically wider buckets up to
``max_distance``, beyond which all fall in the last bucket. Bidirectional attention (an encoder) gives
half the buckets to keys after the query; unidirectional attention (a causal decoder) buckets only
the keys at or before it. One table serves every layer of a stack: the bias is computed once per
call and added to the scores of each layer.

    >>> bias = RelativePositionBias(num_heads=2, num_buckets=8, max_distance=16)
    >>> tuple(bias(ops.zeros((1, 5, 4))).shape)
    (1, 2, 5, 5)
    >>> [int(b) for b in relative_position_bucket(ops.arange(-3, 4), True, 8, 16)]
    [2, 2, 1, 0, 5, 6, 6]
"""

import math

import keras
from keras import ops


def relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """Bucket ids (int32, in ``[0, num_buckets)``) of ``key_position - query_position``."""
    relative_position = ops.cast(relative_position, "int32")
    buckets = ops.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + ops.cast(relative_position > 0, "int32") * num_buckets
        distance = ops.abs(relative_position)
    else:
        distance = -ops.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    # log-spaced buckets past max_exact (distance 0 is "small", so the log never sees it)
    scaled = ops.log(ops.cast(ops.maximum(distance, 1), "float32") / max_exact) / math.log(
        max_distance / max_exact) * (num_buckets - max_exact)
    large = ops.minimum(max_exact + ops.cast(scaled, "int32"), num_buckets - 1)
    return buckets + ops.where(distance < max_exact, distance, large)


@keras.saving.register_keras_serializable(package="kcookbook")
class RelativePositionBias(keras.layers.Layer):
    """A ``(num_buckets, num_heads)`` table → float32 bias ``(1, heads, queries, keys)``.

    ``layer(x)`` gives the bias of the sequence ``x`` (batch, length, …) attending to itself;
    ``layer(x, key_length=n, query_start=i)`` the bias of queries at positions ``i…`` over keys
    ``0…n-1`` (a decoding step over a key/value cache of ``n`` positions).

    Args:
        num_heads: attention heads (one bias per head).
        num_buckets: rows of the table.
        max_distance: distance from which every position shares the last bucket.
        bidirectional: keys after the query get their own buckets (encoders); False for decoders.
    """

    def __init__(self, num_heads, num_buckets=32, max_distance=128, bidirectional=True,
                 embeddings_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(name="embeddings", shape=(self.num_buckets, self.num_heads),
                                          initializer=self.embeddings_initializer)

    def call(self, x, key_length=None, query_start=0):
        query_length = ops.shape(x)[1]
        key_length = query_length if key_length is None else key_length
        queries = ops.arange(query_length, dtype="int32") + ops.cast(query_start, "int32")
        keys = ops.arange(key_length, dtype="int32")
        buckets = relative_position_bucket(keys[None, :] - queries[:, None], self.bidirectional,
                                           self.num_buckets, self.max_distance)
        values = ops.take(ops.cast(self.embeddings, "float32"), buckets, axis=0)  # (q, k, heads)
        return ops.transpose(values, (2, 0, 1))[None]

    def compute_output_shape(self, input_shape, key_length=None, query_start=0):
        return (1, self.num_heads, input_shape[1], key_length or input_shape[1])

    def compute_output_spec(self, x, key_length=None, query_start=0):
        return keras.KerasTensor(self.compute_output_shape(x.shape, key_length), dtype="float32")

    def get_config(self):
        config = super().get_config()
        config.update({"num_heads": self.num_heads, "num_buckets": self.num_buckets,
                       "max_distance": self.max_distance, "bidirectional": self.bidirectional,
                       "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer)})
        return config
