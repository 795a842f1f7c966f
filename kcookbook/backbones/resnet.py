"""ResNet v1 (He et al., 2015, "Deep Residual Learning for Image Recognition"), v2 (He et al.,
2016, "Identity Mappings in Deep Residual Networks") and vd (He et al., 2018, "Bag of Tricks for
Image Classification with Convolutional Neural Networks").

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

ResNet-vd (``avg_pool_shortcut=True`` with a three-convolution stem, ``stem_filters=(32, 32, 64)``,
``stem_kernel_sizes=(3, 3, 3)``) downsamples a shortcut with 2×2 average pooling before an unstrided
1×1 convolution instead of a strided 1×1 convolution that skips three pixels in four, and gives every
stack's first block a projection shortcut.

The output is the last feature map ``(batch, height / 32, width / 32, channels)``; a task pools it.
Layer names follow KerasHub's (``conv1_conv``, ``stack0_block0_1_conv``…).

    >>> backbone = ResNetBackbone(stackwise_num_filters=[8, 16], stackwise_num_blocks=[1, 1],
    ...                           stackwise_num_strides=[1, 2], block_type="basic", stem_filters=8)
    >>> backbone.output.shape
    (None, None, None, 16)
"""

import keras

from kcookbook.backbones.backbone import Backbone, check_backbone_config, layers_in_backbone_dtype

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
VD_STEM = {"stem_filters": (32, 32, 64), "stem_kernel_sizes": (3, 3, 3), "avg_pool_shortcut": True}
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


def residual_block(x, filters, stride, block_type, name, preactivation=False, avg_pool_shortcut=False,
                   first_in_stack=False):
    """One block; ``filters`` is the block's inner width (its output is ×4 for a bottleneck).

    v1: ``relu(shortcut(x) + convs(x))``, every convolution batch-normalised.
    v2: ``h = relu(bn(x))``; ``shortcut(h) + convs(h)``, the last convolution left raw, no ReLU after
    the sum; the shortcut is ``x`` itself unless the shape changes.
    vd: v1 with ``shortcut = bn(conv1x1(avg_pool(x)))`` on each stack's first block.
    """
    out_filters = filters * BOTTLENECK_EXPANSION if block_type == "bottleneck" else filters
    projection = stride != 1 or x.shape[-1] != out_filters or (avg_pool_shortcut and first_in_stack)
    h = x
    if preactivation:
        h = keras.layers.ReLU(name=f"{name}_pre_activation_relu")(
            batch_norm(x, f"{name}_pre_activation_bn"))
        shortcut = conv(h, out_filters, 1, stride, f"{name}_0") if projection else x
    elif projection and avg_pool_shortcut:
        pooled = x if stride == 1 else keras.layers.AveragePooling2D(
            2, strides=stride, padding="same", name=f"{name}_0_pool")(x)
        shortcut = conv_bn(pooled, out_filters, 1, 1, f"{name}_0", relu=False)
    else:
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
        stem_filters: channels of the 7×7 stem convolution (64), or one entry per stem convolution.
        stem_kernel_sizes: kernel size of each stem convolution (``(7,)``; ResNet-vd: ``(3, 3, 3)``).
        preactivation: ResNet v2's pre-activation blocks (False: v1).
        avg_pool_shortcut: ResNet-vd's average-pooled projection shortcuts.
        image_shape: ``(height, width, channels)``; ``None`` sizes accept any resolution.
    """

    @layers_in_backbone_dtype
    def __init__(self, stackwise_num_filters=(64, 128, 256, 512), stackwise_num_blocks=(2, 2, 2, 2),
                 stackwise_num_strides=(1, 2, 2, 2), block_type="basic", stem_filters=64,
                 stem_kernel_sizes=(7,), preactivation=False, avg_pool_shortcut=False,
                 image_shape=(None, None, 3), name="resnet", dtype=None, **kwargs):
        check_backbone_config(self, locals())
        if block_type not in ("basic", "bottleneck"):
            raise ValueError(f"block_type must be 'basic' or 'bottleneck', got {block_type!r}.")
        if not len(stackwise_num_filters) == len(stackwise_num_blocks) == len(stackwise_num_strides):
            raise ValueError("stackwise_num_filters, stackwise_num_blocks and stackwise_num_strides must "
                             "have one entry per stack.")
        stem_filters = [stem_filters] if isinstance(stem_filters, int) else list(stem_filters)
        stem_kernel_sizes = list(stem_kernel_sizes)
        if len(stem_filters) != len(stem_kernel_sizes):
            raise ValueError(f"stem_filters {stem_filters} and stem_kernel_sizes {stem_kernel_sizes} need one "
                             "entry per stem convolution.")
        if preactivation and (avg_pool_shortcut or len(stem_filters) > 1):
            raise ValueError("preactivation (v2) with avg_pool_shortcut or a multi-convolution stem (vd) is "
                             "not a ResNet anyone ships; choose one.")
        image_shape = tuple(image_shape)
        images = keras.Input(shape=image_shape, name="images")
        if preactivation:
            x = conv(images, stem_filters[0], stem_kernel_sizes[0], 2, "conv1")
            # No ReLU before this pooling, so pad with -inf: a zero could win the max.
            x = keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=float("-inf"))
        else:
            x = images
            for i, (filters, kernel) in enumerate(zip(stem_filters, stem_kernel_sizes)):
                x = conv_bn(x, filters, kernel, 2 if i == 0 else 1, f"conv{i + 1}", relu=True)
            x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)  # zeros are safe after ReLU
        x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
        for stack, (filters, blocks, stride) in enumerate(
                zip(stackwise_num_filters, stackwise_num_blocks, stackwise_num_strides)):
            for block in range(blocks):
                x = residual_block(x, filters, stride if block == 0 else 1, block_type,
                                   f"stack{stack}_block{block}", preactivation, avg_pool_shortcut,
                                   first_in_stack=block == 0)
        if preactivation:
            x = keras.layers.ReLU(name="post_relu")(batch_norm(x, "post_bn"))
        super().__init__(inputs=images, outputs=x, name=name, dtype=dtype, **kwargs)
        self.stackwise_num_filters = list(stackwise_num_filters)
        self.stackwise_num_blocks = list(stackwise_num_blocks)
        self.stackwise_num_strides = list(stackwise_num_strides)
        self.block_type = block_type
        self.stem_filters = stem_filters[0] if len(stem_filters) == 1 else stem_filters
        self.stem_kernel_sizes = stem_kernel_sizes
        self.preactivation = preactivation
        self.avg_pool_shortcut = avg_pool_shortcut
        self.image_shape = image_shape

    @classmethod
    def from_variant(cls, variant, **kwargs):
        """A randomly initialised ``"resnet18"`` … ``"resnet152_v2"``, or a ``"_vd"`` form of a v1
        name (``"resnet50_vd"``); pretrained weights come with ``from_preset``."""
        base = variant[:-3] if variant.endswith("_vd") else variant
        if base not in VARIANTS or (base != variant and VARIANTS[base][2]):
            names = sorted(VARIANTS) + sorted(f"{n}_vd" for n, v in VARIANTS.items() if not v[2])
            raise ValueError(f"Unknown ResNet variant {variant!r}; choose from {names}.")
        block_type, blocks, preactivation = VARIANTS[base]
        extra = VD_STEM if base != variant else {}
        return cls(stackwise_num_blocks=blocks, block_type=block_type, preactivation=preactivation,
                   name=variant, **{**extra, **kwargs})

    def get_config(self):
        config = super().get_config()
        config.update({
            "stackwise_num_filters": self.stackwise_num_filters,
            "stackwise_num_blocks": self.stackwise_num_blocks,
            "stackwise_num_strides": self.stackwise_num_strides, "block_type": self.block_type,
            "stem_filters": self.stem_filters, "stem_kernel_sizes": self.stem_kernel_sizes,
            "preactivation": self.preactivation, "avg_pool_shortcut": self.avg_pool_shortcut,
            "image_shape": list(self.image_shape),
        })
        return config
