"""EfficientNet (Tan & Le, 2019, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks") and its mobile-friendly "Lite" variants (the TensorFlow TPU repository's EfficientNet-Lite).

A strided 3×3 stem convolution, stacks of inverted-residual (MBConv) blocks, and a 1×1 head
convolution; every convolution is followed by batch normalisation and (except a block's projection)
the activation. An MBConv block expands its input with a 1×1 convolution, filters it with a k×k
depthwise convolution, optionally re-weights channels with squeeze-and-excitation, and projects back
with a 1×1 convolution, adding its input when the shape is unchanged.

The two families differ only in settings, so one backbone builds both:

============================  ===========================  ===============================
                              EfficientNet B0–B7           EfficientNet-Lite0–4
============================  ===========================  ===============================
activation                    swish                        ReLU6
squeeze-and-excitation        ratio 0.25 of the input      none
stem / head widths            scaled with the width        fixed 32 / 1280
first / last stack depth      scaled with the depth        fixed
============================  ===========================  ===============================

``EfficientNetBackbone`` takes the *resolved* network (filters and block counts per stack, after
any width/depth scaling); ``round_filters`` / ``round_repeats`` are the scaling rules, and
``EfficientNetLiteBackbone`` applies Lite's to the ``STAGES`` table.

Padding: ``"same"`` is TensorFlow's (Keras's ``padding="same"`` on every backend: an odd extra
row/column after), as in Google's checkpoints; ``"symmetric"`` pads ``kernel // 2`` on each side
before a strided convolution, as PyTorch (timm) and therefore KerasHub's presets do. They differ
only for strided convolutions.

Reading order: the stage table, the scaling rules, the convolution helper, one MBConv block, the
backbone. The output is the last feature map, ``(batch, height / 32, width / 32, head_filters)``;
a task pools it.

    >>> lite0 = EfficientNetLiteBackbone.from_variant("lite0")  # random weights  # doctest: +SKIP
    >>> backbone = EfficientNetLiteBackbone(depth_coefficient=0.1, width_coefficient=0.25)
    >>> backbone.output.shape
    (None, None, None, 1280)
    >>> tiny = EfficientNetBackbone(
    ...     stackwise_num_blocks=[1, 2], stackwise_kernel_sizes=[3, 5], stackwise_strides=[1, 2],
    ...     stackwise_expansion_ratios=[1, 6], stackwise_output_filters=[8, 16],
    ...     stackwise_squeeze_excite_ratios=[0.25, 0.25], stem_filters=16, head_filters=32)
    >>> tiny.output.shape
    (None, None, None, 32)
"""

import math

import keras

from kcookbook.backbones.backbone import Backbone, check_backbone_config, layers_in_backbone_dtype
from kcookbook.components.depthwise_conv import DepthwiseConv2D

# One row per stage (efficientnet_builder.py, shared by B0 and Lite): repeats, kernel, stride,
# expansion, in, out.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# Lite variant: (width coefficient, depth coefficient, image resolution, dropout before the classifier)
VARIANTS = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}

STEM_FILTERS = 32
HEAD_FILTERS = 1280
PADDINGS = ("same", "symmetric")


def round_filters(filters, width_coefficient, divisor=8, min_filters=None, cap_decrease=True):
    """Scale a channel count by the width coefficient, to a multiple of ``divisor`` (at least
    ``min_filters``, default ``divisor``); with ``cap_decrease``, never more than 10% below."""
    scaled = filters * width_coefficient
    rounded = max(divisor if min_filters is None else min_filters,
                  int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if cap_decrease and rounded < 0.9 * scaled else rounded)


def round_repeats(repeats, depth_coefficient):
    return int(math.ceil(depth_coefficient * repeats))


def lite_stacks(width_coefficient, depth_coefficient):
    """Lite's scaling of ``STAGES``: per stack (blocks, kernel, stride, expansion, output filters),
    the first and last stacks' depth kept fixed."""
    stacks = []
    for index, (repeats, kernel, stride, expansion, _, out_filters) in enumerate(STAGES):
        if 0 < index < len(STAGES) - 1:
            repeats = round_repeats(repeats, depth_coefficient)
        stacks.append((repeats, kernel, stride, expansion, round_filters(out_filters, width_coefficient)))
    return stacks


def block_arguments(width_coefficient, depth_coefficient):
    """Lite's every block (kernel, stride, expansion, in, out), in order, from the fixed-width stem."""
    blocks, in_filters = [], STEM_FILTERS
    for repeats, kernel, stride, expansion, out_filters in lite_stacks(width_coefficient, depth_coefficient):
        for repeat in range(repeats):
            blocks.append((kernel, stride if repeat == 0 else 1, expansion, in_filters, out_filters))
            in_filters = out_filters
    return blocks


def conv_bn(x, filters, kernel, stride, name, activation, padding, epsilon, momentum, depthwise=False):
    """Convolution (no bias) → batch norm → activation (``None``: none), named ``{name}_conv``,
    ``{name}_bn``, ``{name}_activation``."""
    keras_padding = "same"
    if padding == "symmetric" and stride > 1 and kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        keras_padding = "valid"
    if depthwise:
        # Keras's layer with a fast jax path (XLA's CPU grouped convolution is slow; see the component).
        x = DepthwiseConv2D(kernel, stride, padding=keras_padding, use_bias=False, name=f"{name}_conv")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, padding=keras_padding, use_bias=False,
                                name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=epsilon, momentum=momentum, name=f"{name}_bn")(x)
    if activation:
        x = keras.layers.Activation(activation, name=f"{name}_activation")(x)
    return x


def squeeze_excite(x, squeeze_filters, activation, name):
    """Channel attention: global average → 1×1 conv (``activation``) → 1×1 conv (sigmoid) → scale."""
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_squeeze")(x)
    s = keras.layers.Conv2D(squeeze_filters, 1, activation=activation, name=f"{name}_reduce")(s)
    s = keras.layers.Conv2D(x.shape[-1], 1, activation="sigmoid", name=f"{name}_expand")(s)
    return keras.layers.Multiply(name=f"{name}_excite")([x, s])


def mbconv_block(x, kernel, stride, expansion, out_filters, squeeze_excite_ratio, drop_rate, name,
                 activation, padding, epsilon, momentum):
    """Inverted residual: 1×1 expand → k×k depthwise → squeeze-excite (ratio of the block's input
    channels; 0: none) → 1×1 project, plus the input when shapes match.

    The residual branch is dropped per example in training (stochastic depth, "drop connect").
    """
    inputs, in_filters = x, x.shape[-1]
    options = dict(padding=padding, epsilon=epsilon, momentum=momentum)
    if expansion != 1:
        x = conv_bn(x, in_filters * expansion, 1, 1, f"{name}_expand", activation, **options)
    x = conv_bn(x, None, kernel, stride, f"{name}_depthwise", activation, depthwise=True, **options)
    if squeeze_excite_ratio:
        x = squeeze_excite(x, max(1, int(in_filters * squeeze_excite_ratio)), activation, f"{name}_se")
    x = conv_bn(x, out_filters, 1, 1, f"{name}_project", None, **options)
    if stride == 1 and in_filters == out_filters:
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


@keras.saving.register_keras_serializable(package="kcookbook")
class EfficientNetBackbone(Backbone):
    """EfficientNet feature extractor: images → last feature map (``head_filters`` channels).

    Every ``stackwise_*`` list has one entry per stack; a stack's first block takes its stride and
    the previous stack's (or the stem's) channels, the others stride 1.

    Args:
        stackwise_num_blocks: blocks per stack (after depth scaling).
        stackwise_kernel_sizes: depthwise kernel size per stack.
        stackwise_strides: stride of each stack's first block.
        stackwise_expansion_ratios: width of the expanded (depthwise) part over the block's input.
        stackwise_output_filters: output channels per stack (after width scaling).
        stackwise_squeeze_excite_ratios: squeeze-and-excitation width over the block's input
            channels; 0 or ``None`` (all stacks): none.
        stem_filters, head_filters: channels of the stem and of the final 1×1 convolution.
        activation: any Keras activation name (``"swish"``, ``"relu6"``…).
        padding: ``"same"`` (TensorFlow) or ``"symmetric"`` (PyTorch) for strided convolutions.
        drop_connect_rate: stochastic-depth rate of the last block (block ``i`` of ``n`` drops
            ``rate * i / n``), active only in training.
        image_shape: ``(height, width, channels)``; ``None`` sizes accept any resolution.
        batch_norm_epsilon, batch_norm_momentum: TensorFlow's 1e-3 and 0.99 by default.
    """

    @layers_in_backbone_dtype
    def __init__(self, stackwise_num_blocks, stackwise_kernel_sizes, stackwise_strides,
                 stackwise_expansion_ratios, stackwise_output_filters,
                 stackwise_squeeze_excite_ratios=None, stem_filters=STEM_FILTERS,
                 head_filters=HEAD_FILTERS, activation="swish", padding="same", drop_connect_rate=0.2,
                 image_shape=(None, None, 3), batch_norm_epsilon=1e-3, batch_norm_momentum=0.99,
                 name="efficientnet", dtype=None, **kwargs):
        check_backbone_config(self, locals())
        stacks = [list(v) for v in (stackwise_num_blocks, stackwise_kernel_sizes, stackwise_strides,
                                    stackwise_expansion_ratios, stackwise_output_filters)]
        se_ratios = list(stackwise_squeeze_excite_ratios or [0.0] * len(stacks[0]))
        if len({len(v) for v in stacks + [se_ratios]}) != 1:
            raise ValueError("Every stackwise_* list needs one entry per stack; got lengths "
                             f"{[len(v) for v in stacks + [se_ratios]]}.")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}.")
        image_shape = tuple(image_shape)
        options = dict(padding=padding, epsilon=batch_norm_epsilon, momentum=batch_norm_momentum)

        images = keras.Input(shape=image_shape, name="images")
        x = conv_bn(images, stem_filters, 3, 2, "stem", activation, **options)
        num_blocks, index = sum(stacks[0]), 0
        for blocks, kernel, stride, expansion, out_filters, se_ratio in zip(*stacks, se_ratios):
            for repeat in range(blocks):
                x = mbconv_block(x, kernel, stride if repeat == 0 else 1, expansion, out_filters,
                                 se_ratio, drop_connect_rate * index / num_blocks, f"block{index}",
                                 activation, **options)
                index += 1
        features = conv_bn(x, head_filters, 1, 1, "head", activation, **options)
        super().__init__(inputs=images, outputs=features, name=name, dtype=dtype, **kwargs)
        (self.stackwise_num_blocks, self.stackwise_kernel_sizes, self.stackwise_strides,
         self.stackwise_expansion_ratios, self.stackwise_output_filters) = stacks
        self.stackwise_squeeze_excite_ratios = se_ratios
        self.stem_filters = stem_filters
        self.head_filters = head_filters
        self.activation = activation
        self.padding = padding
        self.drop_connect_rate = drop_connect_rate
        self.image_shape = image_shape
        self.batch_norm_epsilon = batch_norm_epsilon
        self.batch_norm_momentum = batch_norm_momentum
        self.num_blocks = num_blocks

    def get_config(self):
        config = super().get_config()
        config.update({
            "stackwise_num_blocks": self.stackwise_num_blocks,
            "stackwise_kernel_sizes": self.stackwise_kernel_sizes,
            "stackwise_strides": self.stackwise_strides,
            "stackwise_expansion_ratios": self.stackwise_expansion_ratios,
            "stackwise_output_filters": self.stackwise_output_filters,
            "stackwise_squeeze_excite_ratios": self.stackwise_squeeze_excite_ratios,
            "stem_filters": self.stem_filters, "head_filters": self.head_filters,
            "activation": self.activation, "padding": self.padding,
            "drop_connect_rate": self.drop_connect_rate, "image_shape": list(self.image_shape),
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "batch_norm_momentum": self.batch_norm_momentum,
        })
        return config


@keras.saving.register_keras_serializable(package="kcookbook")
class EfficientNetLiteBackbone(EfficientNetBackbone):
    """EfficientNet-Lite: ReLU6, no squeeze-and-excitation, TensorFlow "same" padding, the stem
    (32) and head (1280) widths and the first and last stacks' depths fixed.

    Args:
        width_coefficient: channel multiplier (``VARIANTS`` lists lite0–lite4).
        depth_coefficient: block-count multiplier.
        drop_connect_rate, image_shape, batch_norm_epsilon, batch_norm_momentum: as
            ``EfficientNetBackbone``'s.
    """

    def __init__(self, width_coefficient=1.0, depth_coefficient=1.0, drop_connect_rate=0.2,
                 image_shape=(None, None, 3), batch_norm_epsilon=1e-3, batch_norm_momentum=0.99,
                 name="efficientnet_lite", dtype=None, **kwargs):
        check_backbone_config(self, locals())
        stacks = lite_stacks(width_coefficient, depth_coefficient)
        num_blocks, kernels, strides, expansions, out_filters = (list(v) for v in zip(*stacks))
        super().__init__(num_blocks, kernels, strides, expansions, out_filters, stem_filters=STEM_FILTERS,
                         head_filters=HEAD_FILTERS, activation="relu6", padding="same",
                         drop_connect_rate=drop_connect_rate, image_shape=image_shape,
                         batch_norm_epsilon=batch_norm_epsilon, batch_norm_momentum=batch_norm_momentum,
                         name=name, dtype=dtype, **kwargs)
        self.width_coefficient = width_coefficient
        self.depth_coefficient = depth_coefficient

    @classmethod
    def from_variant(cls, variant, **kwargs):
        """A randomly initialised ``"lite0"`` … ``"lite4"`` (pretrained weights: ``from_preset``)."""
        if variant not in VARIANTS:
            raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(VARIANTS)}.")
        width, depth, _, _ = VARIANTS[variant]
        return cls(width_coefficient=width, depth_coefficient=depth, name=f"efficientnet_{variant}",
                   **kwargs)

    def get_config(self):
        config = Backbone.get_config(self)
        config.update({
            "width_coefficient": self.width_coefficient, "depth_coefficient": self.depth_coefficient,
            "drop_connect_rate": self.drop_connect_rate, "image_shape": list(self.image_shape),
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "batch_norm_momentum": self.batch_norm_momentum,
        })
        return config
