"""YOLOv8's CSPDarknet backbone and PAN-FPN neck: pixels → features at strides 8, 16 and 32.

The network (Jocher et al., Ultralytics YOLOv8, 2023) is built from three blocks:

* **conv-BN-SiLU**: a bias-free convolution padded by ``kernel // 2`` on every side, batch norm
  (epsilon 1e-3), SiLU.
* **C2f** (cross-stage partial, two convolutions, "fast"): a 1×1 conv to ``2c`` channels split in
  two halves; ``n`` bottlenecks (two 3×3 conv-BN-SiLU, plus the input where ``shortcut``) run one
  after another on the second half, and every intermediate result is concatenated with both halves
  before a 1×1 conv to the output width.
* **SPPF** (spatial pyramid pooling, fast): a 1×1 conv to half the width, three 5×5 stride-1 max
  pools in a row, the four concatenated, a 1×1 conv.

Backbone (P1…P5, each a stride-2 3×3 conv-BN-SiLU; C2f blocks with 3, 6, 6, 3 bottlenecks × depth
after P2…P5, SPPF on P5), then the neck: P5 is upsampled (nearest) and merged with P4 and then P3
(top-down, C2f without shortcuts), and the P3 result is strided back down and merged with P4 and P5
(bottom-up). The three bottom-up outputs are the features a detection head reads:
``{"P3": (b, h/8, w/8, c3), "P4": (b, h/16, w/16, c4), "P5": (b, h/32, w/32, c5)}``.

The five published scales are ``depth_coefficient`` / ``width_coefficient`` / ``max_channels``
(``SCALES``): a stage of ``n`` blocks gets ``max(round(n × depth), 1)``, a layer of ``c`` channels
``ceil(min(c, max_channels) × width / 8) × 8``.
"""

import math

import keras
from keras import layers, ops

from kcookbook.backbones.backbone import Backbone, check_backbone_config, layers_in_backbone_dtype
from kcookbook.components.convolution import Conv2D
from kcookbook.components.pooling import MaxPooling2D

# scale: (depth_coefficient, width_coefficient, max_channels)
SCALES = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
    "l": (1.00, 1.00, 512),
    "x": (1.00, 1.25, 512),
}
BASE_WIDTHS = (64, 128, 256, 512, 1024)  # P1…P5 at width 1
BASE_BLOCKS = (3, 6, 6, 3)  # C2f bottlenecks after P2…P5 at depth 1; the neck's C2f blocks have 3
BATCH_NORM_EPSILON = 1e-3
BATCH_NORM_MOMENTUM = 0.97  # torch's 0.03
FEATURE_STRIDES = (8, 16, 32)


def scaled_width(channels, width_coefficient, max_channels):
    """Channels of a layer at this width: a multiple of 8."""
    return int(math.ceil(min(channels, max_channels) * width_coefficient / 8) * 8)


def scaled_depth(blocks, depth_coefficient):
    return max(round(blocks * depth_coefficient), 1) if blocks > 1 else blocks


def conv_bn_silu(x, filters, kernel_size, strides, name):
    """Conv (no bias, padded ``kernel_size // 2`` on every side, as torch pads) → BN → SiLU."""
    pad = kernel_size // 2
    if pad and strides > 1:  # "same" would pad stride-2 convolutions on one side only
        x = layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = Conv2D(filters, kernel_size, strides, padding=padding, use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, momentum=BATCH_NORM_MOMENTUM, name=f"{name}_bn")(x)
    return layers.Activation("silu", name=f"{name}_silu")(x)


def c2f_block(x, filters, num_bottlenecks, shortcut, name):
    """C2f: split a 1×1 conv in two, chain ``num_bottlenecks`` bottlenecks on one half, concatenate all."""
    hidden = filters // 2
    y = conv_bn_silu(x, 2 * hidden, 1, 1, f"{name}_pre")
    parts = list(ops.split(y, 2, axis=-1))
    for i in range(num_bottlenecks):
        inner = conv_bn_silu(parts[-1], hidden, 3, 1, f"{name}_bottleneck{i}_conv1")
        inner = conv_bn_silu(inner, hidden, 3, 1, f"{name}_bottleneck{i}_conv2")
        parts.append(layers.Add(name=f"{name}_bottleneck{i}_add")([parts[-1], inner]) if shortcut else inner)
    y = layers.Concatenate(axis=-1, name=f"{name}_concat")(parts)
    return conv_bn_silu(y, filters, 1, 1, f"{name}_post")


def sppf_block(x, filters, pool_size, name):
    """SPPF: 1×1 conv to half the input width, three chained max pools, concatenated, 1×1 conv."""
    hidden = x.shape[-1] // 2
    y = conv_bn_silu(x, hidden, 1, 1, f"{name}_pre")
    parts = [y]
    for i in range(3):
        parts.append(MaxPooling2D(pool_size, strides=1, padding="same", name=f"{name}_pool{i}")(parts[-1]))
    y = layers.Concatenate(axis=-1, name=f"{name}_concat")(parts)
    return conv_bn_silu(y, filters, 1, 1, f"{name}_post")


@keras.saving.register_keras_serializable(package="kcookbook")
class YOLOv8Backbone(Backbone):
    """CSPDarknet-v8 + PAN-FPN: images → ``{"P3", "P4", "P5"}`` features at strides 8, 16, 32.

    >>> backbone = YOLOv8Backbone.from_scale("n")  # doctest: +SKIP
    >>> {k: v.shape for k, v in backbone.output.items()}  # doctest: +SKIP
    {'P3': (None, None, None, 64), 'P4': (None, None, None, 128), 'P5': (None, None, None, 256)}

    Args:
        depth_coefficient: bottlenecks per C2f block are ``round(base × depth)`` (n, s: 0.33).
        width_coefficient: channels are ``base × width`` rounded up to a multiple of 8 (n: 0.25).
        max_channels: base widths are capped here before scaling (m: 768; l, x: 512).
        image_shape: ``(height, width, channels)``; height and width may be None. Inputs are RGB in
            [0, 1] (pixels / 255); height and width should be multiples of 32.
    """

    @layers_in_backbone_dtype
    def __init__(self, depth_coefficient=0.33, width_coefficient=0.25, max_channels=1024,
                 image_shape=(None, None, 3), dtype=None, **kwargs):
        check_backbone_config(self, locals())
        widths = [scaled_width(c, width_coefficient, max_channels) for c in BASE_WIDTHS]
        blocks = [scaled_depth(n, depth_coefficient) for n in BASE_BLOCKS]
        neck_blocks = scaled_depth(3, depth_coefficient)

        images = keras.Input(shape=image_shape, name="images")
        x = conv_bn_silu(images, widths[0], 3, 2, "stem_p1")
        stages = []
        for level in range(4):  # P2…P5
            x = conv_bn_silu(x, widths[level + 1], 3, 2, f"down_p{level + 2}")
            x = c2f_block(x, widths[level + 1], blocks[level], True, f"c2f_p{level + 2}")
            stages.append(x)
        p5 = sppf_block(stages[3], widths[4], 5, "sppf")

        # top-down: P5 → P4 → P3
        up = layers.UpSampling2D(2, interpolation="nearest", name="up_p4")(p5)
        top_p4 = c2f_block(layers.Concatenate(name="cat_up_p4")([up, stages[2]]), widths[3], neck_blocks,
                           False, "top_down_p4")
        up = layers.UpSampling2D(2, interpolation="nearest", name="up_p3")(top_p4)
        out_p3 = c2f_block(layers.Concatenate(name="cat_up_p3")([up, stages[1]]), widths[2], neck_blocks,
                           False, "out_p3")
        # bottom-up: P3 → P4 → P5
        down = conv_bn_silu(out_p3, widths[2], 3, 2, "down_out_p4")
        out_p4 = c2f_block(layers.Concatenate(name="cat_down_p4")([down, top_p4]), widths[3], neck_blocks,
                           False, "out_p4")
        down = conv_bn_silu(out_p4, widths[3], 3, 2, "down_out_p5")
        out_p5 = c2f_block(layers.Concatenate(name="cat_down_p5")([down, p5]), widths[4], neck_blocks,
                           False, "out_p5")

        super().__init__(inputs=images, outputs={"P3": out_p3, "P4": out_p4, "P5": out_p5}, dtype=dtype,
                         **kwargs)
        self.depth_coefficient = depth_coefficient
        self.width_coefficient = width_coefficient
        self.max_channels = max_channels
        self.image_shape = tuple(image_shape)
        self.feature_strides = FEATURE_STRIDES
        self.stage_widths = tuple(widths)
        self.stage_blocks = tuple(blocks)
        self.neck_blocks = neck_blocks

    @classmethod
    def from_scale(cls, scale, **kwargs):
        """One of the published scales ``"n" "s" "m" "l" "x"``."""
        if scale not in SCALES:
            raise ValueError(f"YOLOv8 scale {scale!r} is not one of {sorted(SCALES)}.")
        depth, width, max_channels = SCALES[scale]
        return cls(depth_coefficient=depth, width_coefficient=width, max_channels=max_channels, **kwargs)

    @property
    def feature_widths(self):
        """Channels of P3, P4, P5."""
        return tuple(self.output[k].shape[-1] for k in ("P3", "P4", "P5"))

    def get_config(self):
        config = super().get_config()
        config.update({
            "depth_coefficient": self.depth_coefficient,
            "width_coefficient": self.width_coefficient,
            "max_channels": self.max_channels,
            "image_shape": self.image_shape,
        })
        return config


def detection_head(features, num_classes, box_bins=16, name="head"):
    """YOLOv8's decoupled head on ``features`` ``[P3, P4, P5]``: two branches per level, each two 3×3
    conv-BN-SiLU and a 1×1 convolution with bias, one predicting ``4 × box_bins`` logits (a
    distribution over each side's distance, in strides), one ``num_classes`` class logits.

    Returns ``(box_logits (b, N, 4 × box_bins), class_logits (b, N, num_classes))``, the levels'
    cells flattened row by row and concatenated, with ``N = Σ h·w``. The biases start where YOLOv8's
    do: 2 for box logits, ``log(5 / num_classes / (640 / stride)²)`` for classes (≈ 0.01 objects
    per cell at 640 pixels).
    """
    box_width = max(16, features[0].shape[-1] // 4, 4 * box_bins)
    class_width = max(features[0].shape[-1], min(num_classes, 100))
    boxes, classes = [], []
    for feature, stride in zip(features, FEATURE_STRIDES):
        level = f"{name}_p{int(math.log2(stride))}"
        x = conv_bn_silu(feature, box_width, 3, 1, f"{level}_box1")
        x = conv_bn_silu(x, box_width, 3, 1, f"{level}_box2")
        x = Conv2D(4 * box_bins, 1, bias_initializer=keras.initializers.Constant(2.0),
                          name=f"{level}_box_logits")(x)
        boxes.append(layers.Reshape((-1, 4 * box_bins), name=f"{level}_box_flat")(x))
        prior = math.log(5 / num_classes / (640 / stride) ** 2)
        y = conv_bn_silu(feature, class_width, 3, 1, f"{level}_class1")
        y = conv_bn_silu(y, class_width, 3, 1, f"{level}_class2")
        y = Conv2D(num_classes, 1, bias_initializer=keras.initializers.Constant(prior),
                          name=f"{level}_class_logits")(y)
        classes.append(layers.Reshape((-1, num_classes), name=f"{level}_class_flat")(y))
    return (layers.Concatenate(axis=1, name=f"{name}_boxes")(boxes),
            layers.Concatenate(axis=1, name=f"{name}_classes")(classes))
