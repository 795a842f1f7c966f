"""ResNet v1 (He et al., 2015, "Deep Residual Learning for Image Recognition").

A 7×7 stride-2 stem convolution, 3×3 stride-2 max pooling, then stacks of residual blocks: *basic*
blocks (two 3×3 convolutions; ResNet-18/34) or *bottleneck* blocks (1×1 reduce → 3×3 → 1×1 expand
by 4; ResNet-50/101/152). Each convolution is followed by batch normalisation (epsilon 1e-5); a
block's shortcut is a strided 1×1 convolution + batch norm whenever its shape changes. Strided
convolutions pad symmetrically (PyTorch's ``padding=k // 2``), so weights from torchvision, timm,
Hugging Face and KerasHub all run unchanged. The stride of a bottleneck block sits on its 3×3
convolution ("ResNet v1.5"), as in all of those.

The output is the last feature map ``(batch, height / 32, width / 32, channels)``; a task pools it.
Layer names follow KerasHub's (``conv1_conv``, ``stack0_block0_1_conv``…).

    >>> backbone = ResNetBackbone(stackwise_num_filters=[8, 16], stackwise_num_blocks=[1, 1],
    ...                           stackwise_num_strides=[1, 2], block_type="basic", stem_filters=8)
    >>> backbone.output.shape
    (None, None, None, 16)
"""

import keras

from kcookbook.backbones.backbone import Backbone

# name: (block type, blocks per stack); widths 64, 128, 256, 512 (×4 at a bottleneck's output)
VARIANTS = {
    "resnet18": ("basic", [2, 2, 2, 2]),
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
    "resnet152": ("bottleneck", [3, 8, 36, 3]),
}
BOTTLENECK_EXPANSION = 4
BN_EPSILON = 1e-5


def conv_bn(x, filters, kernel, stride, name, relu):
    """Convolution (no bias, symmetric padding) → batch norm (``{name}_conv``/``{name}_bn``) → ReLU."""
    if stride > 1 and kernel > 1:
        x = keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
    x = keras.layers.Conv2D(filters, kernel, stride, padding="valid" if stride > 1 else "same",
                            use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def residual_block(x, filters, stride, block_type, name):
    """One block; ``filters`` is the block's inner width (its output is ×4 for a bottleneck)."""
    out_filters = filters * BOTTLENECK_EXPANSION if block_type == "bottleneck" else filters
    shortcut = x
    if stride != 1 or x.shape[-1] != out_filters:
        shortcut = conv_bn(x, out_filters, 1, stride, f"{name}_0", relu=False)
    if block_type == "basic":
        x = conv_bn(x, filters, 3, stride, f"{name}_1", relu=True)
        x = conv_bn(x, filters, 3, 1, f"{name}_2", relu=False)
    else:
        x = conv_bn(x, filters, 1, 1, f"{name}_1", relu=True)
        x = conv_bn(x, filters, 3, stride, f"{name}_2", relu=True)
        x = conv_bn(x, out_filters, 1, 1, f"{name}_3", relu=False)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


@keras.saving.register_keras_serializable(package="kcookbook")
class ResNetBackbone(Backbone):
    """ResNet v1 feature extractor: images → last feature map.

    Args:
        stackwise_num_filters: inner width of each stack's blocks (64, 128, 256, 512 for ImageNet).
        stackwise_num_blocks: blocks per stack.
        stackwise_num_strides: stride of each stack's first block (1, 2, 2, 2 for ImageNet).
        block_type: ``"basic"`` or ``"bottleneck"``.
        stem_filters: channels of the 7×7 stem convolution (64).
        image_shape: ``(height, width, channels)``; ``None`` sizes accept any resolution.
    """

    def __init__(self, stackwise_num_filters=(64, 128, 256, 512), stackwise_num_blocks=(2, 2, 2, 2),
                 stackwise_num_strides=(1, 2, 2, 2), block_type="basic", stem_filters=64,
                 image_shape=(None, None, 3), name="resnet", dtype=None, **kwargs):
        if block_type not in ("basic", "bottleneck"):
            raise ValueError(f"block_type must be 'basic' or 'bottleneck', got {block_type!r}.")
        if not len(stackwise_num_filters) == len(stackwise_num_blocks) == len(stackwise_num_strides):
            raise ValueError("stackwise_num_filters, stackwise_num_blocks and stackwise_num_strides must "
                             "have one entry per stack.")
        image_shape = tuple(image_shape)
        images = keras.Input(shape=image_shape, name="images")
        x = conv_bn(images, stem_filters, 7, 2, "conv1", relu=True)
        x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)  # zeros are safe after ReLU
        x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
        for stack, (filters, blocks, stride) in enumerate(
                zip(stackwise_num_filters, stackwise_num_blocks, stackwise_num_strides)):
            for block in range(blocks):
                x = residual_block(x, filters, stride if block == 0 else 1, block_type,
                                   f"stack{stack}_block{block}")
        super().__init__(inputs=images, outputs=x, name=name, dtype=dtype, **kwargs)
        self.stackwise_num_filters = list(stackwise_num_filters)
        self.stackwise_num_blocks = list(stackwise_num_blocks)
        self.stackwise_num_strides = list(stackwise_num_strides)
        self.block_type = block_type
        self.stem_filters = stem_filters
        self.image_shape = image_shape

    @classmethod
    def from_variant(cls, variant, **kwargs):
        """A randomly initialised ``"resnet18"`` … ``"resnet152"`` (pretrained: ``from_preset``)."""
        if variant not in VARIANTS:
            raise ValueError(f"Unknown ResNet variant {variant!r}; choose from {sorted(VARIANTS)}.")
        block_type, blocks = VARIANTS[variant]
        return cls(stackwise_num_blocks=blocks, block_type=block_type, name=variant, **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update({
            "stackwise_num_filters": self.stackwise_num_filters,
            "stackwise_num_blocks": self.stackwise_num_blocks,
            "stackwise_num_strides": self.stackwise_num_strides, "block_type": self.block_type,
            "stem_filters": self.stem_filters, "image_shape": list(self.image_shape),
        })
        return config
