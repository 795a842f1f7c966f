"""EfficientNet from KerasHub presets (``EfficientNetBackbone``, ``EfficientNetImageConverter``,
``EfficientNetImageClassifier``; Kaggle's ``efficientnet_b0_ra_imagenet`` … and
``efficientnet_lite0_ra_imagenet`` are these, converted by keras_hub from timm).

KerasHub's config lists its stacks *before* scaling (``stackwise_input_filters``,
``stackwise_num_repeats`` with ``stackwise_width_coefficients`` / ``stackwise_depth_coefficients``
and its rounding options); ``backbone_from_keras_hub`` resolves them with the same rounding into
our ``EfficientNetBackbone``'s per-stack block counts and widths. Its ``"v1"`` blocks (the original
MBConv with squeeze-and-excitation) are our ``mbconv_block``: the same weighted layers in the same
order, so ``model.weights.h5`` maps by position. KerasHub pads its stem and depthwise convolutions
symmetrically (``kernel // 2``, PyTorch's way; our ``padding="symmetric"``).

Not converted (a PresetError names the option): the EfficientNetV2 / EdgeTPU blocks (``"fused"``,
``"unfused"``, ``"cba"``, used by ``efficientnet2_rw_*`` and ``efficientnet_e{s,m,l}_*``),
``stackwise_force_input_filters``, ``projection_activation``, a stem padded otherwise than
``include_stem_padding=True`` with ``stem_conv_padding="valid"``.

Training-only differences: keras_hub's block batch norms keep Keras's default momentum (0.99)
while ours use ``batch_norm_momentum`` throughout, and its stochastic-depth schedule divides by
the unscaled block count.
"""

from kcookbook.backbones.efficientnet import EfficientNetBackbone, round_filters, round_repeats
from kcookbook.formats.converters.common import (
    ImageClassifierConverter,
    image_classifier_from_keras_hub,
    keras_hub_weights_by_position,
)
from kcookbook.presets.errors import PresetError

NUM_FEATURES = 1280  # keras_hub's head width before width scaling (its get_config does not store it)


def _refuse(option, value, why):
    raise PresetError(f"This keras_hub EfficientNet sets {option}={value!r}, which kcookbook does not "
                      f"convert: {why}")


def _per_stack(config, kind, num_stacks):
    """``stackwise_{kind}_coefficients``, or keras_hub's older single ``{kind}_coefficient``."""
    values = config.get(f"stackwise_{kind}_coefficients")
    if values is None:
        values = config.get(f"{kind}_coefficient", 1.0)
    return list(values) if isinstance(values, (list, tuple)) else [values] * num_stacks


class EfficientNetConverter(ImageClassifierConverter):
    """EfficientNet (B-series and Lite): keras_hub EfficientNet presets."""

    family = "efficientnet"
    keras_hub_classes = ("EfficientNetBackbone", "EfficientNetImageConverter",
                         "EfficientNetImageClassifier")

    def backbone_from_keras_hub(self, config, **overrides):
        num_stacks = len(config["stackwise_kernel_sizes"])
        block_types = list(config["stackwise_block_types"])
        if any(t != "v1" for t in block_types):
            _refuse("stackwise_block_types", block_types, "only the original MBConv blocks ('v1', all "
                    "EfficientNet B0–B5 and Lite0 presets) are; EfficientNetV2/EdgeTPU blocks ('fused', "
                    "'unfused', 'cba') are not.")
        if any(config.get("stackwise_force_input_filters") or []):
            _refuse("stackwise_force_input_filters", config["stackwise_force_input_filters"],
                    "block inputs must be the previous stack's outputs (leave it all zeros).")
        if config.get("projection_activation"):
            _refuse("projection_activation", config["projection_activation"],
                    "MBConv projections are linear (leave it None).")
        stem = (config.get("include_stem_padding", True), config.get("stem_conv_padding", "valid"))
        if stem != (True, "valid"):
            _refuse("include_stem_padding, stem_conv_padding", stem, "the stem is converted only when "
                    "padded symmetrically (True, 'valid'), as keras_hub pads its blocks.")
        ratios = list(config["stackwise_squeeze_and_excite_ratios"])
        if any(not 0 <= r <= 1 for r in ratios):
            _refuse("stackwise_squeeze_and_excite_ratios", ratios, "ratios must be in [0, 1].")

        widths = _per_stack(config, "width", num_stacks)
        depths = _per_stack(config, "depth", num_stacks)
        divisor = config.get("depth_divisor", 8)
        min_filters = divisor if config.get("use_depth_divisor_as_min_depth") else config.get("min_depth")
        rounding = dict(divisor=divisor, min_filters=min_filters,
                        cap_decrease=bool(config.get("cap_round_filter_decrease")))
        stem_filters = round_filters(config["stackwise_input_filters"][0], widths[0], **rounding)
        outputs, channels = [], stem_filters
        for s in range(num_stacks):
            declared = round_filters(config["stackwise_input_filters"][s], widths[s], **rounding)
            if declared != channels:
                _refuse(f"stackwise_input_filters[{s}]", config["stackwise_input_filters"][s],
                        f"it scales to {declared} channels but the stack receives {channels}.")
            channels = round_filters(config["stackwise_output_filters"][s], widths[s], **rounding)
            outputs.append(channels)
        kwargs = dict(
            stackwise_num_blocks=[round_repeats(r, d) for r, d in zip(config["stackwise_num_repeats"], depths)],
            stackwise_kernel_sizes=list(config["stackwise_kernel_sizes"]),
            stackwise_strides=list(config["stackwise_strides"]),
            stackwise_expansion_ratios=list(config["stackwise_expansion_ratios"]),
            stackwise_output_filters=outputs, stackwise_squeeze_excite_ratios=ratios,
            stem_filters=stem_filters,
            head_filters=round_filters(config.get("num_features", NUM_FEATURES), widths[-1], **rounding),
            activation=config.get("activation", "swish"), padding="symmetric",
            drop_connect_rate=config.get("dropout", 0.2),
            image_shape=tuple(config.get("input_shape") or (None, None, 3)),
            batch_norm_epsilon=config.get("batch_norm_epsilon", 1e-5),
            batch_norm_momentum=config.get("batch_norm_momentum", 0.9),
        )
        return EfficientNetBackbone(**{**kwargs, **overrides})

    def weights_from_keras_hub(self, arrays, backbone):
        """keras_hub's v1 EfficientNet has our weighted layers in our order (stem, then per block
        expand, depthwise, squeeze-excite reduce/expand, project, then head): mapped by position."""
        return keras_hub_weights_by_position(arrays, backbone, "EfficientNet")

    def task_from_keras_hub(self, task_cls, config, backbone, **kwargs):
        """keras_hub's ``EfficientNetImageClassifier`` (pooling → dropout → Dense) as an
        ``ImageClassifier``."""
        return image_classifier_from_keras_hub(task_cls, config, backbone, config.get("pooling") or "avg",
                                               **kwargs)
