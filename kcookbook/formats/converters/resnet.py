"""ResNet from Hugging Face (``ResNetModel`` / ``ResNetForImageClassification``, v1) and KerasHub (v1, v2).

Hugging Face names map as

    embedder.embedder.convolution / normalization               → conv1_conv / conv1_bn
    encoder.stages.{s}.layers.{b}.shortcut.convolution / norm.  → stack{s}_block{b}_0_conv / _bn
    encoder.stages.{s}.layers.{b}.layer.{k}.convolution / norm. → stack{s}_block{b}_{k+1}_conv / _bn
    classifier.1                                                → the ImageClassifier's ``predictions``

(with a ``resnet.`` prefix in ``…ForImageClassification`` checkpoints). Hugging Face's
``hidden_sizes`` are stack *output* widths (×4 for bottlenecks); ours are inner widths.

KerasHub's ``ResNetBackbone`` builds the same graph as ours (its layer names are ours too), so its
``model.weights.h5`` maps layer by layer: v1, v2 (``use_pre_activation``) and vd (``*_block_vd``:
average-pooled shortcuts, usually with a three-convolution stem). A keras_hub ``ResNetImageClassifier``
(Kaggle's ``resnet_*_imagenet`` presets are these) becomes an ``ImageClassifier`` with its head.
"""

import os

import numpy as np

from kcookbook.backbones.resnet import BOTTLENECK_EXPANSION, ResNetBackbone
from kcookbook.formats.converters.common import (
    ImageClassifierConverter,
    image_classifier_from_keras_hub,
    keras_hub_weights_by_position,
    linear_kernel,
    strip_prefix,
    take,
)
from kcookbook.presets import files
from kcookbook.presets.errors import PresetError

BN_NAMES = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
            ("running_var", "moving_variance"))


def conv_kernel(weight):
    """torch (out, in, kh, kw) → Keras (kh, kw, in, out)."""
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def _conv_bn(tensors, theirs, ours, out):
    out[f"{ours}_conv/kernel"] = conv_kernel(take(tensors, f"{theirs}.convolution.weight"))
    for torch_name, keras_name in BN_NAMES:
        out[f"{ours}_bn/{keras_name}"] = take(tensors, f"{theirs}.normalization.{torch_name}")
    tensors.pop(f"{theirs}.normalization.num_batches_tracked", None)


class ResNetConverter(ImageClassifierConverter):
    """ResNet: Hugging Face ``resnet`` folders and keras_hub ResNet presets (backbone, converter, classifier)."""

    family = "resnet"
    hf_model_types = ("resnet",)
    keras_hub_classes = ("ResNetBackbone", "ResNetImageConverter", "ResNetImageClassifier")

    # ----- Hugging Face -----
    def backbone_from_hf(self, config, **overrides):
        if config.get("downsample_in_bottleneck"):
            raise PresetError("This ResNet puts the stride on the bottleneck's first 1×1 convolution "
                              "(downsample_in_bottleneck=True); kcookbook's ResNet strides on the 3×3.")
        if config.get("hidden_act", "relu") != "relu":
            raise PresetError(f"ResNet activation {config['hidden_act']!r} is not supported (only relu).")
        block_type = {"basic": "basic", "bottleneck": "bottleneck"}[config.get("layer_type", "bottleneck")]
        expansion = BOTTLENECK_EXPANSION if block_type == "bottleneck" else 1
        depths = config["depths"]
        kwargs = dict(
            stackwise_num_filters=[h // expansion for h in config["hidden_sizes"]],
            stackwise_num_blocks=list(depths),
            stackwise_num_strides=[2 if config.get("downsample_in_first_stage") else 1] + [2] * (len(depths) - 1),
            block_type=block_type, stem_filters=config.get("embedding_size", 64),
            image_shape=(None, None, config.get("num_channels", 3)),
        )
        return ResNetBackbone(**{**kwargs, **overrides})

    def weights_from_hf(self, tensors, backbone):
        t = strip_prefix(tensors, ["resnet."])
        out = {}
        _conv_bn(t, "embedder.embedder", "conv1", out)
        convs = 2 if backbone.block_type == "basic" else 3
        for s, blocks in enumerate(backbone.stackwise_num_blocks):
            for b in range(blocks):
                theirs, ours = f"encoder.stages.{s}.layers.{b}", f"stack{s}_block{b}"
                if f"{theirs}.shortcut.convolution.weight" in t:
                    _conv_bn(t, f"{theirs}.shortcut", f"{ours}_0", out)
                for k in range(convs):
                    _conv_bn(t, f"{theirs}.layer.{k}", f"{ours}_{k + 1}", out)
        return out

    def image_converter_from_hf(self, folder):
        """The image processor's settings from ``preprocessor_config.json`` (None when absent)."""
        file = os.path.join(folder, "preprocessor_config.json")
        if not os.path.exists(file):
            return None
        processor = files.read_json(file, "image processor config")
        size = processor.get("size", 224)
        if isinstance(size, dict):
            size = size.get("shortest_edge") or size.get("height") or 224
        interpolation = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(processor.get("resample", 2), "bilinear")
        normalize = processor.get("do_normalize", True)
        return {"image_size": (size, size), "interpolation": interpolation,
                "scale": processor.get("rescale_factor", 1 / 255) if processor.get("do_rescale", True) else 1.0,
                "mean": processor.get("image_mean") if normalize else None,
                "std": processor.get("image_std") if normalize else None}

    def classifier_head_from_hf(self, tensors):
        """``ResNetForImageClassification``'s head (``classifier.1``) as ``(kernel, bias)``, or None."""
        if "classifier.1.weight" not in tensors:
            return None
        return linear_kernel(tensors["classifier.1.weight"]), np.asarray(tensors["classifier.1.bias"])

    # ----- KerasHub -----
    def backbone_from_keras_hub(self, config, **overrides):
        block_type, _, vd = config["block_type"].partition("_block")
        if block_type not in ("basic", "bottleneck") or vd not in ("", "_vd"):
            raise PresetError(f"This keras_hub ResNet's block_type {config['block_type']!r} is one kcookbook "
                              "does not convert (basic_block, bottleneck_block and their _vd forms are).")
        kwargs = dict(
            stackwise_num_filters=config["stackwise_num_filters"],
            stackwise_num_blocks=config["stackwise_num_blocks"],
            stackwise_num_strides=config["stackwise_num_strides"], block_type=block_type,
            stem_filters=config["input_conv_filters"],
            stem_kernel_sizes=config["input_conv_kernel_sizes"],
            preactivation=bool(config.get("use_pre_activation", False)), avg_pool_shortcut=vd == "_vd",
            image_shape=tuple(config.get("image_shape") or (None, None, 3)),
        )
        return ResNetBackbone(**{**kwargs, **overrides})

    def weights_from_keras_hub(self, arrays, backbone):
        """KerasHub's ResNet graph (v1 or v2) has the same weighted layers as ours in the same
        topological order (the activations differ in class, but hold no weights): mapped by position."""
        return keras_hub_weights_by_position(arrays, backbone, "ResNet")

    def task_from_keras_hub(self, task_cls, config, backbone, **kwargs):
        """keras_hub's ``ResNetImageClassifier`` (pooling → dropout → Dense) as an ``ImageClassifier``."""
        return image_classifier_from_keras_hub(task_cls, config, backbone, config.get("pooling") or "avg",
                                               **kwargs)
