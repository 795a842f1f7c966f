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
Gemma 2    Gemma + local (sliding-window) and global layers alternating (``layer_types``), pre- and
           post-norms around attention and feed-forward, queries scaled by
           ``query_pre_attn_scalar ** -0.5``, attention logits soft-capped at 50 and final logits
           at 30 (``cap · tanh(x / cap)``)
Gemma 3    Gemma 2 without soft-capping, with QK-norm, five local layers to one global, and the
           local layers' own rotary base (``local_rope_max_wavelength``, 10,000 vs 1,000,000)
=========  ==================================================================================

``layer_types`` lists each layer's kind, ``"sliding_attention"`` (local: ``sliding_window``) or
``"full_attention"`` (global); without it every layer is local when ``sliding_window`` is set
(Mistral). In generation a global layer's key/value cache keeps every position and a local
layer's only its window (plus a prefill chunk less one): a ring, ``CausalSelfAttention.cache_length``.

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
from kcookbook.components.activations import soft_cap
from kcookbook.components.torch_speedups import KERAS_CALLS

LAYER_TYPES = ("full_attention", "sliding_attention")


def interleaved_layer_types(num_layers, pattern):
    """Every ``pattern``-th layer global, the others local: Gemma 2 (2), Gemma 3 (6)."""
    return [LAYER_TYPES[bool((i + 1) % pattern)] for i in range(num_layers)]


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
        layer_types: per layer ``"sliding_attention"`` or ``"full_attention"`` (see above).
        local_rope_max_wavelength: the rotary base of the local layers (Gemma 3); None: the same
            as the global layers'.
        query_pre_attn_scalar: queries are scaled by its inverse square root (Gemma 2/3); None:
            by ``head_dim ** -0.5``.
        attention_logit_soft_cap, final_logit_soft_cap: soft caps of the attention scores and of
            the output logits (Gemma 2), or None.
        post_norms: RMSNorm the attention and feed-forward outputs too (Gemma 2/3).
        query_key_norm: RMSNorm each query and key head before the rotation (Gemma 3).
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
                 layer_types=None, local_rope_max_wavelength=None, query_pre_attn_scalar=None,
                 attention_logit_soft_cap=None, final_logit_soft_cap=None, post_norms=False,
                 query_key_norm=False, num_experts=None, num_experts_per_token=2, router_aux_loss_coefficient=0.0,
                 dropout=0.0, dtype=None, name="llama_backbone", **kwargs):
        check_backbone_config(self, locals())
        head_dim = head_dim or hidden_dim // num_heads
        layer_types = check_layer_types(self, layer_types, num_layers, sliding_window)
        local_rope = (rope_max_wavelength, rope_scaling_factor)
        if local_rope_max_wavelength is not None:
            local_rope = (local_rope_max_wavelength, 1.0)
        kinds = {  # layer kind → (rotary base, rotary scaling, window)
            "full_attention": (rope_max_wavelength, rope_scaling_factor, None),
            "sliding_attention": local_rope + (sliding_window,),
        }
        query_scale = None if query_pre_attn_scalar is None else query_pre_attn_scalar ** -0.5
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
                use_bias=attention_bias, rotary_max_wavelength=kinds[kind][0],
                rotary_scaling_factor=kinds[kind][1], sliding_window=kinds[kind][2],
                query_scale=query_scale, attention_logit_soft_cap=attention_logit_soft_cap,
                query_key_norm=query_key_norm, post_norms=post_norms, dropout=dropout,
                kernel_initializer=keras.initializers.RandomNormal(stddev=0.02),
                dtype=dtype, name=f"transformer_layer_{i}")
            for i, kind in enumerate(layer_types)
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
        self.layer_types = layer_types
        self.local_rope_max_wavelength = local_rope_max_wavelength
        self.query_pre_attn_scalar = query_pre_attn_scalar
        self.attention_logit_soft_cap = attention_logit_soft_cap
        self.final_logit_soft_cap = final_logit_soft_cap
        self.post_norms = post_norms
        self.query_key_norm = query_key_norm
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
            "sliding_window": self.sliding_window, "layer_types": self.layer_types,
            "local_rope_max_wavelength": self.local_rope_max_wavelength,
            "query_pre_attn_scalar": self.query_pre_attn_scalar,
            "attention_logit_soft_cap": self.attention_logit_soft_cap,
            "final_logit_soft_cap": self.final_logit_soft_cap, "post_norms": self.post_norms,
            "query_key_norm": self.query_key_norm, "num_experts": self.num_experts,
            "num_experts_per_token": self.num_experts_per_token,
            "router_aux_loss_coefficient": self.router_aux_loss_coefficient,
            "dropout": self.dropout,
        })
        return config

    def logits(self, hidden, calls=KERAS_CALLS):
        """The output layer, soft-capped when ``final_logit_soft_cap`` is set (Gemma 2)."""
        logits = super().logits(hidden, calls)
        if self.final_logit_soft_cap is None:
            return logits
        return soft_cap(logits, self.final_logit_soft_cap)


def check_layer_types(owner, layer_types, num_layers, sliding_window):
    """``layer_types`` as a list of ``num_layers`` kinds (all local with a ``sliding_window``, all
    global without, when None); a wrong length or kind, or local layers without a window, is a
    ``ValueError`` naming the field."""
    name = type(owner).__name__
    if layer_types is None:
        return [LAYER_TYPES[sliding_window is not None]] * num_layers
    layer_types = list(layer_types)
    if len(layer_types) != num_layers or not set(layer_types) <= set(LAYER_TYPES):
        raise ValueError(f"{name}: layer_types must list one of {LAYER_TYPES} per layer "
                         f"({num_layers} layers), got {layer_types!r:.200}.")
    if "sliding_attention" in layer_types and sliding_window is None:
        raise ValueError(f"{name}: layer_types has sliding_attention layers but sliding_window is "
                         "None; give the window's length.")
    return layer_types


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


@keras.saving.register_keras_serializable(package="kcookbook")
class Gemma2Backbone(GemmaBackbone):
    """Gemma with alternating local/global layers, pre- and post-norms, query scaling by
    ``query_pre_attn_scalar`` and soft-capped attention and final logits."""

    def __init__(self, vocabulary_size, num_layers, *args, sliding_window=4096, layer_types=None,
                 query_pre_attn_scalar=256, attention_logit_soft_cap=50.0,
                 final_logit_soft_cap=30.0, post_norms=True, name="gemma2_backbone", **kwargs):
        super().__init__(vocabulary_size, num_layers, *args, sliding_window=sliding_window,
                         layer_types=layer_types or interleaved_layer_types(num_layers, 2),
                         query_pre_attn_scalar=query_pre_attn_scalar,
                         attention_logit_soft_cap=attention_logit_soft_cap,
                         final_logit_soft_cap=final_logit_soft_cap, post_norms=post_norms,
                         name=name, **kwargs)


@keras.saving.register_keras_serializable(package="kcookbook")
class Gemma3Backbone(GemmaBackbone):
    """Gemma with five local layers to one global, QK-norm, pre- and post-norms, a rotary base per
    layer kind and query scaling by ``query_pre_attn_scalar``; no soft-capping."""

    def __init__(self, vocabulary_size, num_layers, *args, sliding_window=4096, layer_types=None,
                 rope_max_wavelength=1_000_000.0, local_rope_max_wavelength=10_000.0,
                 query_pre_attn_scalar=256, post_norms=True, query_key_norm=True,
                 name="gemma3_backbone", **kwargs):
        super().__init__(vocabulary_size, num_layers, *args, sliding_window=sliding_window,
                         layer_types=layer_types or interleaved_layer_types(num_layers, 6),
                         rope_max_wavelength=rope_max_wavelength,
                         local_rope_max_wavelength=local_rope_max_wavelength,
                         query_pre_attn_scalar=query_pre_attn_scalar, post_norms=post_norms,
                         query_key_norm=query_key_norm, name=name, **kwargs)
