"""The Llama family of decoder-only language models, and its relatives as configurations of it.

    token_ids (batch, length), padding_mask
      → token embedding (× sqrt(hidden_dim) for Gemma)
      → num_layers × DecoderBlock: pre-RMSNorm, causal attention with rotary positions and
        grouped-query heads (a sliding window for Mistral), then a gated feed-forward network
        (SwiGLU; GeGLU for Gemma; a mixture of SwiGLU experts for Mixtral)
      → final RMSNorm → sequence output (batch, length, hidden)

The output layer is ``token_embedding(x, reverse=True)``: tied to the input embedding or a separate
table (``tie_word_embeddings``). A ``CausalLM`` adds it and does generation.

What the relatives change (each a subclass that only sets defaults):

=========  ==================================================================================
Llama      SwiGLU, RMSNorm ``x · w``, untied output layer (Llama-2/3; SmolLM2 ties it)
Mistral    + ``sliding_window``
Gemma      GeGLU (tanh GELU), RMSNorm ``x · (1 + w)``, embeddings × sqrt(hidden), tied output,
           ``head_dim`` independent of ``hidden_dim / num_heads``
Mixtral    Mistral with every feed-forward a top-2-of-8 mixture of experts
=========  ==================================================================================

    >>> backbone = LlamaBackbone(vocabulary_size=100, num_layers=2, num_heads=4, num_key_value_heads=2,
    ...                          hidden_dim=16, intermediate_dim=32)
    >>> tuple(backbone({"token_ids": np.ones((1, 6), "int32"),
    ...                 "padding_mask": np.ones((1, 6), "int32")}).shape)
    (1, 6, 16)
"""

import math

import keras
from keras import ops

from kcookbook.backbones.backbone import check_backbone_config
from kcookbook.backbones.decoder import DecoderBackbone
from kcookbook.components import DecoderBlock, ReversibleEmbedding, RMSNormalization


@keras.saving.register_keras_serializable(package="kcookbook")
class LlamaBackbone(DecoderBackbone):
    """Llama-style decoder.

    Args:
        vocabulary_size: number of token ids.
        num_layers: decoder blocks.
        num_heads: query heads; ``num_key_value_heads``: key/value heads (grouped-query attention).
        hidden_dim: width of the hidden states; ``head_dim`` defaults to ``hidden_dim // num_heads``.
        intermediate_dim: width of the feed-forward layer (of each expert for a mixture of experts).
        activation: gate activation: ``"silu"`` (SwiGLU) or ``"gelu_approximate"`` (GeGLU).
        layer_norm_epsilon: epsilon of every RMSNorm.
        norm_unit_offset: RMSNorm multiplies by ``1 + weight`` (Gemma).
        rope_max_wavelength, rope_scaling_factor: rotary position embedding (``rope_theta``, linear
            scaling).
        max_sequence_length: the longest sequence the model was trained for (generation checks it).
        tie_word_embeddings: the output layer reuses the input embedding.
        scale_embeddings: multiply embeddings by ``sqrt(hidden_dim)`` (Gemma).
        attention_bias: biases on the attention projections.
        sliding_window: attention window, or None.
        num_experts, num_experts_per_token, router_aux_loss_coefficient: a mixture of experts
            in every block when ``num_experts`` is set.
        dropout: dropout in the blocks (training only).
        dtype: dtype policy.
    """

    def __init__(self, vocabulary_size, num_layers, num_heads, hidden_dim, intermediate_dim,
                 num_key_value_heads=None, head_dim=None, activation="silu",
                 layer_norm_epsilon=1e-6, norm_unit_offset=False, rope_max_wavelength=10000,
                 rope_scaling_factor=1.0, max_sequence_length=4096, tie_word_embeddings=False,
                 scale_embeddings=False, attention_bias=False, sliding_window=None,
                 num_experts=None, num_experts_per_token=2, router_aux_loss_coefficient=0.0,
                 dropout=0.0, dtype=None, name="llama_backbone", **kwargs):
        check_backbone_config(self, locals())
        head_dim = head_dim or hidden_dim // num_heads
        token_embedding = ReversibleEmbedding(
            vocabulary_size, hidden_dim, tie_weights=tie_word_embeddings,
            embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02), dtype=dtype,
            name="token_embedding")
        blocks = [
            DecoderBlock(
                num_heads, head_dim, intermediate_dim, num_key_value_heads, activation=activation,
                feed_forward="mixture_of_experts" if num_experts else "gated",
                num_experts=num_experts, num_experts_per_token=num_experts_per_token,
                router_aux_loss_coefficient=router_aux_loss_coefficient, normalization="rms",
                norm_epsilon=layer_norm_epsilon, norm_unit_offset=norm_unit_offset,
                use_bias=attention_bias, rotary_max_wavelength=rope_max_wavelength,
                rotary_scaling_factor=rope_scaling_factor, sliding_window=sliding_window,
                dropout=dropout, kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                dtype=dtype, name=f"transformer_layer_{i}")
            for i in range(num_layers)
        ]
        final_norm = RMSNormalization(layer_norm_epsilon, norm_unit_offset, dtype=dtype,
                                      name="final_norm")
        embedding_scale = math.sqrt(hidden_dim) if scale_embeddings else None

        def embed(token_ids, start_index, calls):
            x = calls(token_embedding, token_ids)
            return x if embedding_scale is None else x * ops.cast(embedding_scale, x.dtype)

        super().__init__(token_embedding, embed, blocks, final_norm, dtype=dtype, name=name, **kwargs)
        self.embedding_scale = embedding_scale

        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads or num_heads
        self.hidden_dim = hidden_dim
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.norm_unit_offset = norm_unit_offset
        self.rope_max_wavelength = rope_max_wavelength
        self.rope_scaling_factor = rope_scaling_factor
        self.max_sequence_length = max_sequence_length
        self.tie_word_embeddings = tie_word_embeddings
        self.scale_embeddings = scale_embeddings
        self.attention_bias = attention_bias
        self.sliding_window = sliding_window
        self.num_experts = num_experts
        self.num_experts_per_token = num_experts_per_token
        self.router_aux_loss_coefficient = router_aux_loss_coefficient
        self.dropout = dropout

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocabulary_size": self.vocabulary_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "num_key_value_heads": self.num_key_value_heads,
            "hidden_dim": self.hidden_dim, "head_dim": self.head_dim,
            "intermediate_dim": self.intermediate_dim, "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "norm_unit_offset": self.norm_unit_offset,
            "rope_max_wavelength": self.rope_max_wavelength,
            "rope_scaling_factor": self.rope_scaling_factor,
            "max_sequence_length": self.max_sequence_length,
            "tie_word_embeddings": self.tie_word_embeddings,
            "scale_embeddings": self.scale_embeddings, "attention_bias": self.attention_bias,
            "sliding_window": self.sliding_window, "num_experts": self.num_experts,
            "num_experts_per_token": self.num_experts_per_token,
            "router_aux_loss_coefficient": self.router_aux_loss_coefficient,
            "dropout": self.dropout,
        })
        return config


@keras.saving.register_keras_serializable(package="kcookbook")
class MistralBackbone(LlamaBackbone):
    """Llama with sliding-window attention (Mistral-7B: a 4,096-token window)."""

    def __init__(self, *args, sliding_window=4096, name="mistral_backbone", **kwargs):
        super().__init__(*args, sliding_window=sliding_window, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="kcookbook")
class GemmaBackbone(LlamaBackbone):
    """Llama with GeGLU, ``(1 + w)`` RMSNorm, embeddings scaled by sqrt(hidden), tied output."""

    def __init__(self, *args, activation="gelu_approximate", norm_unit_offset=True,
                 scale_embeddings=True, tie_word_embeddings=True, name="gemma_backbone", **kwargs):
        super().__init__(*args, activation=activation, norm_unit_offset=norm_unit_offset,
                         scale_embeddings=scale_embeddings, tie_word_embeddings=tie_word_embeddings,
                         name=name, **kwargs)


@keras.saving.register_keras_serializable(package="kcookbook")
class MixtralBackbone(LlamaBackbone):
    """Mistral whose feed-forward layers are mixtures of experts (Mixtral-8x7B: top-2 of 8)."""

    def __init__(self, *args, num_experts=8, num_experts_per_token=2, sliding_window=None,
                 router_aux_loss_coefficient=0.02, name="mixtral_backbone", **kwargs):
        super().__init__(*args, num_experts=num_experts, num_experts_per_token=num_experts_per_token,
                         sliding_window=sliding_window,
                         router_aux_loss_coefficient=router_aux_loss_coefficient, name=name,
                         **kwargs)
