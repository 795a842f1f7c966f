"""The pre-norm transformer decoder block of GPT-style language models.

    x = x + attention(norm(x))        causal, optionally rotary / grouped-query / sliding-window
    x = x + feed_forward(norm(x))     dense MLP, gated (SwiGLU, GeGLU) or mixture of experts

Its options are the axes along which decoder families differ, so a family is a configuration:
``normalization`` (``"layer"``: LayerNorm with bias; ``"rms"``: RMSNorm, ``norm_unit_offset`` for
the ``1 + weight`` variant), ``feed_forward`` (``"dense"``, ``"gated"``, ``"mixture_of_experts"``),
``use_bias`` on the projections, rotary positions or none, a sliding window, and Gemma 2/3's
``post_norms`` (each sublayer's output normalised again before the residual: "sandwich" norms) and
attention options (``query_scale``, ``attention_logit_soft_cap``, ``query_key_norm``).

    >>> block = DecoderBlock(num_heads=2, head_dim=4, intermediate_dim=16, rotary_max_wavelength=1e4)
    >>> x = ops.ones((2, 5, 8))
    >>> tuple(block(x, padding_mask=ops.ones((2, 5), "int32")).shape)
    (2, 5, 8)
"""

import keras
from keras import ops

from kcookbook.components.activation_smoothing import DenseColumns
from kcookbook.components.causal_attention import CausalSelfAttention
from kcookbook.components.feed_forward import FeedForward, GatedFeedForward
from kcookbook.components.mixture_of_experts import MixtureOfExperts
from kcookbook.components.rms_normalization import RMSNormalization
from kcookbook.components.torch_speedups import KERAS_CALLS

FEED_FORWARDS = ("dense", "gated", "mixture_of_experts")
NORMALIZATIONS = ("layer", "rms")


@keras.saving.register_keras_serializable(package="kcookbook")
class DecoderBlock(keras.layers.Layer):
    """Causal self-attention and a feed-forward network, each pre-normalised with a residual.

    Args:
        num_heads, head_dim, num_key_value_heads: attention heads (grouped-query when fewer
            key/value heads).
        intermediate_dim: feed-forward width (per expert for a mixture of experts).
        activation: feed-forward activation (``"silu"``, ``"gelu_approximate"``, ``"gelu"``…).
        feed_forward: ``"dense"``, ``"gated"`` or ``"mixture_of_experts"``.
        num_experts, num_experts_per_token, router_aux_loss_coefficient: mixture-of-experts options.
        normalization: ``"layer"`` or ``"rms"``; ``norm_epsilon``; ``norm_unit_offset`` (RMS only).
        use_bias: biases on the attention projections and, for ``"dense"``, the feed-forward.
        rotary_max_wavelength, rotary_scaling_factor: rotary positions (None: none).
        sliding_window: attention window (None: full causal attention).
        query_scale, attention_logit_soft_cap, query_key_norm: see ``CausalSelfAttention``.
        post_norms: normalise the attention and feed-forward outputs too (``post_attention_norm``,
            ``post_feed_forward_norm``) before adding them to the residual (Gemma 2/3).
        dropout: after attention and feed-forward, in training.
        kernel_initializer: initializer of every kernel.
    """

    def __init__(self, num_heads, head_dim, intermediate_dim, num_key_value_heads=None,
                 activation="silu", feed_forward="gated", num_experts=None, num_experts_per_token=2,
                 router_aux_loss_coefficient=0.0, normalization="rms", norm_epsilon=1e-6,
                 norm_unit_offset=False, use_bias=False, rotary_max_wavelength=None,
                 rotary_scaling_factor=1.0, sliding_window=None, query_scale=None,
                 attention_logit_soft_cap=None, query_key_norm=False, post_norms=False, dropout=0.0,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if feed_forward not in FEED_FORWARDS:
            raise ValueError(f"feed_forward={feed_forward!r}; expected one of {FEED_FORWARDS}.")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization={normalization!r}; expected one of {NORMALIZATIONS}.")
        if feed_forward == "mixture_of_experts" and not num_experts:
            raise ValueError("feed_forward='mixture_of_experts' needs num_experts.")
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.intermediate_dim = intermediate_dim
        self.num_key_value_heads = num_key_value_heads or num_heads
        self.activation = activation
        self.feed_forward_type = feed_forward
        self.num_experts = num_experts
        self.num_experts_per_token = num_experts_per_token
        self.router_aux_loss_coefficient = router_aux_loss_coefficient
        self.normalization = normalization
        self.norm_epsilon = norm_epsilon
        self.norm_unit_offset = norm_unit_offset
        self.use_bias = use_bias
        self.rotary_max_wavelength = rotary_max_wavelength
        self.rotary_scaling_factor = rotary_scaling_factor
        self.sliding_window = sliding_window
        self.query_scale = query_scale
        self.attention_logit_soft_cap = attention_logit_soft_cap
        self.query_key_norm = query_key_norm
        self.post_norms = post_norms
        self.dropout = dropout
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

        common = {"dtype": self.dtype_policy}
        self.attention = CausalSelfAttention(
            num_heads, head_dim, self.num_key_value_heads, use_bias=use_bias,
            rotary_max_wavelength=rotary_max_wavelength,
            rotary_scaling_factor=rotary_scaling_factor, sliding_window=sliding_window,
            query_scale=query_scale, logit_soft_cap=attention_logit_soft_cap,
            query_key_norm=query_key_norm, norm_epsilon=norm_epsilon,
            norm_unit_offset=norm_unit_offset, kernel_initializer=self.kernel_initializer,
            name="attention", **common)
        if feed_forward == "dense":
            self.feed_forward = FeedForward(
                intermediate_dim, activation, use_bias=use_bias,
                kernel_initializer=self.kernel_initializer, name="feed_forward", **common)
        elif feed_forward == "gated":
            self.feed_forward = GatedFeedForward(
                intermediate_dim, activation, kernel_initializer=self.kernel_initializer,
                name="feed_forward", **common)
        else:
            self.feed_forward = MixtureOfExperts(
                num_experts, num_experts_per_token, intermediate_dim, activation,
                aux_loss_coefficient=router_aux_loss_coefficient,
                kernel_initializer=self.kernel_initializer, name="feed_forward", **common)
        self.attention_norm = self._norm("attention_norm")
        self.feed_forward_norm = self._norm("feed_forward_norm")
        self.post_attention_norm = self.post_feed_forward_norm = None
        if post_norms:
            self.post_attention_norm = self._norm("post_attention_norm")
            self.post_feed_forward_norm = self._norm("post_feed_forward_norm")
        self.dropout_layer = keras.layers.Dropout(dropout, **common)

    def _norm(self, name):
        if self.normalization == "rms":
            return RMSNormalization(self.norm_epsilon, self.norm_unit_offset,
                                    dtype=self.dtype_policy, name=name)
        return keras.layers.LayerNormalization(epsilon=self.norm_epsilon, dtype=self.dtype_policy,
                                               name=name)

    def smoothable_inputs(self):
        """``(producer, [Dense, ...])`` pairs for ``activation_smoothing``: what produces a
        projection's input, and the projections that read it unchanged. Each normalisation with
        the attention's fused ``qkv`` or a feed-forward's first projection; a gated feed-forward's
        ``up`` columns with its output projection. A mixture of experts is left out (its router and
        experts would all have to change together), as is the attention's output projection (its
        input is the value heads' mix, shared by grouped query heads)."""
        pairs = [(self.attention_norm, [self.attention.qkv])]
        if isinstance(self.feed_forward, GatedFeedForward):
            gate_up, width = self.feed_forward.gate_up, self.feed_forward.intermediate_dim
            # The up columns first: the norm's pair then reads gate_up's rows as they end up.
            pairs += [(DenseColumns(gate_up, width, 2 * width), [self.feed_forward.output_dense]),
                      (self.feed_forward_norm, [gate_up])]
        elif isinstance(self.feed_forward, FeedForward):
            pairs.append((self.feed_forward_norm, [self.feed_forward.intermediate]))
        return pairs

    def build(self, input_shape):
        for layer in (self.attention, self.feed_forward, self.attention_norm, self.feed_forward_norm,
                      self.post_attention_norm, self.post_feed_forward_norm):
            if layer is not None:
                layer.build(input_shape)

    def call(self, x, padding_mask=None, cache=None, cache_index=0, training=None,
             decoding_step=None, calls=KERAS_CALLS):
        """``decoding_step``: with ``cache``, the ``DecodingStep`` its attention shares with the
        other blocks (``run_decoder_blocks`` computes it once per call). ``calls``: how the
        sublayers are called (``torch_speedups.LayerCalls``)."""
        attended = calls.nested(self.attention, calls(self.attention_norm, x),
                                padding_mask=padding_mask, cache=cache, cache_index=cache_index,
                                decoding_step=decoding_step)
        if cache is not None:
            attended, cache = attended
        if self.post_norms:
            attended = calls(self.post_attention_norm, attended)
        x = x + calls(self.dropout_layer, attended, training=training)
        feed_forward = calls.nested(self.feed_forward, calls(self.feed_forward_norm, x))
        if self.post_norms:
            feed_forward = calls(self.post_feed_forward_norm, feed_forward)
        x = x + calls(self.dropout_layer, feed_forward, training=training)
        return x if cache is None else (x, cache)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_heads": self.num_heads, "head_dim": self.head_dim,
            "intermediate_dim": self.intermediate_dim,
            "num_key_value_heads": self.num_key_value_heads, "activation": self.activation,
            "feed_forward": self.feed_forward_type, "num_experts": self.num_experts,
            "num_experts_per_token": self.num_experts_per_token,
            "router_aux_loss_coefficient": self.router_aux_loss_coefficient,
            "normalization": self.normalization, "norm_epsilon": self.norm_epsilon,
            "norm_unit_offset": self.norm_unit_offset, "use_bias": self.use_bias,
            "rotary_max_wavelength": self.rotary_max_wavelength,
            "rotary_scaling_factor": self.rotary_scaling_factor,
            "sliding_window": self.sliding_window, "query_scale": self.query_scale,
            "attention_logit_soft_cap": self.attention_logit_soft_cap,
            "query_key_norm": self.query_key_norm, "post_norms": self.post_norms,
            "dropout": self.dropout,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        })
        return config


def run_decoder_blocks(blocks, x, padding_mask=None, caches=None, cache_index=0, run_block=None,
                       calls=KERAS_CALLS):
    """Hidden states through a stack of ``DecoderBlock``s.

    Without ``caches`` this is the full-sequence pass (training, scoring); with one cache per block
    (generation) each block reads and updates its cache, and the updated caches are returned too.
    The positions, rotary angles and attention mask of the new tokens are computed once
    (``DecodingStep``) for all the blocks that share an attention configuration.

    ``run_block`` (optional, same arguments as ``run_block_with_cache``) runs each block of a
    one-token step, e.g. ``torch_speedups.compiled_block_step(run_block_with_cache)``; longer steps
    (prefill chunks) and the default use ``run_block_with_cache``. ``calls`` calls the blocks
    (``torch_speedups.LayerCalls``).
    """
    if caches is None:
        for block in blocks:
            x = calls.nested(block, x, padding_mask=padding_mask)
        return x
    one_token = x.shape[1] == 1
    step = run_block if run_block is not None and one_token else run_block_with_cache
    length = ops.shape(x)[1]
    decoding_steps = {}
    new_caches = []
    for block, cache in zip(blocks, caches):
        key = block.attention.decoding_step_key
        if key not in decoding_steps:
            decoding_steps[key] = block.attention.decoding_step(length, ops.shape(cache)[2],
                                                                cache_index)
        x, cache = step(block, x, cache, cache_index, decoding_steps[key], calls)
        new_caches.append(cache)
    return x, new_caches


def run_block_with_cache(block, x, cache, cache_index, decoding_step=None, calls=KERAS_CALLS):
    """One block on tokens at positions ``cache_index…``, reading and updating its cache."""
    return calls.nested(block, x, cache=cache, cache_index=cache_index, decoding_step=decoding_step)
