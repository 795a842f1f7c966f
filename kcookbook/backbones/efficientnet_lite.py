"""EfficientNet-Lite (Tan & Le, 2019; the "Lite" variants of the TensorFlow TPU repository).

EfficientNet made mobile friendly: ReLU6 instead of swish, no squeeze-and-excitation, and the stem
(32 filters) and head (1280 filters) kept fixed while the width/depth coefficients scale the rest.
Every convolution pads like TensorFlow's "same" (Keras's ``padding="same"`` on every backend), each
followed by batch normalisation (epsilon 1e-3).

Reading order: the stage table ``STAGES``, the scaling rules, one inverted-residual (MBConv) block,
then the backbone that stacks them. The output is the last feature map,
``(batch, height / 32, width / 32, 1280)``; a task pools it.

    >>> lite0 = EfficientNetLiteBackbone.from_variant("lite0")  # random weights  # doctest: +SKIP
    >>> backbone = EfficientNetLiteBackbone(depth_coefficient=0.1, width_coefficient=0.25)
    >>> backbone.output.shape
    (None, None, None, 1280)
"""

import math

import keras

from kcookbook.backbones.backbone import Backbone
from kcookbook.components.depthwise_conv import DepthwiseConv2D

# One row per stage (efficientnet_lite_builder.py): repeats, kernel, stride, expansion, in, out.
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# variant: (width coefficient, depth coefficient, image resolution, dropout before the classifier)
VARIANTS = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}

STEM_FILTERS = 32
HEAD_FILTERS = 1280


def round_filters(filters, width_coefficient, divisor=8):
    """Scale a channel count by the width coefficient, to a multiple of 8, never 10% below."""
    scaled = filters * width_coefficient
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def round_repeats(repeats, depth_coefficient):
    return int(math.ceil(depth_coefficient * repeats))


def block_arguments(width_coefficient, depth_coefficient):
    """Every block's (kernel, stride, expansion, in, out), in order; Lite keeps the first and last
    stages' depth fixed and the first block's input at the fixed stem width."""
    blocks = []
    for index, (repeats, kernel, stride, expansion, in_filters, out_filters) in enumerate(STAGES):
        in_filters = round_filters(in_filters, width_coefficient)
        out_filters = round_filters(out_filters, width_coefficient)
        if index in (0, len(STAGES) - 1):
            if index == 0:
                in_filters = STEM_FILTERS
        else:
            repeats = round_repeats(repeats, depth_coefficient)
        for repeat in range(repeats):
            blocks.append((kernel, stride if repeat == 0 else 1, expansion,
                           in_filters if repeat == 0 else out_filters, out_filters))
    return blocks


def conv_bn(x, filters, kernel, stride, name, activation, epsilon, momentum, depthwise=False):
    """Convolution (no bias, TF "same" padding) → batch norm → optional ReLU6."""
    if depthwise:
        # Keras's layer with a fast jax path (XLA's CPU grouped convolution is slow; see the component).
        x = DepthwiseConv2D(kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    else:
        x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                                name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=epsilon, momentum=momentum, name=f"{name}_bn")(x)
    if activation:
        x = keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x)
    return x


def mbconv_block(x, kernel, stride, expansion, in_filters, out_filters, drop_rate, name, epsilon,
                 momentum):
    """Inverted residual: 1×1 expand → k×k depthwise → 1×1 project, plus the input when shapes match.

    The residual branch is dropped per example in training (stochastic depth, "drop connect").
    """
    inputs = x
    if expansion != 1:
        x = conv_bn(x, in_filters * expansion, 1, 1, f"{name}_expand", True, epsilon, momentum)
    x = conv_bn(x, None, kernel, stride, f"{name}_depthwise", True, epsilon, momentum, depthwise=True)
    x = conv_bn(x, out_filters, 1, 1, f"{name}_project", False, epsilon, momentum)
    if stride == 1 and in_filters == out_filters:
        if drop_rate > 0:
            x = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(x)
        x = keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


@keras.saving.register_keras_serializable(package="kcookbook")
class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite feature extractor: images → last feature map (1280 channels).

    Args:
        width_coefficient: channel multiplier (``VARIANTS`` lists lite0–lite4).
        depth_coefficient: block-count multiplier.
        drop_connect_rate: stochastic-depth rate of the last block (block ``i`` of ``n`` drops
            ``rate * i / n``), active only in training.
        image_shape: ``(height, width, channels)``; ``None`` sizes accept any resolution.
        batch_norm_epsilon, batch_norm_momentum: TensorFlow's 1e-3 and 0.99.
    """

    def __init__(self, width_coefficient=1.0, depth_coefficient=1.0, drop_connect_rate=0.2,
                 image_shape=(None, None, 3), batch_norm_epsilon=1e-3, batch_norm_momentum=0.99,
                 name="efficientnet_lite", dtype=None, **kwargs):
        image_shape = tuple(image_shape)
        images = keras.Input(shape=image_shape, name="images")
        bn = dict(epsilon=batch_norm_epsilon, momentum=batch_norm_momentum)
        x = conv_bn(images, STEM_FILTERS, 3, 2, "stem", True, **bn)
        blocks = block_arguments(width_coefficient, depth_coefficient)
        for index, (kernel, stride, expansion, in_filters, out_filters) in enumerate(blocks):
            x = mbconv_block(x, kernel, stride, expansion, in_filters, out_filters,
                             drop_connect_rate * index / len(blocks), f"block{index}", **bn)
        features = conv_bn(x, HEAD_FILTERS, 1, 1, "head", True, **bn)
        super().__init__(inputs=images, outputs=features, name=name, dtype=dtype, **kwargs)
        self.width_coefficient = width_coefficient
        self.depth_coefficient = depth_coefficient
        self.drop_connect_rate = drop_connect_rate
        self.image_shape = image_shape
        self.batch_norm_epsilon = batch_norm_epsilon
        self.batch_norm_momentum = batch_norm_momentum
        self.num_blocks = len(blocks)

    @classmethod
    def from_variant(cls, variant, **kwargs):
        """A randomly initialised ``"lite0"`` … ``"lite4"`` (pretrained weights: ``from_preset``)."""
        if variant not in VARIANTS:
            raise ValueError(f"Unknown EfficientNet-Lite variant {variant!r}; choose from {sorted(VARIANTS)}.")
        width, depth, _, _ = VARIANTS[variant]
        return cls(width_coefficient=width, depth_coefficient=depth, name=f"efficientnet_{variant}",
                   **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({
            "width_coefficient": self.width_coefficient, "depth_coefficient": self.depth_coefficient,
            "drop_connect_rate": self.drop_connect_rate, "image_shape": list(self.image_shape),
            "batch_norm_epsilon": self.batch_norm_epsilon,
            "batch_norm_momentum": self.batch_norm_momentum,
        })
        return config
