"""Causal self-attention for decoders: rotary positions, grouped-query heads, an optional sliding
window, and a key/value cache for fast generation.

It extends :class:`MultiHeadAttention` (same fused ``qkv`` projection, same ``attend``), adding
what a decoder needs:

* ``call(x, padding_mask=...)``: a whole sequence at once (training, scoring);
* ``call(x, cache=cache, cache_index=i)``: ``x`` holds the tokens at positions ``i, i+1, …``; their
  keys and values are written into ``cache`` at those positions and the queries attend to every
  cached position up to their own. Returns ``(output, updated_cache)``. The cache is one tensor
  ``(batch, 2, max_length, kv_heads, head_dim)`` of fixed shape, so the update is a
  ``slice_update`` that compiles inside a ``while_loop`` (jax, TensorFlow/XLA) and an in-place copy on
  torch.

A sliding window of ``w`` lets a query at position ``q`` see keys at ``q - w < k ≤ q`` (Mistral).
The cache keeps every position and the window is applied by the mask.

    >>> attention = CausalSelfAttention(num_heads=4, head_dim=2, num_key_value_heads=2,
    ...                                 rotary_max_wavelength=10000)
    >>> x = ops.ones((1, 5, 8))
    >>> tuple(attention(x).shape)
    (1, 5, 8)
    >>> cache = attention.empty_cache(batch_size=1, max_length=16)
    >>> out, cache = attention(x, cache=cache, cache_index=0)
    >>> tuple(cache.shape)
    (1, 2, 16, 2, 2)
"""

import keras
from keras import ops

from kcookbook.components.attention import MultiHeadAttention
from kcookbook.components.direct_calls import run_layer
from kcookbook.components.rotary_embedding import RotaryEmbedding


def causal_attention_mask(query_positions, key_positions, padding_mask=None, sliding_window=None):
    """``(batch or 1, 1, queries, keys)`` bool: True where a query may attend to a key.

    A query sees keys at or before its position (within ``sliding_window`` when given) that are
    not padding. It always sees itself, so no row is empty (an empty row would give NaNs for padding
    positions, and NaN · 0 would leak into real tokens).
    """
    queries = query_positions[:, None]
    keys = key_positions[None, :]
    allowed = keys <= queries
    if sliding_window is not None:
        allowed = ops.logical_and(allowed, keys > queries - sliding_window)
    allowed = allowed[None, None]
    if padding_mask is not None:
        allowed = ops.logical_and(allowed, ops.cast(padding_mask, "bool")[:, None, None, :])
    return ops.logical_or(allowed, (keys == queries)[None, None])


def write_to_cache(cache, update, index):
    """``cache[:, :, index:index + n] = update``; in place on torch (no copy of the whole cache, and
    ``index`` stays a tensor, so ``torch.compile`` traces it without a host sync or a recompile)."""
    if keras.backend.backend() == "torch":
        positions = ops.arange(update.shape[2], dtype="int32") + ops.cast(index, "int32")
        return cache.index_copy_(2, ops.cast(positions, "int64"), ops.cast(update, cache.dtype))
    index = ops.cast(index, "int32")
    zero = ops.zeros((), "int32")
    return ops.slice_update(cache, (zero, zero, index, zero, zero), ops.cast(update, cache.dtype))


@keras.saving.register_keras_serializable(package="kcookbook")
class CausalSelfAttention(MultiHeadAttention):
    """Decoder self-attention with a key/value cache.

    Args (besides those of :class:`MultiHeadAttention`):
        rotary_max_wavelength: base of the rotary position embedding; None for no rotary positions
            (models with learned absolute positions, e.g. GPT-2).
        rotary_scaling_factor: linear RoPE scaling (positions divided by it).
        sliding_window: attend only to the last ``sliding_window`` positions; None for all.
    """

    def __init__(self, num_heads, head_dim, num_key_value_heads=None, use_bias=False,
                 output_dim=None, rotary_max_wavelength=None, rotary_scaling_factor=1.0,
                 sliding_window=None, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(num_heads, head_dim, num_key_value_heads, use_bias, output_dim,
                         kernel_initializer, **kwargs)
        self.rotary_max_wavelength = rotary_max_wavelength
        self.rotary_scaling_factor = rotary_scaling_factor
        self.sliding_window = sliding_window
        self.rotary = None
        if rotary_max_wavelength is not None:
            self.rotary = RotaryEmbedding(rotary_max_wavelength, rotary_scaling_factor,
                                          dtype=self.dtype_policy, name="rotary")

    def empty_cache(self, batch_size, max_length, dtype=None):
        """A zero cache ``(batch, 2, max_length, kv_heads, head_dim)`` for ``call(..., cache=)``."""
        shape = (batch_size, 2, max_length, self.num_key_value_heads, self.head_dim)
        return ops.zeros(shape, dtype or self.compute_dtype)

    def attend(self, query, key, value, attention_mask=None, is_causal=False):
        """Grouped-query attention written out: query heads are grouped under their key/value head
        (no copies of keys and values), scores and softmax in float32. For one-token decoding steps
        this is several times faster on torch than the fused kernel, and XLA fuses it on jax/TF."""
        batch, length = ops.shape(query)[0], ops.shape(query)[1]
        groups = self.num_heads // self.num_key_value_heads
        query = ops.reshape(query, (batch, length, self.num_key_value_heads, groups, self.head_dim))
        scores = ops.einsum("bqhgd,bkhd->bhgqk", query, key)
        scores = ops.cast(scores, "float32") * (self.head_dim ** -0.5)
        if attention_mask is not None:
            scores = ops.where(attention_mask[:, :, None], scores, ops.full_like(scores, -1e30))
        probabilities = ops.cast(ops.softmax(scores, axis=-1), value.dtype)
        out = ops.einsum("bhgqk,bkhd->bqhgd", probabilities, value)
        return run_layer(self.output_dense,
                         ops.reshape(out, (batch, length, self.num_heads * self.head_dim)))

    def call(self, x, padding_mask=None, cache=None, cache_index=0):
        query, key, value = self.split_heads(run_layer(self.qkv, x))
        positions = ops.arange(ops.shape(x)[1], dtype="int32") + ops.cast(cache_index, "int32")
        if self.rotary is not None:
            cos, sin = self.rotary.cos_sin(positions, self.head_dim, query.dtype)
            query = self.rotary.rotate(query, cos, sin)
            key = self.rotary.rotate(key, cos, sin)
        if cache is None:
            mask = causal_attention_mask(positions, positions, padding_mask, self.sliding_window)
            return self.attend(query, key, value, attention_mask=mask)
        cache = write_to_cache(cache, ops.stack([key, value], axis=1), cache_index)
        key, value = cache[:, 0], cache[:, 1]
        key_positions = ops.arange(ops.shape(cache)[2], dtype="int32")
        mask = causal_attention_mask(positions, key_positions, None, self.sliding_window)
        return self.attend(query, key, value, attention_mask=mask), cache

    def get_config(self):
        config = super().get_config()
        config.update({"rotary_max_wavelength": self.rotary_max_wavelength,
                       "rotary_scaling_factor": self.rotary_scaling_factor,
                       "sliding_window": self.sliding_window})
        return config
