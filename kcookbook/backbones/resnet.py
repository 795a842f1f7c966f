"""ResNet v1 (He et al., 2015, "Deep Residual Learning for Image Recognition") and v2 (He et al.,
2016, "Identity Mappings in Deep Residual Networks").

A 7×7 stride-2 stem convolution, 3×3 stride-2 max pooling, then stacks of residual blocks: *basic*
blocks (two 3×3 convolutions; ResNet-18/34) or *bottleneck* blocks (1×1 reduce → 3×3 → 1×1 expand
by 4; ResNet-50/101/152). Each convolution is followed by batch normalisation (epsilon 1e-5); a
block's shortcut is a strided 1×1 convolution + batch norm whenever its shape changes. Strided
convolutions pad symmetrically (PyTorch's ``padding=k // 2``), so weights from torchvision, timm,
Hugging Face and KerasHub all run unchanged. The stride of a bottleneck block sits on its 3×3
convolution ("ResNet v1.5"), as in all of those.

ResNet v2 (``preactivation=True``) moves batch norm + ReLU in front of each block's convolutions
("pre-activation"): a block adds its convolutions' output to an untouched identity path, the stem is
a bare convolution, and one batch norm + ReLU (``post_bn``) closes the network. Its projection
shortcuts start from the pre-activated input and carry no batch norm.

The output is the last feature map ``(batch, height / 32, width / 32, channels)``; a task pools it.
Layer names follow KerasHub's (``conv1_conv``, ``stack0_block0_1_conv``…).

    >>> backbone = ResNetBackbone(stackwise_num_filters=[8, 16], stackwise_num_blocks=[1, 1],
    ...                           stackwise_num_strides=[1, 2], block_type="basic", stem_filters=8)
    >>> backbone.output.shape
    (None, None, None, 16)
"""

import keras

from kcookbook.backbones.backbone import Backbone

# name: (block type, blocks per stack, pre-activation); widths 64, 128, 256, 512 (×4 at a
# bottleneck's output)
VARIANTS = {
    "resnet18": ("basic", [2, 2, 2, 2], False),
    "resnet34": ("basic", [3, 4, 6, 3], False),
    "resnet50": ("bottleneck", [3, 4, 6, 3], False),
    "resnet101": ("bottleneck", [3, 4, 23, 3], False),
    "resnet152": ("bottleneck", [3, 8, 36, 3], False),
    "resnet50_v2": ("bottleneck", [3, 4, 6, 3], True),
    "resnet101_v2": ("bottleneck", [3, 4, 23, 3], True),
    "resnet152_v2": ("bottleneck", [3, 8, 36, 3], True),
}
BOTTLENECK_EXPANSION = 4
BN_EPSILON = 1e-5


def conv(x, filters, kernel, stride, name):
    """Convolution without bias, padded symmetrically (``{name}_conv``)."""
    if stride > 1 and kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    return keras.layers.Conv2D(filters, kernel, stride, padding="valid" if stride > 1 else "same",
                               use_bias=False, name=f"{name}_conv")(x)


def batch_norm(x, name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=name)(x)


def conv_bn(x, filters, kernel, stride, name, relu):
    """Convolution → batch norm (``{name}_conv``/``{name}_bn``) → ReLU."""
    x = batch_norm(conv(x, filters, kernel, stride, name), f"{name}_bn")
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def residual_block(x, filters, stride, block_type, name, preactivation=False):
    """One block; ``filters`` is the block's inner width (its output is ×4 for a bottleneck).

    v1: ``relu(shortcut(x) + convs(x))``, every convolution batch-normalised.
    v2: ``h = relu(bn(x))``; ``shortcut(h) + convs(h)``, the last convolution left raw, no ReLU after
    the sum; the shortcut is ``x`` itself unless the shape changes.
    """
    out_filters = filters * BOTTLENECK_EXPANSION if block_type == "bottleneck" else filters
    projection = stride != 1 or x.shape[-1] != out_filters
    if preactivation:
        h = keras.layers.ReLU(name=f"{name}_pre_activation_relu")(
            batch_norm(x, f"{name}_pre_activation_bn"))
        shortcut = conv(h, out_filters, 1, stride, f"{name}_0") if projection else x
    else:
        h = x
        shortcut = conv_bn(x, out_filters, 1, stride, f"{name}_0", relu=False) if projection else x
    if block_type == "basic":
        h = conv_bn(h, filters, 3, stride, f"{name}_1", relu=True)
        last = (filters, 3, 1, f"{name}_2")
    else:
        h = conv_bn(h, filters, 1, 1, f"{name}_1", relu=True)
        h = conv_bn(h, filters, 3, stride, f"{name}_2", relu=True)
        last = (out_filters, 1, 1, f"{name}_3")
    if preactivation:
        return keras.layers.Add(name=f"{name}_out")([shortcut, conv(h, *last)])
    h = conv_bn(h, *last, relu=False)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, h])
    return keras.layers.ReLU(name=f"{name}_out")(x)


@keras.saving.register_keras_serializable(package="kcookbook")
class ResNetBackbone(Backbone):
    """ResNet v1 or v2 feature extractor: images → last feature map.

    Args:
        stackwise_num_filters: inner width of each stack's blocks (64, 128, 256, 512 for ImageNet).
        stackwise_num_blocks: blocks per stack.
        stackwise_num_strides: stride of each stack's first block (1, 2, 2, 2 for ImageNet).
        block_type: ``"basic"`` or ``"bottleneck"``.
        stem_filters: channels of the 7×7 stem convolution (64).
        preactivation: ResNet v2's pre-activation blocks (False: v1).
        image_shape: ``(height, width, channels)``; ``None`` sizes accept any resolution.
    """

    def __init__(self, stackwise_num_filters=(64, 128, 256, 512), stackwise_num_blocks=(2, 2, 2, 2),
                 stackwise_num_strides=(1, 2, 2, 2), block_type="basic", stem_filters=64,
                 preactivation=False, image_shape=(None, None, 3), name="resnet", dtype=None, **kwargs):
        if block_type not in ("basic", "bottleneck"):
            raise ValueError(f"block_type must be 'basic' or 'bottleneck', got {block_type!r}.")
        if not len(stackwise_num_filters) == len(stackwise_num_blocks) == len(stackwise_num_strides):
            raise ValueError("stackwise_num_filters, stackwise_num_blocks and stackwise_num_strides must "
                             "have one entry per stack.")
        image_shape = tuple(image_shape)
        images = keras.Input(shape=image_shape, name="images")
        if preactivation:
            x = conv(images, stem_filters, 7, 2, "conv1")
            # No ReLU before this pooling, so pad with -inf: a zero could win the max.
            x = keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=float("-inf"))
        else:
            x = conv_bn(images, stem_filters, 7, 2, "conv1", relu=True)
            x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)  # zeros are safe after ReLU
        x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
        for stack, (filters, blocks, stride) in enumerate(
                zip(stackwise_num_filters, stackwise_num_blocks, stackwise_num_strides)):
            for block in range(blocks):
                x = residual_block(x, filters, stride if block == 0 else 1, block_type,
                                   f"stack{stack}_block{block}", preactivation)
        if preactivation:
            x = keras.layers.ReLU(name="post_relu")(batch_norm(x, "post_bn"))
        super().__init__(inputs=images, outputs=x, name=name, dtype=dtype, **kwargs)
        self.stackwise_num_filters = list(stackwise_num_filters)
        self.stackwise_num_blocks = list(stackwise_num_blocks)
        self.stackwise_num_strides = list(stackwise_num_strides)
        self.block_type = block_type
        self.stem_filters = stem_filters
        self.preactivation = preactivation
        self.image_shape = image_shape

    @classmethod
    def from_variant(cls, variant, **kwargs):
        """A randomly initialised ``"resnet18"`` … ``"resnet152_v2"`` (pretrained: ``from_preset``)."""
        if variant not in VARIANTS:
            raise ValueError(f"Unknown ResNet variant {variant!r}; choose from {sorted(VARIANTS)}.")
        block_type, blocks, preactivation = VARIANTS[variant]
        return cls(stackwise_num_blocks=blocks, block_type=block_type, preactivation=preactivation,
                   name=variant, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({
            "stackwise_num_filters": self.stackwise_num_filters,
            "stackwise_num_blocks": self.stackwise_num_blocks,
            "stackwise_num_strides": self.stackwise_num_strides, "block_type": self.block_type,
            "stem_filters": self.stem_filters, "preactivation": self.preactivation,
            "image_shape": list(self.image_shape),
        })
        return config
