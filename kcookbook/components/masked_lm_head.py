"""The masked-language-model head: hidden states at chosen positions → vocabulary logits."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kcookbook")
class MaskedLMHead(keras.layers.Layer):
    """Gather the masked positions, transform (dense + activation + layer norm), project to the vocabulary.

    With ``token_embedding`` (a ``ReversibleEmbedding``) the output projection is tied to the input
    embedding, as in BERT; otherwise the head owns a ``(hidden, vocabulary_size)`` kernel.

    >>> head = MaskedLMHead(vocabulary_size=50)
    >>> tuple(head(ops.ones((2, 7, 8)), mask_positions=ops.zeros((2, 3), "int32")).shape)
    (2, 3, 50)
    """

    def __init__(self, vocabulary_size, token_embedding=None, activation="gelu", layer_norm_epsilon=1e-5,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.token_embedding = token_embedding
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, inputs_shape, mask_positions_shape=None):
        hidden = inputs_shape[-1]
        self.transform = keras.layers.Dense(hidden, activation=self.activation,
                                            kernel_initializer=self.kernel_initializer,
                                            dtype=self.dtype_policy, name="transform")
        self.transform.build((None, None, hidden))
        self.norm = keras.layers.LayerNormalization(epsilon=self.layer_norm_epsilon,
                                                    dtype=self.dtype_policy, name="norm")
        self.norm.build((None, None, hidden))
        if self.token_embedding is None:
            self.output_kernel = self.add_weight(name="output_kernel", shape=(hidden, self.vocabulary_size),
                                                 initializer=self.kernel_initializer)
        self.output_bias = self.add_weight(name="output_bias", shape=(self.vocabulary_size,),
                                           initializer="zeros")

    def call(self, inputs, mask_positions):
        positions = ops.cast(mask_positions, "int32")[:, :, None]
        x = ops.take_along_axis(inputs, positions, axis=1)
        x = self.norm(self.transform(x))
        if self.token_embedding is not None:
            logits = self.token_embedding(x, reverse=True)
        else:
            logits = ops.matmul(x, self.output_kernel)
        return logits + self.output_bias

    def compute_output_shape(self, inputs_shape, mask_positions_shape):
        return tuple(mask_positions_shape) + (self.vocabulary_size,)

    def get_config(self):
        config = super().get_config()
        config.update({"vocabulary_size": self.vocabulary_size,
                       "activation": keras.activations.serialize(self.activation),
                       "layer_norm_epsilon": self.layer_norm_epsilon,
                       "kernel_initializer": keras.initializers.serialize(self.kernel_initializer)})
        return config
