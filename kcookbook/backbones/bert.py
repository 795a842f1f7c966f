"""BERT (Devlin et al., 2018): a bidirectional transformer encoder.

    token_ids, segment_ids, padding_mask
      → token + position + segment embeddings → layer norm → dropout
      → num_layers × TransformerEncoderBlock (post-norm, GELU: exact for Hugging Face checkpoints,
        tanh-approximate for Google's original ones as keras_hub ships them)
      → sequence_output (batch, length, hidden)
      → tanh(dense(sequence_output[:, 0])) = pooled_output (batch, hidden)

Dropout (training only) falls on the embeddings and on each block's attention and feed-forward
outputs, not on the attention probabilities, where Hugging Face and keras_hub also drop 10 %: that
keeps each backend on its fused attention (``jax.nn.dot_product_attention`` has no dropout), and with
that dropout a training step was several times slower under TensorFlow + XLA (``benchmarks/README.md``,
"BERT: no dropout on the attention probabilities"). Inference is unaffected; fine-tuning quality at
this choice is measured in recipe nlp/01.

The inputs and outputs are those of keras_hub's ``BertBackbone``, so code written against one runs on
the other; checkpoints of both (and Hugging Face's ``BertModel``) convert into it.

    >>> backbone = BertBackbone(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=8,
    ...                         intermediate_dim=16, max_sequence_length=32)
    >>> out = backbone({"token_ids": np.ones((1, 6), "int32"), "segment_ids": np.zeros((1, 6), "int32"),
    ...                 "padding_mask": np.ones((1, 6), "int32")})
    >>> tuple(out["sequence_output"].shape), tuple(out["pooled_output"].shape)
    ((1, 6, 8), (1, 8))
"""

import keras

from kcookbook.backbones.backbone import Backbone, check_backbone_config
from kcookbook.components import (
    PositionEmbedding,
    ReversibleEmbedding,
    TransformerEncoderBlock,
    get_activation,
)


def bert_kernel_initializer():
    return keras.initializers.TruncatedNormal(stddev=0.02)


class _BertLayers:
    """BERT's layers and the graph they form: the backbone's, or its first-token-only variant."""

    def __init__(self, token_embedding, position_embedding, segment_embedding, embeddings_norm,
                 embeddings_dropout, blocks, pooled_dense):
        self.token_embedding = token_embedding
        self.position_embedding = position_embedding
        self.segment_embedding = segment_embedding
        self.embeddings_norm = embeddings_norm
        self.embeddings_dropout = embeddings_dropout
        self.blocks = blocks
        self.pooled_dense = pooled_dense

    def outputs(self, inputs, first_token_only=False):
        padding_mask = inputs["padding_mask"]
        tokens = self.token_embedding(inputs["token_ids"])
        x = tokens + self.position_embedding(tokens) + self.segment_embedding(inputs["segment_ids"])
        x = self.embeddings_dropout(self.embeddings_norm(x))
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block(x, padding_mask=padding_mask, query_length=1 if first_token_only and last else None)
        first = x[:, 0, :]
        pooled = self.pooled_dense(first)
        if first_token_only:
            return {"first_token_output": first, "pooled_output": pooled}
        return {"sequence_output": x, "pooled_output": pooled}


@keras.saving.register_keras_serializable(package="kcookbook")
class BertBackbone(Backbone):
    """BERT encoder.

    Args:
        vocabulary_size: size of the WordPiece vocabulary.
        num_layers: transformer blocks.
        num_heads: attention heads per block.
        hidden_dim: width of the hidden states.
        intermediate_dim: width of the feed-forward layer.
        dropout: dropout rate on embeddings and block outputs (training only; not on the attention
            probabilities, see above).
        max_sequence_length: length of the learned position table.
        num_segments: number of segment (token type) ids.
        layer_norm_epsilon: epsilon of every layer norm (1e-12 in BERT).
        activation: feed-forward activation: ``"gelu"`` (exact, Hugging Face's ``gelu``) or
            ``"gelu_approximate"`` (tanh approximation: Google's BERT code and keras_hub's presets).
        dtype: dtype policy, e.g. ``"float32"`` or ``"mixed_bfloat16"``.
    """

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 dropout=0.1, max_sequence_length=512, num_segments=2, layer_norm_epsilon=1e-12,
                 activation="gelu", dtype=None, name="bert_backbone", **kwargs):
        check_backbone_config(self, locals())
        init = bert_kernel_initializer
        token_embedding = ReversibleEmbedding(
            vocabulary_size, hidden_dim, embeddings_initializer=init(), dtype=dtype,
            name="token_embedding")
        position_embedding = PositionEmbedding(
            max_sequence_length, initializer=init(), dtype=dtype, name="position_embedding")
        segment_embedding = keras.layers.Embedding(
            num_segments, hidden_dim, embeddings_initializer=init(), dtype=dtype,
            name="segment_embedding")
        embeddings_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon, dtype=dtype, name="embeddings_layer_norm")
        embeddings_dropout = keras.layers.Dropout(dropout, dtype=dtype, name="embeddings_dropout")
        blocks = [
            TransformerEncoderBlock(
                num_heads, intermediate_dim, activation=get_activation(activation), dropout=dropout,
                layer_norm_epsilon=layer_norm_epsilon, normalize_first=False,
                kernel_initializer=init(), dtype=dtype, name=f"transformer_layer_{i}")
            for i in range(num_layers)
        ]
        pooled_dense = keras.layers.Dense(
            hidden_dim, activation="tanh", kernel_initializer=init(), dtype=dtype,
            name="pooled_dense")

        inputs = {
            "token_ids": keras.Input(shape=(None,), dtype="int32", name="token_ids"),
            "segment_ids": keras.Input(shape=(None,), dtype="int32", name="segment_ids"),
            "padding_mask": keras.Input(shape=(None,), dtype="int32", name="padding_mask"),
        }
        layers = _BertLayers(token_embedding, position_embedding, segment_embedding, embeddings_norm,
                             embeddings_dropout, blocks, pooled_dense)
        super().__init__(inputs=inputs, outputs=layers.outputs(inputs), dtype=dtype, name=name,
                         **kwargs)

        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.num_segments = num_segments
        self.layer_norm_epsilon = layer_norm_epsilon
        self.activation = activation
        self.token_embedding = token_embedding

    def first_token_outputs(self, inputs):
        """Symbolic outputs of the first token alone, for a task that reads nothing else.

        ``{"first_token_output": sequence_output[:, 0], "pooled_output": ...}`` built from this
        backbone's own layers (the same variables) on the symbolic ``inputs``; the last block
        computes its first position only (``query_length=1``). Only the outputs a task uses enter
        its graph, and the backbone model itself is not called, so no full last block runs.

        >>> backbone = BertBackbone(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=8,
        ...                         intermediate_dim=16, max_sequence_length=32)
        >>> out = backbone.first_token_outputs(backbone.input)
        >>> tuple(out["first_token_output"].shape), tuple(out["pooled_output"].shape)
        ((None, 8), (None, 8))
        """
        layers = _BertLayers(*(self.get_layer(name) for name in (
            "token_embedding", "position_embedding", "segment_embedding", "embeddings_layer_norm",
            "embeddings_dropout")),
            [self.get_layer(f"transformer_layer_{i}") for i in range(self.num_layers)],
            self.get_layer("pooled_dense"))
        return layers.outputs(inputs, first_token_only=True)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim, "dropout": self.dropout,
            "max_sequence_length": self.max_sequence_length, "num_segments": self.num_segments,
            "layer_norm_epsilon": self.layer_norm_epsilon, "activation": self.activation,
        })
        return config
