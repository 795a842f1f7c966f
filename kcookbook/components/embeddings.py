"""Embedding layers: learned positions, token + position, and a reversible (tied) token embedding."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kcookbook")
class ReversibleEmbedding(keras.layers.Embedding):
    """A token embedding that can also project hidden states back to vocabulary logits.

    ``layer(ids)`` looks ids up; ``layer(hidden, reverse=True)`` multiplies by the transposed table,
    which is how BERT's masked-LM head and most decoder LMs tie their output layer to the input.

    ``tie_weights=False`` gives the reverse projection its own ``(output_dim, input_dim)`` table
    (``reverse_embeddings``): decoders whose output layer is not the input embedding (Llama).

    >>> emb = ReversibleEmbedding(input_dim=10, output_dim=4)
    >>> tuple(emb(ops.zeros((2, 3), "int32")).shape), tuple(emb(ops.zeros((2, 4)), reverse=True).shape)
    ((2, 3, 4), (2, 10))
    """

    def __init__(self, input_dim, output_dim, tie_weights=True, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self.tie_weights = tie_weights

    def build(self, input_shape=None):
        super().build(input_shape)
        if not self.tie_weights:
            self.reverse_embeddings = self.add_weight(
                name="reverse_embeddings", shape=(self.output_dim, self.input_dim),
                initializer=self.embeddings_initializer)

    def call(self, inputs, reverse=False):
        if reverse:
            table = ops.transpose(self.embeddings) if self.tie_weights else self.reverse_embeddings
            return ops.matmul(inputs, ops.cast(table, inputs.dtype))
        return super().call(inputs)

    @property
    def variable_serialization_spec(self):
        # Keras' Embedding saves only the variables named here: add the untied output table.
        spec = dict(super().variable_serialization_spec)
        spec[None] = list(spec[None]) + ([] if self.tie_weights else ["reverse_embeddings"])
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
        table = ops.slice(ops.convert_to_tensor(self.embeddings), (start_index, 0), (length, shape[-1]))
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
