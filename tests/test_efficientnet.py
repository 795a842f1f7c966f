"""EfficientNet (B-series with squeeze-and-excitation, and Lite) from KerasHub presets: tiny random
keras_hub models written with ``save_to_preset`` load in kcookbook with keras_hub's own outputs.

The reference is keras_hub itself (test-only dependency); batch-norm statistics are randomised so a
mix-up of layers, padding or rounding cannot pass. EfficientNet-Lite0's real weights are checked
against an independent PyTorch implementation in ``test_vision_models.py``.
"""

import json

import keras
import numpy as np
import pytest

from kcookbook.backbones import Backbone, EfficientNetBackbone
from kcookbook.presets.errors import PresetError
from helpers import randomize_keras_batch_norm, save_keras_hub_image_classifier

# keras_hub's timm-converted presets (keras_hub/src/utils/timm/convert_efficientnet.py), cut down to
# three stacks; width 1.25 / depth 1.5 exercise the filter rounding (8 → 16 by the 10% cap) and repeats.
TINY = dict(
    stackwise_kernel_sizes=[3, 5, 3],
    stackwise_input_filters=[8, 8, 16], stackwise_output_filters=[8, 16, 16],
    stackwise_expansion_ratios=[1, 4, 3], stackwise_strides=[1, 2, 2],
    stackwise_block_types=["v1"] * 3, min_depth=None, include_stem_padding=True,
    use_depth_divisor_as_min_depth=True, cap_round_filter_decrease=True, stem_conv_padding="valid",
    batch_norm_momentum=0.9, batch_norm_epsilon=1e-5, dropout=0.0, projection_activation=None,
)
STYLES = {
    "b": dict(stackwise_num_repeats=[1, 1, 1], stackwise_width_coefficients=[1.25] * 3,
              stackwise_depth_coefficients=[1.5] * 3, stackwise_squeeze_and_excite_ratios=[0.25] * 3,
              activation="swish"),
    "lite": dict(stackwise_num_repeats=[1, 2, 1], stackwise_width_coefficients=[1.0] * 3,
                 stackwise_depth_coefficients=[1.0] * 3, stackwise_squeeze_and_excite_ratios=[0] * 3,
                 activation="relu6"),
}


def _keras_hub_backbone(style):
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.EfficientNetBackbone(**TINY, **STYLES[style])
    rng = np.random.default_rng(1)
    randomize_keras_batch_norm(backbone, rng)
    for layer in backbone.layers:
        if layer.weights and "se_" in layer.name:  # squeeze-excite biases: non-zero
            layer.set_weights([layer.weights[0].numpy(), rng.uniform(-0.5, 0.5, layer.weights[1].shape)])
    return backbone


@pytest.mark.parametrize("style", ["b", "lite"])
@pytest.mark.one_backend  # keras_hub's file layout; per-backend numerics: the Lite0 and block parity tests
def test_keras_hub_efficientnet_preset_loads_with_the_same_outputs(tmp_path, style):
    """B-style (swish, squeeze-excite, scaled widths/depths) and Lite-style (ReLU6, no squeeze-excite)
    keras_hub backbones + image converter; an odd-sized input checks the symmetric padding."""
    import keras_hub

    from kcookbook.components import ImageConverter

    theirs = _keras_hub_backbone(style)
    theirs.save_to_preset(str(tmp_path))
    their_converter = keras_hub.layers.EfficientNetImageConverter(
        image_size=(40, 40), scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
        offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    their_converter.save_to_preset(str(tmp_path))

    ours = Backbone.from_preset(str(tmp_path))
    assert isinstance(ours, EfficientNetBackbone) and ours.padding == "symmetric"
    assert ours.num_blocks == (6 if style == "b" else 4)
    assert ours.count_params() == theirs.count_params()
    x = np.random.default_rng(0).normal(size=(2, 45, 38, 3)).astype("float32")
    expected = theirs.predict(x, verbose=0)
    got = ours.predict(x, verbose=0)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-4)
    image = np.random.default_rng(2).integers(0, 256, (1, 50, 70, 3)).astype("uint8")
    np.testing.assert_allclose(ImageConverter.from_preset(str(tmp_path))(image),
                               keras.ops.convert_to_numpy(their_converter(image.astype("float32"))),
                               atol=1e-4)


@pytest.mark.slow
@pytest.mark.one_backend  # B0 with a 1000-class head; the backbone parity above runs on every backend
def test_keras_hub_efficientnet_classifier_preset_keeps_its_head(tmp_path):
    """An EfficientNetImageClassifier preset (as on Kaggle: backbone + head + image converter) gives
    keras_hub's logits on raw uint8 images; 1000 classes come with the ImageNet names."""
    from kcookbook.tasks import ImageClassifier

    rng = np.random.default_rng(3)
    theirs = save_keras_hub_image_classifier("EfficientNet", _keras_hub_backbone("b"), tmp_path, rng)

    images = rng.integers(0, 256, (2, 60, 52, 3)).astype("uint8")
    ours = ImageClassifier.from_preset(str(tmp_path))
    assert ours.num_classes == 1000 and ours.class_names[:2] == ["tench", "goldfish"]
    np.testing.assert_allclose(ours.predict(images, verbose=0),
                               theirs.predict(images.astype("float32"), verbose=0), atol=1e-4)
    assert ImageClassifier.from_preset(str(tmp_path), num_classes=3).num_classes == 3


@pytest.mark.parametrize("option, value", [
    ("stackwise_block_types", ["fused", "fused", "unfused"]),
    ("stackwise_force_input_filters", [24, 0, 0]),
    ("projection_activation", "relu"),
    ("stem_conv_padding", "same"),
])
def test_unsupported_keras_hub_efficientnet_options_are_named(tmp_path, option, value):
    """EfficientNetV2/EdgeTPU settings kcookbook does not build: a PresetError naming the option."""
    _keras_hub_backbone("lite").save_to_preset(str(tmp_path))
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config["config"][option] = value
    path.write_text(json.dumps(config))
    with pytest.raises(PresetError, match=option):
        Backbone.from_preset(str(tmp_path))


def test_efficientnet_backbone_round_trips_through_get_config():
    """The backbone rebuilds from its config with the same layers (a saved preset's contract; Lite's
    own round trip is in test_image_classifier.py)."""
    backbone = EfficientNetBackbone(
        stackwise_num_blocks=[1, 2], stackwise_kernel_sizes=[3, 5], stackwise_strides=[1, 2],
        stackwise_expansion_ratios=[1, 6], stackwise_output_filters=[8, 16],
        stackwise_squeeze_excite_ratios=[0.25, 0.25], stem_filters=16, head_filters=32,
        activation="relu", padding="symmetric")
    rebuilt = EfficientNetBackbone.from_config(backbone.get_config())
    assert [w.shape for w in rebuilt.weights] == [w.shape for w in backbone.weights]
    assert rebuilt.get_config() == backbone.get_config()

