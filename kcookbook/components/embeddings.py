"""Embedding layers: learned positions, token + position, and a reversible (tied) token embedding."""

import keras
from keras import ops

from kcookbook.components.torch_speedups import dynamic_slice, int8_product_on_torch, table_product
from kcookbook.kernels.int8_products import MAX_INT8_ROWS, int8_product


@keras.saving.register_keras_serializable(package="kcookbook")
class ReversibleEmbedding(keras.layers.Embedding):
    """A token embedding that can also project hidden states back to vocabulary logits.

    ``layer(ids)`` looks ids up; ``layer(hidden, reverse=True)`` multiplies by the transposed table,
    which is how BERT's masked-LM head and most decoder LMs tie their output layer to the input.

    ``tie_weights=False`` gives the reverse projection its own ``(output_dim, input_dim)`` table
    (``reverse_embeddings``): decoders whose output layer is not the input embedding (Llama).

    ``quantize("int8")`` stores the table as int8 with one scale per token (Keras's ``Embedding``
    scheme) and the untied output table likewise, one scale per vocabulary entry, so the biggest
    matrices of a small LM shrink 4×; lookups dequantise, the reverse projection multiplies in int8
    (Keras' ``keras.layers.ReversibleEmbedding`` scheme).

    >>> emb = ReversibleEmbedding(input_dim=10, output_dim=4)
    >>> tuple(emb(ops.zeros((2, 3), "int32")).shape), tuple(emb(ops.zeros((2, 4)), reverse=True).shape)
    ((2, 3, 4), (2, 10))
    """

    def __init__(self, input_dim, output_dim, tie_weights=True, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self.tie_weights = tie_weights

    def build(self, input_shape=None):
        super().build(input_shape)  # an int8 layer gets its int8 tables in quantized_build
        if not self.tie_weights and self.quantization_mode is None:
            self.reverse_embeddings = self.add_weight(
                name="reverse_embeddings", shape=(self.output_dim, self.input_dim),
                initializer=self.embeddings_initializer)

    def call(self, inputs, reverse=False):
        if not reverse:
            return super().call(inputs)
        if not self.tie_weights:
            return ops.matmul(inputs, ops.cast(self.reverse_embeddings, inputs.dtype))
        logits = table_product(self, self.embeddings, inputs)  # torch inference, else None
        if logits is not None:
            return logits
        return ops.matmul(inputs, ops.cast(ops.transpose(self.embeddings), inputs.dtype))

    def _int8_call(self, inputs, reverse=False, training=None):
        """What Keras calls instead of ``call`` once the layer is int8. The reverse projection is
        Keras' own int8 ``ReversibleEmbedding``'s (W8A8): each row of ``inputs`` quantised to int8
        by its absolute maximum (``inputs_quantizer``), int8 × int8 summed exactly in int32 (on
        torch by ``torch._int_mm``; on jax's CPU backend, for a few rows, in float32 by
        ``kernels.int8_products``, exact below 2^24), divided by the row's and the vocabulary
        entry's scales. Its gradient reaches ``inputs`` through the dequantised table, as in Keras'
        int8 ``Dense`` (the rounding has none), so LoRA layers below an int8 output layer train
        (QLoRA). Weight-only int8 (``activation_quantizer=None``) multiplies float activations by the
        dequantised table (on jax's CPU backend, for a few rows, by the same kernel)."""
        if not reverse:
            return super()._int8_call(inputs, training=training)
        # einsum equations of the forward product (rows × table) and of the input gradient
        if self.tie_weights:  # int8 (vocabulary, hidden) table, one scale per vocabulary entry
            table, scale = self._embeddings, self.embeddings_scale
            forward, backward = "rh,vh->rv", "...v,vh->...h"
        else:  # int8 (hidden, vocabulary)
            table, scale = self.reverse_embeddings, self.reverse_embeddings_scale
            forward, backward = "rh,hv->rv", "...v,hv->...h"

        @ops.custom_gradient
        def logits_with_inputs_gradient(inputs, table, scale):
            def grad_fn(*args, upstream=None):
                upstream = args[0] if upstream is None else upstream
                scaled = ops.divide(upstream, ops.cast(scale, upstream.dtype))
                return ops.einsum(backward, scaled, ops.cast(table, upstream.dtype)), None, None

            # One 2-D product, the table as stored: XLA's CPU int8 product is slow for other forms
            # (a transposed table, a (batch, 1, hidden) operand), benchmarks/README.md. A few rows on
            # jax's CPU backend go to kcookbook's int8 kernel (int8_product; None elsewhere).
            rows = ops.reshape(inputs, (-1, self.output_dim))
            layout = "rows" if self.tie_weights else "columns"
            if self.inputs_quantizer is None:  # weight-only int8: float rows
                sums, rows_scale = int8_product(rows, table, layout), 1.0
                if sums is None:
                    sums = ops.einsum(forward, rows, ops.cast(table, rows.dtype))
            else:
                product = int8_product_on_torch(rows, self.inputs_quantizer, ops.transpose(table)
                                                if self.tie_weights else table)
                if product is None:
                    quantized, rows_scale = self.inputs_quantizer(rows)
                    sums = int8_product(ops.cast(quantized, "float32"), table, layout, MAX_INT8_ROWS)
                    if sums is None:
                        sums = ops.cast(ops.einsum(forward, quantized, table), self.compute_dtype)
                    product = sums, rows_scale
                sums, rows_scale = product
            logits = ops.divide(sums, ops.multiply(rows_scale, ops.cast(scale, sums.dtype)))
            return ops.reshape(logits, tuple(ops.shape(inputs)[:-1]) + (self.input_dim,)), grad_fn

        return logits_with_inputs_gradient(inputs, ops.convert_to_tensor(table), ops.convert_to_tensor(scale))

    def float_tables(self):
        """``{"embeddings": (input_dim, output_dim), "reverse_embeddings": (output_dim, input_dim) when
        untied}`` as float arrays, dequantised when the layer is int8 (for exports)."""
        if self.quantization_mode not in (None, "int8"):
            raise NotImplementedError(f"{self.name}: quantization mode {self.quantization_mode!r}.")
        quantized = self.quantization_mode == "int8"

        def dequantize(values, scale, axis):
            values = ops.cast(values, "float32")
            return ops.divide(values, ops.expand_dims(ops.cast(scale, "float32"), axis)) if quantized else values

        tables = {"embeddings": dequantize(self._embeddings, getattr(self, "embeddings_scale", None), -1)}
        if not self.tie_weights:
            tables["reverse_embeddings"] = dequantize(
                self.reverse_embeddings, getattr(self, "reverse_embeddings_scale", None), 0)
        return {k: ops.convert_to_numpy(v) for k, v in tables.items()}

    def quantize(self, mode=None, type_check=True, config=None):
        """int8 only (Keras's own Embedding scheme for the table, the same per vocabulary entry for
        an untied output table); other modes raise NotImplementedError, which ``Model.quantize``
        reports as a warning naming this layer."""
        if mode != "int8":
            raise NotImplementedError(f"{type(self).__name__} {self.name!r} quantises to 'int8', not {mode!r}.")
        if not self.tie_weights:
            values, scale = keras.quantizers.abs_max_quantize(self.reverse_embeddings, axis=0, to_numpy=True)
            del self.reverse_embeddings
        super().quantize(mode, type_check=False, config=config)  # builds the int8 variables
        if not self.tie_weights:
            self.reverse_embeddings.assign(values)
            self.reverse_embeddings_scale.assign(ops.reshape(scale, (self.input_dim,)))

    def quantized_build(self, embeddings_shape, mode, config=None):
        """Build int8 variables (a preset saved after quantising loads into this)."""
        super().quantized_build(embeddings_shape, mode, config)
        if mode == "int8":  # the reverse projection's activations, as Keras' ReversibleEmbedding
            self.inputs_quantizer = keras.quantizers.QuantizationConfig.activation_quantizer_or_default(
                config, keras.quantizers.AbsMaxQuantizer(axis=-1))
        if not self.tie_weights and mode == "int8":
            self.reverse_embeddings = self.add_weight(name="reverse_embeddings",
                                                      shape=(self.output_dim, self.input_dim),
                                                      initializer="zeros", dtype="int8", trainable=False)
            self.reverse_embeddings_scale = self.add_weight(name="reverse_embeddings_scale",
                                                            shape=(self.input_dim,), initializer="ones",
                                                            trainable=False)

    @property
    def variable_serialization_spec(self):
        # Keras' Embedding saves only the variables named here: add the untied output table.
        spec = dict(super().variable_serialization_spec)
        if not self.tie_weights:
            spec[None] = list(spec[None]) + ["reverse_embeddings"]
            spec["int8"] = list(spec["int8"]) + ["reverse_embeddings", "reverse_embeddings_scale"]
        return spec

    def get_config(self):
        config = super().get_config()
        config["tie_weights"] = self.tie_weights
        return config

    def compute_output_spec(self, inputs, reverse=False):
        if reverse:
            shape = tuple(inputs.shape[:-1]) + (self.input_dim,)
            return keras.KerasTensor(shape, dtype=self.compute_dtype)
        return super().compute_output_spec(inputs)


@keras.saving.register_keras_serializable(package="kcookbook")
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute positions: returns a ``(batch, length, dim)`` tensor to add to the input.

    Args:
        sequence_length: the longest sequence the table covers.
        initializer: initializer of the ``(sequence_length, dim)`` table.

    >>> pos = PositionEmbedding(sequence_length=16)
    >>> tuple(pos(ops.zeros((2, 5, 8))).shape)
    (2, 5, 8)
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = int(sequence_length)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.sequence_length, input_shape[-1]),
            initializer=self.initializer,
        )

    def call(self, inputs, start_index=0):
        shape = ops.shape(inputs)
        length = shape[1]
        table = dynamic_slice(ops.convert_to_tensor(self.embeddings), (start_index, 0), (length, shape[-1]))
        return ops.broadcast_to(ops.cast(table, inputs.dtype), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length,
                       "initializer": keras.initializers.serialize(self.initializer)})
        return config


@keras.saving.register_keras_serializable(package="kcookbook")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Token embedding plus learned position embedding, the input layer of BERT/GPT-style models.

    >>> emb = TokenAndPositionEmbedding(vocabulary_size=100, sequence_length=16, embedding_dim=8)
    >>> tuple(emb(ops.zeros((2, 5), "int32")).shape)
    (2, 5, 8)
    """

    def __init__(self, vocabulary_size, sequence_length, embedding_dim,
                 embeddings_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.sequence_length = sequence_length
        self.embedding_dim = embedding_dim
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.token_embedding = ReversibleEmbedding(
            vocabulary_size, embedding_dim, embeddings_initializer=self.embeddings_initializer,
            dtype=self.dtype_policy, name="token_embedding")
        self.position_embedding = PositionEmbedding(
            sequence_length, initializer=self.embeddings_initializer, dtype=self.dtype_policy,
            name="position_embedding")

    def build(self, input_shape):
        self.token_embedding.build(input_shape)
        self.position_embedding.build(tuple(input_shape) + (self.embedding_dim,))

    def call(self, token_ids, start_index=0):
        tokens = self.token_embedding(token_ids)
        return tokens + self.position_embedding(tokens, start_index=start_index)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_size": self.vocabulary_size, "sequence_length": self.sequence_length,
            "embedding_dim": self.embedding_dim,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        })
        return config
