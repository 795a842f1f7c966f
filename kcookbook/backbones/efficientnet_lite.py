"""EfficientNet-Lite lives in ``efficientnet.py`` beside the original EfficientNet (one backbone, two
sets of settings); this module keeps the old import path working."""

from kcookbook.backbones.efficientnet import (  # noqa: F401
    HEAD_FILTERS,
    STAGES,
    STEM_FILTERS,
    VARIANTS,
    EfficientNetLiteBackbone,
    block_arguments,
    lite_stacks,
    round_filters,
    round_repeats,
)
