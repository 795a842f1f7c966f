"""The layers a latent-diffusion UNet and its autoencoder are built from (channels last).

* :func:`sinusoidal_timesteps` and :class:`TimestepEmbedding`: a diffusion timestep → sin/cos
  features → a two-layer SiLU MLP (DDPM's time embedding).
* :class:`ResidualConvBlock`: GroupNorm → SiLU → 3×3 conv, twice, with the time embedding added
  in between (when given) and a 1×1 shortcut when the width changes.
* :class:`Attention`: multi-head attention with separate query/key/value projections, to the
  block's own positions (self) or to a context sequence (cross), output projection with a bias.
* :class:`SpatialTransformer`: GroupNorm, a 1×1 conv (or dense) in, transformer blocks over the
  pixels (self-attention, cross-attention to the text states, GEGLU feed-forward), out, residual.
* :class:`SpatialSelfAttention`: the autoencoder's single-head attention over all pixels.
* :class:`Downsample` (3×3 conv, stride 2) and :class:`Upsample` (nearest ×2, then 3×3 conv).
* :class:`GroupNormalization`: Keras', in one fused kernel on torch.
* :class:`TinyResidualBlock`: the tiny autoencoder's (TAESD's) block: three 3×3 convs with ReLUs
  between, plus the input, then ReLU.

    >>> x = ops.ones((1, 4, 4, 8))
    >>> block = ResidualConvBlock(16, groups=4)
    >>> tuple(block(x, ops.ones((1, 32))).shape)
    (1, 4, 4, 16)
"""

import math

import keras
from keras import ops

from kcookbook.components.attention import dot_product_attention
from kcookbook.components.convolution import Conv2D
from kcookbook.components.torch_speedups import fused_group_norm_channels_last


def sinusoidal_timesteps(timesteps, dim, flip_sin_to_cos=True, frequency_shift=0.0, max_period=10_000):
    """(batch,) timesteps (ints or floats) → (batch, dim) sin/cos features (DDPM's embedding)."""
    half = dim // 2
    exponent = -math.log(max_period) * ops.arange(half, dtype="float32") / (half - frequency_shift)
    angles = ops.cast(timesteps, "float32")[:, None] * ops.exp(exponent)[None, :]
    sin, cos = ops.sin(angles), ops.cos(angles)
    features = ops.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        features = ops.pad(features, [[0, 0], [0, 1]])
    return features


@keras.saving.register_keras_serializable(package="kcookbook")
class GroupNormalization(keras.layers.GroupNormalization):
    """``keras.layers.GroupNormalization`` (same weights, config and results) that, on torch, for
    float32 channels-last inputs with ``scale`` and ``center``, runs as torch's one ``group_norm``
    kernel (``torch_speedups.fused_group_norm_channels_last``) instead of Keras' eight ops."""

    def call(self, inputs):
        if (keras.config.backend() == "torch" and self.axis in (-1, len(inputs.shape) - 1) and self.scale
                and self.center and len(inputs.shape) >= 3
                and keras.backend.standardize_dtype(inputs.dtype) == "float32"
                and self.compute_dtype == "float32" and self.gamma.dtype == "float32"):
            return fused_group_norm_channels_last(inputs, self.groups, self.gamma.value, self.beta.value,
                                                  self.epsilon)
        return super().call(inputs)


def group_norm(groups, epsilon, name):
    return GroupNormalization(groups, axis=-1, epsilon=epsilon, name=name)


def conv(filters, kernel_size, name, strides=1, padding="same", use_bias=True):
    return Conv2D(filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias, name=name)


@keras.saving.register_keras_serializable(package="kcookbook")
class TimestepEmbedding(keras.layers.Layer):
    """(batch,) timesteps → (batch, output_dim): sinusoidal features of ``feature_dim``, then dense →
    SiLU → dense."""

    def __init__(self, feature_dim, output_dim, flip_sin_to_cos=True, frequency_shift=0.0, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim, self.output_dim = feature_dim, output_dim
        self.flip_sin_to_cos, self.frequency_shift = flip_sin_to_cos, frequency_shift
        self.dense_1 = keras.layers.Dense(output_dim, name="dense_1")
        self.dense_2 = keras.layers.Dense(output_dim, name="dense_2")

    def build(self, input_shape):
        self.dense_1.build((None, self.feature_dim))
        self.dense_2.build((None, self.output_dim))

    def call(self, timesteps):
        x = sinusoidal_timesteps(timesteps, self.feature_dim, self.flip_sin_to_cos, self.frequency_shift)
        return self.dense_2(ops.silu(self.dense_1(ops.cast(x, self.compute_dtype))))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        return {**super().get_config(), "feature_dim": self.feature_dim, "output_dim": self.output_dim,
                "flip_sin_to_cos": self.flip_sin_to_cos, "frequency_shift": self.frequency_shift}


@keras.saving.register_keras_serializable(package="kcookbook")
class ResidualConvBlock(keras.layers.Layer):
    """GroupNorm → SiLU → conv → (+ dense(SiLU(time embedding))) → GroupNorm → SiLU → conv, plus the
    input (through a 1×1 conv when the width changes). Call ``block(x)`` or ``block(x, embedding)``."""

    def __init__(self, filters, groups=32, epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.groups, self.epsilon = filters, groups, epsilon
        self.norm_1 = group_norm(groups, epsilon, "norm_1")
        self.conv_1 = conv(filters, 3, "conv_1")
        self.norm_2 = group_norm(groups, epsilon, "norm_2")
        self.conv_2 = conv(filters, 3, "conv_2")
        self.shortcut = None

    def build(self, x_shape, embedding_shape=None):
        input_shape = x_shape
        channels = input_shape[-1]
        self.norm_1.build(input_shape)
        self.conv_1.build(input_shape)
        out_shape = tuple(input_shape[:-1]) + (self.filters,)
        self.norm_2.build(out_shape)
        self.conv_2.build(out_shape)
        if embedding_shape is not None:
            self.embedding_projection = keras.layers.Dense(self.filters, name="embedding_projection")
            self.embedding_projection.build(embedding_shape)
        if channels != self.filters:
            self.shortcut = conv(self.filters, 1, "shortcut")
            self.shortcut.build(input_shape)

    def call(self, x, embedding=None):
        h = self.conv_1(ops.silu(self.norm_1(x)))
        if embedding is not None:
            h = h + self.embedding_projection(ops.silu(embedding))[:, None, None, :]
        h = self.conv_2(ops.silu(self.norm_2(h)))
        return h + (x if self.shortcut is None else self.shortcut(x))

    def compute_output_shape(self, x_shape, embedding_shape=None):
        return tuple(x_shape[:-1]) + (self.filters,)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "groups": self.groups, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="kcookbook")
class Attention(keras.layers.Layer):
    """Multi-head scaled dot-product attention from ``x`` (batch, length, width) to ``context``
    (batch, context_length, context_width; ``x`` itself when None): separate query/key/value
    projections (biases when ``use_bias``), an output projection with a bias."""

    def __init__(self, num_heads, head_dim, use_bias=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_dim, self.use_bias = num_heads, head_dim, use_bias
        inner = num_heads * head_dim
        self.query = keras.layers.Dense(inner, use_bias=use_bias, name="query")
        self.key = keras.layers.Dense(inner, use_bias=use_bias, name="key")
        self.value = keras.layers.Dense(inner, use_bias=use_bias, name="value")
        self.output_dense = None

    def build(self, x_shape, context_shape=None):
        input_shape = x_shape
        context_shape = input_shape if context_shape is None else context_shape
        self.query.build(input_shape)
        self.key.build(context_shape)
        self.value.build(context_shape)
        self.output_dense = keras.layers.Dense(input_shape[-1], name="output")
        self.output_dense.build(tuple(input_shape[:-1]) + (self.num_heads * self.head_dim,))

    def _heads(self, x):
        return ops.reshape(x, ops.shape(x)[:-1] + (self.num_heads, self.head_dim))

    def call(self, x, context=None):
        context = x if context is None else context
        out = dot_product_attention(self._heads(self.query(x)), self._heads(self.key(context)),
                                    self._heads(self.value(context)))
        return self.output_dense(ops.reshape(out, ops.shape(out)[:-2] + (self.num_heads * self.head_dim,)))

    def compute_output_shape(self, x_shape, context_shape=None):
        return tuple(x_shape)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "head_dim": self.head_dim,
                "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="kcookbook")
class GEGLUFeedForward(keras.layers.Layer):
    """dense to 2·``intermediate_dim`` → value · GELU(gate) → dense back to the input width."""

    def __init__(self, intermediate_dim, **kwargs):
        super().__init__(**kwargs)
        self.intermediate_dim = intermediate_dim
        self.gated = keras.layers.Dense(2 * intermediate_dim, name="gated")
        self.output_dense = None

    def build(self, input_shape):
        self.gated.build(input_shape)
        self.output_dense = keras.layers.Dense(input_shape[-1], name="output")
        self.output_dense.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))

    def call(self, x):
        value, gate = ops.split(self.gated(x), 2, axis=-1)
        return self.output_dense(value * ops.gelu(gate, approximate=False))

    def get_config(self):
        return {**super().get_config(), "intermediate_dim": self.intermediate_dim}


@keras.saving.register_keras_serializable(package="kcookbook")
class SpatialTransformerBlock(keras.layers.Layer):
    """Pre-norm: x + self-attention, x + cross-attention to the context, x + GEGLU feed-forward."""

    def __init__(self, num_heads, head_dim, layer_norm_epsilon=1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.head_dim, self.layer_norm_epsilon = num_heads, head_dim, layer_norm_epsilon
        self.norms = [keras.layers.LayerNormalization(epsilon=layer_norm_epsilon, name=f"norm_{i}")
                      for i in (1, 2, 3)]
        self.self_attention = Attention(num_heads, head_dim, name="self_attention")
        self.cross_attention = Attention(num_heads, head_dim, name="cross_attention")
        self.feed_forward = None

    def build(self, x_shape, context_shape):
        input_shape = x_shape
        for norm in self.norms:
            norm.build(input_shape)
        self.self_attention.build(input_shape)
        self.cross_attention.build(input_shape, context_shape)
        self.feed_forward = GEGLUFeedForward(4 * input_shape[-1], name="feed_forward")
        self.feed_forward.build(input_shape)

    def call(self, x, context):
        x = x + self.self_attention(self.norms[0](x))
        x = x + self.cross_attention(self.norms[1](x), context)
        return x + self.feed_forward(self.norms[2](x))

    def compute_output_shape(self, x_shape, context_shape):
        return tuple(x_shape)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "head_dim": self.head_dim,
                "layer_norm_epsilon": self.layer_norm_epsilon}


def _flatten_pixels(x):
    """(batch, height, width, channels) → (batch, height·width, channels)."""
    shape = ops.shape(x)
    return ops.reshape(x, (shape[0], shape[1] * shape[2], shape[3]))


@keras.saving.register_keras_serializable(package="kcookbook")
class SpatialTransformer(keras.layers.Layer):
    """Transformer blocks over an image's pixels, conditioned on a context sequence (the text states).

    GroupNorm → projection in (1×1 conv, or a dense layer with ``linear_projection``: SD 2.x) →
    ``num_layers`` :class:`SpatialTransformerBlock` → projection out → plus the input.
    """

    def __init__(self, num_heads, num_layers=1, groups=32, epsilon=1e-6, linear_projection=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.num_layers, self.groups, self.epsilon = num_heads, num_layers, groups, epsilon
        self.linear_projection = linear_projection
        self.norm = group_norm(groups, epsilon, "norm")
        self.blocks, self.projection_in, self.projection_out = [], None, None

    def _projection(self, channels, name):
        return keras.layers.Dense(channels, name=name) if self.linear_projection else conv(channels, 1, name)

    def build(self, x_shape, context_shape):
        input_shape = x_shape
        channels = input_shape[-1]
        if channels % self.num_heads:
            raise ValueError(f"{self.name}: {channels} channels do not split into num_heads={self.num_heads}.")
        self.norm.build(input_shape)
        self.projection_in = self._projection(channels, "projection_in")
        self.projection_in.build(input_shape)
        self.blocks = [SpatialTransformerBlock(self.num_heads, channels // self.num_heads, name=f"block_{i}")
                       for i in range(self.num_layers)]
        for block in self.blocks:
            block.build((None, None, channels), context_shape)
        self.projection_out = self._projection(channels, "projection_out")
        self.projection_out.build(input_shape)

    def call(self, x, context):
        shape = ops.shape(x)
        h = self.norm(x)
        if not self.linear_projection:
            h = self.projection_in(h)
        h = _flatten_pixels(h)
        if self.linear_projection:
            h = self.projection_in(h)
        for block in self.blocks:
            h = block(h, context)
        if self.linear_projection:
            h = self.projection_out(h)
        h = ops.reshape(h, shape)
        if not self.linear_projection:
            h = self.projection_out(h)
        return x + h

    def compute_output_shape(self, x_shape, context_shape):
        return tuple(x_shape)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "num_layers": self.num_layers,
                "groups": self.groups, "epsilon": self.epsilon, "linear_projection": self.linear_projection}


@keras.saving.register_keras_serializable(package="kcookbook")
class SpatialSelfAttention(keras.layers.Layer):
    """The autoencoder's attention: GroupNorm, then one head as wide as the channels over all
    pixels (projections with biases), plus the input."""

    def __init__(self, groups=32, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.groups, self.epsilon = groups, epsilon
        self.norm = group_norm(groups, epsilon, "norm")
        self.attention = None

    def build(self, input_shape):
        self.norm.build(input_shape)
        self.attention = Attention(1, input_shape[-1], use_bias=True, name="attention")
        self.attention.build((None, None, input_shape[-1]))

    def call(self, x):
        h = self.attention(_flatten_pixels(self.norm(x)))
        return x + ops.reshape(h, ops.shape(x))

    def get_config(self):
        return {**super().get_config(), "groups": self.groups, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="kcookbook")
class Downsample(keras.layers.Layer):
    """3×3 conv with stride 2 after zero padding: one pixel on every side (``"symmetric"``, the
    UNet's and the tiny autoencoder's, which has no bias) or one on the bottom and right only
    (``"bottom_right"``, the autoencoder's)."""

    def __init__(self, filters, padding="symmetric", use_bias=True, **kwargs):
        super().__init__(**kwargs)
        if padding not in ("symmetric", "bottom_right"):
            raise ValueError(f"Downsample padding must be 'symmetric' or 'bottom_right', got {padding!r}.")
        self.filters, self.padding, self.use_bias = filters, padding, use_bias
        self.conv = conv(filters, 3, "conv", strides=2, padding="valid", use_bias=use_bias)

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        before = 1 if self.padding == "symmetric" else 0
        return self.conv(ops.pad(x, [[0, 0], [before, 1], [before, 1], [0, 0]]))

    def compute_output_shape(self, input_shape):
        half = [None if size is None else size // 2 for size in input_shape[1:3]]
        return (input_shape[0], *half, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "padding": self.padding,
                "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="kcookbook")
class Upsample(keras.layers.Layer):
    """Nearest-neighbour ×2, then a 3×3 conv (without a bias in the tiny autoencoder)."""

    def __init__(self, filters, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.use_bias = filters, use_bias
        self.conv = conv(filters, 3, "conv", use_bias=use_bias)

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x):
        return self.conv(ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2))

    def compute_output_shape(self, input_shape):
        double = [None if size is None else size * 2 for size in input_shape[1:3]]
        return (input_shape[0], *double, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "use_bias": self.use_bias}


@keras.saving.register_keras_serializable(package="kcookbook")
class TinyResidualBlock(keras.layers.Layer):
    """ReLU(conv → ReLU → conv → ReLU → conv (3×3, with biases) + the input), the input through a
    1×1 conv without a bias when the width changes (TAESD's block)."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.convs = [conv(filters, 3, f"conv_{i}") for i in (1, 2, 3)]
        self.shortcut = None

    def build(self, input_shape):
        out_shape = tuple(input_shape[:-1]) + (self.filters,)
        for i, layer in enumerate(self.convs):
            layer.build(input_shape if i == 0 else out_shape)
        if input_shape[-1] != self.filters:
            self.shortcut = conv(self.filters, 1, "shortcut", use_bias=False)
            self.shortcut.build(input_shape)

    def call(self, x):
        h = ops.relu(self.convs[0](x))
        h = self.convs[2](ops.relu(self.convs[1](h)))
        return ops.relu(h + (x if self.shortcut is None else self.shortcut(x)))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}
