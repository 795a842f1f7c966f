"""Causal self-attention for decoders: rotary positions, grouped-query heads, an optional sliding
window, and a key/value cache for fast generation.

It extends :class:`MultiHeadAttention` (same fused ``qkv`` projection, same ``attend``), adding
what a decoder needs:

* ``call(x, padding_mask=...)``: a whole sequence at once (training, scoring);
* ``call(x, cache=cache, cache_index=i)``: ``x`` holds the tokens at positions ``i, i+1, …``; their
  keys and values are written into ``cache`` and the queries attend to every cached position up
  to their own. Returns ``(output, updated_cache)``. The cache is one tensor
  ``(batch, 2, cache_length, kv_heads, head_dim)`` of fixed shape, so the update is a
  ``slice_update`` that compiles inside a ``while_loop`` (jax, TensorFlow/XLA) and an in-place copy on
  torch.

A sliding window of ``w`` lets a query at position ``q`` see keys at ``q - w < k ≤ q`` (Mistral,
the local layers of Gemma 2/3). Such a layer needs only the last ``w`` positions, so its cache can
be a ring (``cache_length``): position ``p`` lives in slot ``p % cache_length``, and after a call
whose last position is ``last`` slot ``s`` holds position ``last - (last - s) % cache_length``
(negative: not written yet), which is what the mask compares. A call writes its ``n`` tokens
before its queries read the cache, so the ring keeps ``w + n - 1`` positions: the oldest of the
``n`` queries still sees its ``w - 1`` predecessors. Calls must come in order of position (a call
may re-write positions already written, with the same tokens) and write at most ``step_length``
tokens each; positions written ahead of the queries (a prefill chunk's padding) land in slots whose
positions are out of every later query's window until decoding overwrites them. A layer without a
window keeps every position (slot = position). Gemma's options: queries scaled by ``query_scale`` instead of ``1/sqrt(head_dim)``
(``query_pre_attn_scalar ** -0.5``), scores soft-capped (``cap · tanh(score / cap)``, Gemma 2),
and each query and key head RMS-normalised before the rotation (QK-norm, Gemma 3).

    >>> attention = CausalSelfAttention(num_heads=4, head_dim=2, num_key_value_heads=2,
    ...                                 rotary_max_wavelength=10000)
    >>> x = ops.ones((1, 5, 8))
    >>> tuple(attention(x).shape)
    (1, 5, 8)
    >>> cache = attention.empty_cache(batch_size=1, max_length=16)
    >>> out, cache = attention(x, cache=cache, cache_index=0)
    >>> tuple(cache.shape)
    (1, 2, 16, 2, 2)
    >>> local = CausalSelfAttention(num_heads=4, head_dim=2, num_key_value_heads=2, sliding_window=3)
    >>> local.cache_length(max_length=16, step_length=1), local.cache_length(16, step_length=5)
    (3, 7)
"""

from typing import NamedTuple

import keras
from keras import ops

from kcookbook.components.activations import soft_cap
from kcookbook.components.attention import MultiHeadAttention
from kcookbook.components.rms_normalization import RMSNormalization
from kcookbook.components.rotary_embedding import RotaryEmbedding
from kcookbook.components.torch_speedups import (
    KERAS_CALLS,
    cast_if_needed,
    fused_attention_heads_first,
    reshape,
    shape,
    standard_dtype,
    transpose,
    write_key_value_in_place,
)

MASKED = -1e30  # added to the scores of masked keys: exp(MASKED - max) is 0 in float32


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


class DecodingStep(NamedTuple):
    """What every attention layer of one cached call (a prefill chunk, a decoding step) shares:
    the positions of the new tokens, their rotary cosines and sines, and the attention mask over the
    cache. ``CausalSelfAttention.decoding_step`` computes it once; each layer's ``call(...,
    decoding_step=)`` reuses it instead of recomputing it (on eager torch, each Keras op costs more
    than its arithmetic when decoding one token).

    Fields: ``index`` (int32 scalar, the first new position), ``cos`` and ``sin`` ((1, length, 1,
    head_dim), None without rotary positions), ``attention_bias`` (float32 (1, 1, length,
    slots): 0 where a query may attend, ``MASKED`` elsewhere, over the cache's first ``slots``:
    all ``cache_length``, or on torch, which runs eagerly, only those written so far — the queries
    read no more) and ``cache_slots`` (the
    slots the new tokens are written to, ``position % cache_length``: int64 on torch, where they
    are written in place, int32 elsewhere).
    """

    index: object
    cos: object
    sin: object
    attention_bias: object
    cache_slots: object


@keras.saving.register_keras_serializable(package="kcookbook")
class CausalSelfAttention(MultiHeadAttention):
    """Decoder self-attention with a key/value cache.

    Args (besides those of :class:`MultiHeadAttention`):
        rotary_max_wavelength: base of the rotary position embedding; None for no rotary positions
            (models with learned absolute positions, e.g. GPT-2).
        rotary_scaling_factor: linear RoPE scaling (positions divided by it).
        sliding_window: attend only to the last ``sliding_window`` positions; None for all.
        query_scale: the scores' scale; None for ``head_dim ** -0.5``.
        logit_soft_cap: scores become ``cap · tanh(score / cap)``; None for no cap.
        query_key_norm: RMS-normalise each query and key head (``query_norm``, ``key_norm``, with
            ``norm_epsilon`` and ``norm_unit_offset``) before the rotation.
    """

    def __init__(self, num_heads, head_dim, num_key_value_heads=None, use_bias=False,
                 output_dim=None, rotary_max_wavelength=None, rotary_scaling_factor=1.0,
                 sliding_window=None, query_scale=None, logit_soft_cap=None, query_key_norm=False,
                 norm_epsilon=1e-6, norm_unit_offset=False, kernel_initializer="glorot_uniform",
                 **kwargs):
        super().__init__(num_heads, head_dim, num_key_value_heads, use_bias, output_dim,
                         kernel_initializer, **kwargs)
        self.rotary_max_wavelength = rotary_max_wavelength
        self.rotary_scaling_factor = rotary_scaling_factor
        self.sliding_window = sliding_window
        self.query_scale = query_scale
        self.logit_soft_cap = logit_soft_cap
        self.query_key_norm = query_key_norm
        self.norm_epsilon = norm_epsilon
        self.norm_unit_offset = norm_unit_offset
        self.rotary = None
        if rotary_max_wavelength is not None:
            self.rotary = RotaryEmbedding(rotary_max_wavelength, rotary_scaling_factor,
                                          dtype=self.dtype_policy, name="rotary")
        self.query_norm = self.key_norm = None
        if query_key_norm:
            self.query_norm, self.key_norm = (
                RMSNormalization(norm_epsilon, norm_unit_offset, dtype=self.dtype_policy, name=name)
                for name in ("query_norm", "key_norm"))

    def build(self, input_shape):
        super().build(input_shape)
        if self.query_key_norm:
            for norm in (self.query_norm, self.key_norm):
                norm.build((None, None, None, self.head_dim))

    def cache_length(self, max_length, step_length=None):
        """Positions the cache keeps for generation up to ``max_length`` with calls of at most
        ``step_length`` tokens: ``max_length``, or with a sliding window and a ``step_length`` a
        ring of ``sliding_window + step_length - 1`` when that is shorter (see the module's
        docstring)."""
        if self.sliding_window is None or step_length is None:
            return max_length
        return min(max_length, self.sliding_window + step_length - 1)

    def empty_cache(self, batch_size, max_length, dtype=None, step_length=None):
        """A zero cache ``(batch, 2, cache_length(max_length, step_length), kv_heads, head_dim)``
        for ``call(..., cache=)``; ``step_length`` None: every position (any call length)."""
        shape = (batch_size, 2, self.cache_length(max_length, step_length),
                 self.num_key_value_heads, self.head_dim)
        return ops.zeros(shape, dtype or self.compute_dtype)

    @property
    def decoding_step_key(self):
        """Layers with equal keys can share one ``DecodingStep``."""
        return (self.rotary_max_wavelength, self.rotary_scaling_factor, self.head_dim,
                self.sliding_window, self.compute_dtype)

    def _positions(self, length, index):
        """Positions ``index…index + length - 1`` and their rotary cosines and sines (or None)."""
        positions = ops.arange(length, dtype="int32") + index
        if self.rotary is None:
            return positions, None, None
        return (positions,) + self.rotary.cos_sin(positions, self.head_dim, self.compute_dtype)

    def decoding_step(self, length, cache_length, cache_index):
        """The ``DecodingStep`` of ``length`` new tokens at ``cache_index…`` in a cache of
        ``cache_length`` positions, for this layer and every layer with the same
        ``decoding_step_key``."""
        if isinstance(length, int) and isinstance(cache_length, int) and length > cache_length:
            raise ValueError(f"{length} tokens in one cached call, but the cache keeps "
                             f"{cache_length} positions: make it with step_length={length} or more "
                             "(empty_cache), or call with fewer tokens at a time.")
        index = ops.cast(cache_index, "int32")
        positions, cos, sin = self._positions(length, index)
        last = index + length - 1  # each slot's position once this call has written its tokens
        read = cache_length
        if keras.config.backend() == "torch":  # eager: the slots past the last written are masked,
            read = min(int(last) + 1, cache_length)  # so the queries need not read them at all
        held = last - ops.mod(last - ops.arange(read, dtype="int32"), cache_length)
        mask = causal_attention_mask(positions, held, (held >= 0)[None], self.sliding_window)
        bias = ops.where(mask, ops.zeros((), "float32"), ops.full((), MASKED, "float32"))
        slots = ops.mod(positions, cache_length)
        if keras.config.backend() == "torch":  # written in place (write_key_value)
            slots = ops.cast(slots, "int64")
        return DecodingStep(index, cos, sin, bias, slots)

    def _heads_of(self, qkv):
        """(batch, length, fused) → (batch, length, heads, head_dim) with the query heads first,
        then the key heads, then the value heads; and the index where the value heads start."""
        total = self.num_heads + 2 * self.num_key_value_heads
        heads = reshape(qkv, tuple(shape(qkv)[:-1]) + (total, self.head_dim))
        return heads, self.num_heads + self.num_key_value_heads

    def split_heads(self, qkv):
        """(batch, length, fused) → query, key, value each (batch, length, heads, head_dim): one
        reshape, then views of its heads."""
        heads, values_start = self._heads_of(qkv)
        return (heads[:, :, :self.num_heads], heads[:, :, self.num_heads:values_start],
                heads[:, :, values_start:])

    def rotated_heads(self, qkv, cos, sin, calls=KERAS_CALLS):
        """``split_heads`` with rotary positions applied to the queries and keys (one rotation of
        both: they are adjacent in the fused projection), after QK-norm when the layer has it."""
        if self.rotary is None and not self.query_key_norm:
            return self.split_heads(qkv)
        heads, values_start = self._heads_of(qkv)
        query_key = heads[:, :, :values_start]
        if self.query_key_norm:
            query_key = ops.concatenate([calls(self.query_norm, query_key[:, :, :self.num_heads]),
                                         calls(self.key_norm, query_key[:, :, self.num_heads:])],
                                        axis=2)
        if self.rotary is not None:
            query_key = self.rotary.rotate(query_key, cos, sin)
        return (query_key[:, :, :self.num_heads], query_key[:, :, self.num_heads:],
                heads[:, :, values_start:])

    def attend(self, query, key, value, attention_mask=None, is_causal=False, attention_bias=None,
               calls=KERAS_CALLS):
        """Grouped-query attention written out: query heads are grouped under their key/value head
        (no copies of keys and values), scores and softmax in float32; XLA fuses it on jax/TF. On
        torch a cached call (``attention_bias``, float32, no soft cap) runs the fused kernel
        instead (``torch_speedups.fused_attention_heads_first``: grouped heads without copies,
        ~1/3 of the einsums' time per decoding step at SmolLM2's shape). ``attention_bias``
        (float32, broadcastable to (batch, heads, queries, keys)) is added to the scores: 0 to
        attend, ``MASKED`` not to (the same scores as ``attention_mask``). ``calls`` calls the
        output projection (``torch_speedups.LayerCalls``). (Not ``attention.dot_product_attention``:
        it would copy grouped keys/values, and the cache's float bias is built once per step.)"""
        batch, length = shape(query)[:2]
        scale = self.head_dim ** -0.5 if self.query_scale is None else self.query_scale
        if (attention_mask is None and attention_bias is not None and self.logit_soft_cap is None
                and keras.config.backend() == "torch" and not isinstance(query, keras.KerasTensor)
                and {standard_dtype(x.dtype) for x in (query, key, value)} == {"float32"}):
            # a cached call (decoding, prefill): torch's fused kernel reads the cache's strided
            # keys and values as they are (scores and softmax in float32, as below)
            out = fused_attention_heads_first(query, transpose(key, (0, 2, 1, 3)),
                                              transpose(value, (0, 2, 1, 3)), scale,
                                              bias=cast_if_needed(attention_bias, "float32"))
            return calls(self.output_dense, reshape(out, (batch, length, self.num_heads * self.head_dim)))
        groups = self.num_heads // self.num_key_value_heads
        query = reshape(query, (batch, length, self.num_key_value_heads, groups, self.head_dim))
        scores = ops.einsum("bqhgd,bkhd->bhgqk", query, key)
        scores = cast_if_needed(scores, "float32") * scale
        if self.logit_soft_cap is not None:
            scores = soft_cap(scores, self.logit_soft_cap)
        if attention_mask is not None:
            scores = ops.where(attention_mask[:, :, None], scores, ops.full_like(scores, MASKED))
        if attention_bias is not None:
            scores = scores + cast_if_needed(attention_bias, "float32")[:, :, None]  # bfloat16 models build it in bfloat16
        probabilities = cast_if_needed(ops.softmax(scores, axis=-1), value.dtype)
        out = ops.einsum("bhgqk,bkhd->bqhgd", probabilities, value)
        return calls(self.output_dense, reshape(out, (batch, length, self.num_heads * self.head_dim)))

    def call(self, x, padding_mask=None, cache=None, cache_index=0, decoding_step=None,
             calls=KERAS_CALLS):
        """``decoding_step`` (with ``cache``): this call's shared ``DecodingStep``, computed here
        when not given. ``calls``: how the projections are called (``torch_speedups.LayerCalls``)."""
        qkv = calls(self.qkv, x)
        if cache is None:
            positions, cos, sin = self._positions(ops.shape(x)[1], ops.cast(cache_index, "int32"))
            query, key, value = self.rotated_heads(qkv, cos, sin, calls)
            mask = causal_attention_mask(positions, positions, padding_mask, self.sliding_window)
            return self.attend(query, key, value, attention_mask=mask, calls=calls)
        step = decoding_step
        if step is None:
            step = self.decoding_step(ops.shape(x)[1], ops.shape(cache)[2], cache_index)
        query, key, value = self.rotated_heads(qkv, step.cos, step.sin, calls)
        cache = self.write_key_value(cache, key, value, step,
                                     wraps=self.sliding_window is not None)
        keys, values = cache[:, 0], cache[:, 1]
        read = shape(step.attention_bias)[-1]
        if read != shape(cache)[2]:  # torch: the slots written so far (DecodingStep)
            keys, values = keys[:, :read], values[:, :read]
        out = self.attend(query, keys, values, attention_bias=step.attention_bias, calls=calls)
        return out, cache

    @staticmethod
    def write_key_value(cache, key, value, step, wraps=False):
        """``cache[:, 0/1, slots] = key/value`` at ``step.cache_slots``: on torch in place
        (``torch_speedups.write_key_value_in_place``: no copy of the whole cache), elsewhere a
        ``slice_update`` that compiles inside a ``while_loop`` (jax, TensorFlow). ``wraps``: the
        cache is a ring (a sliding window's), where a chunk of several tokens may run past its
        end; there each slot takes the chunk's token that lands on it, if any (a gather and a
        ``where``)."""
        if keras.config.backend() == "torch":
            return write_key_value_in_place(cache, key, value, step)
        zero = ops.zeros((), "int32")
        update = ops.cast(ops.stack([key, value], axis=1), cache.dtype)
        length = update.shape[2]
        if length == 1 or not wraps:  # contiguous slots
            return ops.slice_update(cache, (zero, zero, step.cache_slots[0], zero, zero), update)
        cache_length = cache.shape[2]
        offsets = ops.mod(ops.arange(cache_length, dtype="int32") - step.index, cache_length)
        gathered = ops.take(update, ops.minimum(offsets, length - 1), axis=2)
        return ops.where((offsets < length)[None, None, :, None, None], gathered, cache)

    def get_config(self):
        config = super().get_config()
        config.update({"rotary_max_wavelength": self.rotary_max_wavelength,
                       "rotary_scaling_factor": self.rotary_scaling_factor,
                       "sliding_window": self.sliding_window, "query_scale": self.query_scale,
                       "logit_soft_cap": self.logit_soft_cap, "query_key_norm": self.query_key_norm,
                       "norm_epsilon": self.norm_epsilon, "norm_unit_offset": self.norm_unit_offset})
        return config
