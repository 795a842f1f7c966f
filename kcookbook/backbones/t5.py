"""T5 (Raffel et al., 2020): the text-to-text encoder-decoder, v1.0 and v1.1 / Flan-T5 as configurations.

    encoder_token_ids, encoder_padding_mask
      → shared token embedding → dropout
      → num_layers × encoder block: RMSNorm → self-attention (+ relative position bias) → residual,
                                     RMSNorm → feed-forward → residual
      → RMSNorm → dropout → encoder output
    decoder_token_ids, decoder_padding_mask
      → shared token embedding → dropout
      → num_decoder_layers × decoder block: causal self-attention (+ relative position bias),
                                             cross-attention over the encoder output, feed-forward
      → RMSNorm → dropout → decoder output
      → logits: × hidden_dim ** -0.5 (v1.0), then the embedding transposed (tied) or lm_head

Position enters only as a learned bias on the attention scores, indexed by the bucket of the
relative distance (``RelativePositionBias``): one table per stack (Hugging Face keeps it in the
first layer), computed once and added in every layer; bidirectional buckets in the encoder,
causal ones in the decoder. Attention scores are not scaled by ``head_dim ** -0.5`` (T5 folds that
into its initialisation), and T5's layer norm is RMSNorm: no mean subtraction, no bias.

=============  =====================================================================
v1.0 (t5-*)    ReLU feed-forward, output layer tied to the embedding, decoder output
               scaled by ``hidden_dim ** -0.5`` before it
v1.1, Flan-T5  gated-GELU (tanh) feed-forward, a separate output table (``lm_head``),
               no scaling; no dropout at inference (dropout is training-only everywhere)
=============  =====================================================================

``Seq2SeqLM`` adds generation; the encoder-decoder contract is ``Seq2SeqBackbone``'s.

    >>> backbone = T5Backbone(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
    ...                       intermediate_dim=16)
    >>> out = backbone({"encoder_token_ids": np.ones((1, 5), "int32"),
    ...                 "encoder_padding_mask": np.ones((1, 5), "int32"),
    ...                 "decoder_token_ids": np.zeros((1, 3), "int32"),
    ...                 "decoder_padding_mask": np.ones((1, 3), "int32")})
    >>> tuple(out["encoder_sequence_output"].shape), tuple(out["decoder_sequence_output"].shape)
    ((1, 5, 8), (1, 3, 8))
"""

import keras

from kcookbook.backbones.backbone import check_backbone_config
from kcookbook.backbones.seq2seq import Seq2SeqBackbone
from kcookbook.components.embeddings import ReversibleEmbedding
from kcookbook.components.encoder_decoder_block import EncoderDecoderBlock, padding_bias
from kcookbook.components.relative_position_bias import RelativePositionBias
from kcookbook.components.rms_normalization import RMSNormalization
from kcookbook.components.torch_speedups import KERAS_CALLS


@keras.saving.register_keras_serializable(package="kcookbook")
class T5Backbone(Seq2SeqBackbone):
    """T5 encoder-decoder.

    Args:
        vocabulary_size: rows of the shared token embedding.
        num_layers: encoder blocks; ``num_decoder_layers``: decoder blocks (default: the same).
        num_heads: attention heads; ``head_dim``: their width (Hugging Face's ``d_kv``; default
            ``hidden_dim // num_heads``).
        hidden_dim: width of the hidden states (``d_model``).
        intermediate_dim: feed-forward width (``d_ff``).
        activation: feed-forward activation: ``"relu"`` (v1.0) or ``"gelu_approximate"`` (v1.1's
            ``gelu_new``).
        use_gated_activation: gated feed-forward ``wo(act(wi_0 x) * wi_1 x)`` (v1.1, Flan-T5).
        layer_norm_epsilon: epsilon of every RMSNorm.
        relative_attention_num_buckets, relative_attention_max_distance: the position buckets.
        tie_word_embeddings: the output layer is the token embedding transposed (else a separate
            ``(hidden_dim, vocabulary_size)`` table).
        scale_decoder_outputs: multiply the decoder output by ``hidden_dim ** -0.5`` before the
            output layer; None follows ``tie_word_embeddings`` (v1.0 scales, v1.1 does not).
        max_sequence_length: the longest decoder sequence generation may produce (T5 has no
            position table; 512 is its training length).
        decoder_start_token_id: the first decoder token (T5: the padding id, 0).
        dropout: dropout rate in training.
        dtype: dtype policy.
    """

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 head_dim=None, num_decoder_layers=None, activation="relu",
                 use_gated_activation=False, layer_norm_epsilon=1e-6,
                 relative_attention_num_buckets=32, relative_attention_max_distance=128,
                 tie_word_embeddings=True, scale_decoder_outputs=None, max_sequence_length=512,
                 decoder_start_token_id=0, dropout=0.1, dtype=None, name="t5_backbone", **kwargs):
        check_backbone_config(self, locals())
        if scale_decoder_outputs is not None and not isinstance(scale_decoder_outputs, bool):
            raise ValueError(f"T5Backbone: scale_decoder_outputs must be True, False or None (follow "
                             f"tie_word_embeddings), got {scale_decoder_outputs!r}.")
        head_dim = head_dim or hidden_dim // num_heads
        num_decoder_layers = num_decoder_layers or num_layers
        token_embedding = ReversibleEmbedding(
            vocabulary_size, hidden_dim, tie_weights=tie_word_embeddings,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=1.0), dtype=dtype,
            name="token_embedding")
        block = {"num_heads": num_heads, "head_dim": head_dim, "intermediate_dim": intermediate_dim,
                 "activation": activation, "feed_forward": "gated" if use_gated_activation else "dense",
                 "normalization": "rms", "norm_epsilon": layer_norm_epsilon, "use_bias": False,
                 "score_scale": 1.0, "dropout": dropout,
                 "kernel_initializer": keras.initializers.RandomNormal(stddev=hidden_dim ** -0.5),
                 "dtype": dtype}
        buckets = {"num_heads": num_heads, "num_buckets": relative_attention_num_buckets,
                   "max_distance": relative_attention_max_distance,
                   "embeddings_initializer": keras.initializers.RandomNormal(stddev=hidden_dim ** -0.5),
                   "dtype": dtype}
        layers = {
            "token_embedding": token_embedding,
            "encoder_position_bias": RelativePositionBias(bidirectional=True,
                                                          name="encoder_position_bias", **buckets),
            "decoder_position_bias": RelativePositionBias(bidirectional=False,
                                                          name="decoder_position_bias", **buckets),
            "encoder_blocks": [EncoderDecoderBlock(name=f"encoder_layer_{i}", **block)
                               for i in range(num_layers)],
            "decoder_blocks": [EncoderDecoderBlock(cross_attention=True, name=f"decoder_layer_{i}",
                                                   **block) for i in range(num_decoder_layers)],
            "encoder_final_norm": RMSNormalization(layer_norm_epsilon, dtype=dtype,
                                                   name="encoder_final_norm"),
            "decoder_final_norm": RMSNormalization(layer_norm_epsilon, dtype=dtype,
                                                   name="decoder_final_norm"),
            "dropout_layer": keras.layers.Dropout(dropout, dtype=dtype, name="dropout"),
            "output_scale": hidden_dim ** -0.5 if (
                tie_word_embeddings if scale_decoder_outputs is None else scale_decoder_outputs) else None,
        }
        encoder_inputs = {
            "encoder_token_ids": keras.Input(shape=(None,), dtype="int32", name="encoder_token_ids"),
            "encoder_padding_mask": keras.Input(shape=(None,), dtype="int32",
                                                name="encoder_padding_mask")}
        super().__init__(encoder_inputs, layers, dtype=dtype, name=name, **kwargs)

        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_decoder_layers = num_decoder_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.use_gated_activation = use_gated_activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.relative_attention_num_buckets = relative_attention_num_buckets
        self.relative_attention_max_distance = relative_attention_max_distance
        self.tie_word_embeddings = tie_word_embeddings
        self.scale_decoder_outputs = scale_decoder_outputs
        self.max_sequence_length = max_sequence_length
        self.decoder_start_token_id = decoder_start_token_id
        self.dropout = dropout

    # ----- the family's steps of the Seq2SeqBackbone contract -----
    def encode(self, encoder_inputs, calls=KERAS_CALLS):
        mask = encoder_inputs["encoder_padding_mask"]
        x = calls(self.dropout_layer, calls(self.token_embedding, encoder_inputs["encoder_token_ids"]))
        bias = calls(self.encoder_position_bias, x) + padding_bias(mask)
        for block in self.encoder_blocks:
            x = calls.nested(block, x, self_attention_bias=bias)
        return calls(self.dropout_layer, calls(self.encoder_final_norm, x)), mask

    def embed_decoder(self, token_ids, start_index, calls=KERAS_CALLS):
        return calls(self.dropout_layer, calls(self.token_embedding, token_ids))

    def decoder_self_attention_bias(self, x, key_length=None, start_index=0, calls=KERAS_CALLS):
        return calls(self.decoder_position_bias, x, key_length=key_length, query_start=start_index)

    def logits(self, hidden, calls=KERAS_CALLS):
        if self.output_scale is not None:
            hidden = hidden * self.output_scale
        return calls(self.token_embedding, hidden, reverse=True)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers, "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim, "head_dim": self.head_dim,
            "intermediate_dim": self.intermediate_dim, "activation": self.activation,
            "use_gated_activation": self.use_gated_activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "tie_word_embeddings": self.tie_word_embeddings,
            "scale_decoder_outputs": self.scale_decoder_outputs,
            "max_sequence_length": self.max_sequence_length,
            "decoder_start_token_id": self.decoder_start_token_id, "dropout": self.dropout,
        })
        return config
