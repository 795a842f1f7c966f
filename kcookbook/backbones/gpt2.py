"""GPT-2 (Radford et al., 2019): a decoder-only transformer with learned absolute positions.

    token_ids (batch, length), padding_mask
      → token embedding + learned position embedding → dropout
      → num_layers × DecoderBlock: pre-LayerNorm, causal multi-head attention (biases), then a
        dense feed-forward network with the tanh-approximate GELU
      → final LayerNorm → sequence output (batch, length, hidden)

The output layer is the input embedding, transposed (``token_embedding(x, reverse=True)``). The
inputs and outputs are those of keras_hub's ``GPT2Backbone``; Hugging Face ``GPT2LMHeadModel``
checkpoints and keras_hub presets convert into it.

    >>> backbone = GPT2Backbone(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=8,
    ...                         intermediate_dim=32, max_sequence_length=16)
    >>> tuple(backbone({"token_ids": np.ones((1, 6), "int32"),
    ...                 "padding_mask": np.ones((1, 6), "int32")}).shape)
    (1, 6, 8)
"""

import keras

from kcookbook.backbones.backbone import check_backbone_config
from kcookbook.backbones.decoder import DecoderBackbone
from kcookbook.components import DecoderBlock, PositionEmbedding, ReversibleEmbedding


def gpt2_kernel_initializer():
    return keras.initializers.RandomNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package="kcookbook")
class GPT2Backbone(DecoderBackbone):
    """GPT-2 decoder.

    Args:
        vocabulary_size: 50,257 for GPT-2's byte-level BPE.
        num_layers, num_heads, hidden_dim, intermediate_dim: 12, 12, 768, 3072 for GPT-2 small.
        dropout: on embeddings and block outputs (training only).
        max_sequence_length: length of the learned position table (1,024).
        layer_norm_epsilon: epsilon of every LayerNorm.
        dtype: dtype policy.
    """

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 dropout=0.1, max_sequence_length=1024, layer_norm_epsilon=1e-5, dtype=None,
                 name="gpt2_backbone", **kwargs):
        check_backbone_config(self, locals())
        token_embedding = ReversibleEmbedding(
            vocabulary_size, hidden_dim, embeddings_initializer=gpt2_kernel_initializer(),
            dtype=dtype, name="token_embedding")
        position_embedding = PositionEmbedding(
            max_sequence_length, initializer=gpt2_kernel_initializer(), dtype=dtype,
            name="position_embedding")
        embeddings_dropout = keras.layers.Dropout(dropout, dtype=dtype, name="embeddings_dropout")
        blocks = [
            DecoderBlock(
                num_heads, hidden_dim // num_heads, intermediate_dim, activation="gelu_approximate",
                feed_forward="dense", normalization="layer", norm_epsilon=layer_norm_epsilon,
                use_bias=True, dropout=dropout, kernel_initializer=gpt2_kernel_initializer(),
                dtype=dtype, name=f"transformer_layer_{i}")
            for i in range(num_layers)
        ]
        final_norm = keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, dtype=dtype,
                                                     name="final_norm")

        def embed(token_ids, start_index, calls):
            tokens = calls(token_embedding, token_ids)
            positions = calls(position_embedding, tokens, start_index=start_index)
            return calls(embeddings_dropout, tokens + positions)

        super().__init__(token_embedding, embed, blocks, final_norm, dtype=dtype, name=name, **kwargs)
        self.position_embedding = position_embedding
        self.embeddings_dropout = embeddings_dropout
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.layer_norm_epsilon = layer_norm_epsilon

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim, "dropout": self.dropout,
            "max_sequence_length": self.max_sequence_length,
            "layer_norm_epsilon": self.layer_norm_epsilon,
        })
        return config
