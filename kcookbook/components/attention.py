"""Multi-head self-attention with one fused query/key/value projection.

One ``(hidden, (heads + 2·kv_heads)·head_dim)`` matmul instead of three: fewer, larger kernels are
faster on every backend (and on torch, fewer Python-level layer calls). The attention itself is
``dot_product_attention`` below: heads-first batched matmuls on jax (faster on XLA's CPU backend
than ``jax.nn.dot_product_attention``'s lowering), ``keras.ops.dot_product_attention`` elsewhere
(``torch.nn.functional.scaled_dot_product_attention``, XLA on TF).

Grouped-query attention: ``num_key_value_heads < num_heads`` shares each key/value head among
``num_heads // num_key_value_heads`` query heads.

``query_length=n`` computes the output of the first ``n`` positions only: their queries attend
to the keys and values of every position, so the result equals ``attention(x)[:, :n]``, without the
query projection, scores and output projection of the other positions (a classifier that reads
only the first token of the last block needs one).

    >>> attention = MultiHeadAttention(num_heads=2, head_dim=4)
    >>> x = ops.ones((1, 3, 8))
    >>> tuple(attention(x, attention_mask=ops.ones((1, 1, 1, 3), "bool")).shape)
    (1, 3, 8)
    >>> tuple(attention(x, query_length=1).shape)
    (1, 1, 8)
"""

import keras
import numpy as np
from keras import ops


def dot_product_attention(query, key, value, bias=None, mask=None, is_causal=False, scale=None):
    """Scaled dot-product attention on ``(batch, length, heads, head_dim)`` tensors, as
    ``keras.ops.dot_product_attention``: ``softmax(query·keyᵀ·scale + bias)·value`` with ``scale``
    ``head_dim ** -0.5`` by default, ``bias`` broadcastable to (batch, heads, queries, keys), ``mask``
    (same shape, True where a query may attend) and ``is_causal`` (query ``i`` sees keys ``≤ i``).
    Query, key and value have the same number of heads.

    On jax: two batched matmuls with the heads first, the scores and the softmax in float32 (also
    for float16 / bfloat16 inputs), masked scores set to a large negative number, as
    ``jax.nn.dot_product_attention``. jax's own XLA lowering (einsums in the batch-length-heads
    layout) makes XLA's CPU backend copy the probability tensor into a transposed layout: for a
    diffusion UNet's 1,024-pixel self-attention (batch 2, 4 heads of 16) it took 36 ms where the
    heads-first form takes 16 ms (issue 18). When the scores are larger than ``CHUNK_SCORE_BYTES``
    and no bias, mask or causal mask differs between queries, the queries attend in chunks
    (``attend_in_chunks``): the same UNet step took ~0.9× the time with its 32 MB of scores in two
    chunks (paired runs, issue 18). torch and TensorFlow keep their fused kernels; torch's
    takes one additive mask, so there more than one of ``bias``/``mask``/``is_causal`` is folded
    into one float bias first.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        key, value = heads_first(key, value)
        length = _chunk_length(query, key, bias, mask, is_causal)
        if length is None:
            return heads_first_attention(query, key, value, bias, mask, is_causal, scale)
        return attend_in_chunks(lambda chunk: heads_first_attention(chunk, key, value, bias, mask, scale=scale),
                                query, length)
    if backend == "torch" and (bias is not None) + (mask is not None) + bool(is_causal) > 1:
        allowed = _allowed(mask, is_causal, ops.shape(query)[1], ops.shape(key)[1])
        bias = ops.zeros((), query.dtype) if bias is None else ops.cast(bias, query.dtype)
        bias = ops.where(allowed, bias, ops.cast(_large_negative(query.dtype), query.dtype))
        mask, is_causal = None, False
    return ops.dot_product_attention(query, key, value, bias=bias, mask=mask, scale=scale, is_causal=is_causal)


def _allowed(mask, is_causal, query_length, key_length):
    """``mask`` (cast to bool) and, with ``is_causal``, the lower triangle (query ``i``, key ``≤ i``)."""
    allowed = None if mask is None else ops.cast(mask, "bool")
    if is_causal:
        causal = ops.arange(query_length)[:, None] >= ops.arange(key_length)[None, :]
        allowed = causal if allowed is None else ops.logical_and(allowed, causal)
    return allowed


def _large_negative(dtype):
    """What masked scores become: -0.7 × the largest ``dtype`` number, as keras and jax use."""
    return -0.7 * float(np.finfo("float16" if keras.backend.standardize_dtype(dtype) == "float16" else "float32").max)


# On jax, queries attend in chunks whose scores (float32) take at most this many bytes, so that a
# chunk's scores stay in the CPU's cache through scores, softmax and product; the whole score tensor
# is otherwise written and reread by each pass (``queries_per_chunk``, ``attend_in_chunks``).
CHUNK_SCORE_BYTES = 16 * 2 ** 20


def queries_per_chunk(num_queries, bytes_per_query, multiple=1):
    """On jax, the most queries of one chunk — a multiple of ``multiple`` that divides
    ``num_queries`` — whose scores (``bytes_per_query`` each) fit in ``CHUNK_SCORE_BYTES`` (at
    least ``multiple``); ``num_queries`` (one chunk) elsewhere, where torch and TensorFlow have
    fused kernels."""
    if keras.backend.backend() != "jax":
        return num_queries
    fit = max(multiple, CHUNK_SCORE_BYTES // max(1, bytes_per_query))
    return max(n for n in range(multiple, num_queries + 1, multiple) if num_queries % n == 0 and n <= fit)


def attend_in_chunks(attend_chunk, query, length, *per_chunk):
    """``attend_chunk`` on the (batch, queries, heads, head_dim) ``query`` split into chunks of
    ``length`` queries, one chunk at a time (``ops.map``); each of ``per_chunk`` has one entry per
    chunk on its first axis and ``attend_chunk(query_chunk, *entries)`` gets that chunk's. The
    chunks' (batch, length, heads, head_dim) outputs are put back together in query order."""
    batch, num_queries, heads, head_dim = ops.shape(query)
    chunks = num_queries // length
    queries = ops.moveaxis(ops.reshape(query, (-1, chunks, length, heads, head_dim)), 1, 0)
    if per_chunk:
        out = ops.map(lambda xs: attend_chunk(*xs), (queries, *per_chunk))
    else:
        out = ops.map(attend_chunk, queries)
    return ops.reshape(ops.moveaxis(out, 0, 1), (-1, num_queries) + tuple(ops.shape(out)[3:]))


def _chunk_length(query, key, bias, mask, is_causal):
    """Queries per chunk for ``dot_product_attention`` on jax (with ``key`` heads-first), or None:
    one chunk, when the scores fit in ``CHUNK_SCORE_BYTES``, when no divisor of the number of queries
    is at least half of what fits, when a causal mask, a bias or a mask
    differs between queries, or when a size is not known while tracing (a symbolic dimension)."""
    num_queries = query.shape[1]
    sizes = (num_queries, key.shape[0], key.shape[1], key.shape[3])
    if not all(isinstance(size, int) for size in sizes) or is_causal or any(
            x is not None and len(x.shape) >= 2 and x.shape[-2] != 1 for x in (bias, mask)):
        return None
    _, batch, heads, num_keys = sizes
    length = queries_per_chunk(num_queries, 4 * batch * heads * num_keys)
    fit = CHUNK_SCORE_BYTES // (4 * batch * heads * num_keys)
    # No chunks either when no divisor of the queries comes near what fits: ViT-B's 197 tokens
    # (a prime) would go one query at a time, 4.6x slower than unchunked at batch 32.
    return None if length == num_queries or 2 * length < fit else length


def heads_first(key, value):
    """(batch, keys, heads, head_dim) keys and values → (batch, heads, head_dim, keys) keys and
    (batch, heads, keys, head_dim) values, the layouts ``heads_first_attention`` takes (transpose
    them once when several chunks of queries attend to the same keys)."""
    return ops.transpose(key, (0, 2, 3, 1)), ops.transpose(value, (0, 2, 1, 3))


def heads_first_attention(query, key, value, bias=None, mask=None, is_causal=False, scale=None):
    """``dot_product_attention`` with ``key`` and ``value`` from ``heads_first`` (``query`` and the
    result stay (batch, queries, heads, head_dim)): two batched matmuls with the heads first,
    scores and softmax in float32 (half-precision inputs are widened for the scores, whose products
    are then exact), masked scores -0.7 × the largest float32, as ``jax.nn.dot_product_attention``."""
    if scale is None:
        scale = query.shape[-1] ** -0.5
    query = ops.transpose(query, (0, 2, 1, 3))  # (batch, heads, queries, head_dim)
    if keras.backend.standardize_dtype(query.dtype) != "float32":
        query, key = ops.cast(query, "float32"), ops.cast(key, "float32")
    scores = ops.matmul(query, key) * scale
    if bias is not None:
        scores = scores + ops.cast(bias, "float32")
    allowed = _allowed(mask, is_causal, ops.shape(query)[2], ops.shape(key)[3])
    if allowed is not None:
        scores = ops.where(allowed, scores, _large_negative("float32"))
    probabilities = ops.cast(ops.softmax(scores, axis=-1), value.dtype)
    return ops.transpose(ops.matmul(probabilities, value), (0, 2, 1, 3))


def check_query_length(layer, query_length):
    if isinstance(query_length, bool) or not isinstance(query_length, int) or query_length < 1:
        raise ValueError(f"{layer.name}: query_length must be a positive Python int (the number of "
                         f"leading positions to compute), got {query_length!r}.")


def query_length_shape(input_shape, query_length=None):
    """The shape ``(batch, length, ...)`` with ``length`` cut to ``query_length`` (None: unchanged)."""
    input_shape = tuple(input_shape)
    if query_length is None:
        return input_shape
    length = input_shape[1]
    return input_shape[:1] + (query_length if length is None else min(length, query_length),) + input_shape[2:]


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
    attending is allowed, and ``is_causal`` for decoder self-attention; ``query_length`` (a Python
    int) returns the outputs of the first ``query_length`` positions only (keys and values still
    come from every position; ``attention_mask`` may be given for all queries or for those).
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

    def _heads(self, x, num_heads):
        """(batch, length, num_heads·head_dim) → (batch, length, num_heads, head_dim)."""
        return ops.reshape(x, ops.shape(x)[:-1] + (num_heads, self.head_dim))

    def _split_key_value(self, kv):
        kv_width = self.num_key_value_heads * self.head_dim
        return (self._heads(kv[..., :kv_width], self.num_key_value_heads),
                self._heads(kv[..., kv_width:], self.num_key_value_heads))

    def split_heads(self, qkv):
        """(batch, length, fused) → query, key, value each (batch, length, heads, head_dim)."""
        q_width = self.num_heads * self.head_dim
        return (self._heads(qkv[..., :q_width], self.num_heads),) + self._split_key_value(
            qkv[..., q_width:])

    def project_first_queries(self, inputs, query_length):
        """Queries of the first ``query_length`` positions; keys and values of every position.

        The fused kernel is sliced: the query columns multiply ``query_length`` rows only. (A
        quantized projection keeps Keras's own call, on every row, and the extra queries are dropped.)
        """
        q_width = self.num_heads * self.head_dim
        if self.qkv.quantization_mode:
            qkv = self.qkv(inputs)
            query = qkv[:, :query_length, :q_width]
            key_value = qkv[..., q_width:]
        else:
            kernel, bias = self.qkv.kernel, self.qkv.bias  # ``kernel`` includes a LoRA update
            query = ops.matmul(inputs[:, :query_length], kernel[:, :q_width])
            key_value = ops.matmul(inputs, kernel[:, q_width:])
            if bias is not None:
                query = query + bias[:q_width]
                key_value = key_value + bias[q_width:]
        return (self._heads(query, self.num_heads),) + self._split_key_value(key_value)

    def attend(self, query, key, value, attention_mask=None, is_causal=False, bias=None):
        """Scaled dot-product attention (plus ``bias``, broadcastable to (batch, heads, query_len,
        key_len), added to the scores), then merge heads and project."""
        if self.num_key_value_heads != self.num_heads:
            repeats = self.num_heads // self.num_key_value_heads
            key = ops.repeat(key, repeats, axis=2)
            value = ops.repeat(value, repeats, axis=2)
        return self.project_heads(
            dot_product_attention(query, key, value, bias=bias, mask=attention_mask, is_causal=is_causal))

    def project_heads(self, out):
        """(batch, length, heads, head_dim) attention outputs → merged heads → output projection."""
        return self.output_dense(ops.reshape(out, ops.shape(out)[:-2] + (self.num_heads * self.head_dim,)))

    def call(self, inputs, attention_mask=None, is_causal=False, query_length=None):
        if query_length is None:
            query, key, value = self.split_heads(self.qkv(inputs))
            return self.attend(query, key, value, attention_mask, is_causal)
        check_query_length(self, query_length)
        if is_causal:
            raise ValueError(f"{self.name}: query_length is for bidirectional attention; "
                             "drop is_causal=True or query_length.")
        if attention_mask is not None and len(attention_mask.shape) >= 2:
            attention_mask = attention_mask[..., :query_length, :]  # a size-1 query axis stays
        query, key, value = self.project_first_queries(inputs, query_length)
        return self.attend(query, key, value, attention_mask)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_dim or input_shape[-1],)

    def compute_output_spec(self, inputs, *args, query_length=None, **kwargs):
        shape = self.compute_output_shape(query_length_shape(inputs.shape, query_length))
        return keras.KerasTensor(shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads, "head_dim": self.head_dim,
            "num_key_value_heads": self.num_key_value_heads, "use_bias": self.use_bias,
            "output_dim": self.output_dim,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config
