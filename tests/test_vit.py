"""ViT: the patch embedding and the backbone against Hugging Face transformers.

Tiny random ``transformers`` ViTs saved with ``save_pretrained`` are the independent reference:
their folders load with ``Backbone.from_preset`` and give transformers' outputs (torch, eval mode)
within 1e-4. Every parameter is randomised (LayerNorm too, so a swapped gamma/beta shows), and the
images are not square, so a height/width mix-up shows.
"""

import keras
import numpy as np
import pytest
import torch
import transformers

import kcookbook
from kcookbook.backbones import ViTBackbone
from kcookbook.components import PatchEmbedding
from kcookbook.formats.converters.vit import ViTConverter

vit_converter = ViTConverter()

TOLERANCE = 1e-4


def _hf_config(image_size=(16, 12), **kwargs):
    options = dict(
        image_size=list(image_size), patch_size=4, num_channels=3, hidden_size=16,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_labels=5)
    options.update(kwargs)
    return transformers.ViTConfig(**options)


def _randomise(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.2
            is_norm_scale = "layernorm" in name and name.endswith("weight")
            parameter.copy_(noise + (1.0 if is_norm_scale else 0.0))
    return model.eval()


def _save(tmp_path_factory, model, name):
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pixels():
    """(batch 3, channels 3, height 16, width 12) values in HF's normalised range [-1, 1]."""
    return np.random.default_rng(0).uniform(-1, 1, size=(3, 3, 16, 12)).astype("float32")


def _channels_last(pixel_values):
    return np.transpose(pixel_values, (0, 2, 3, 1))


def _numpy(outputs):
    return keras.ops.convert_to_numpy(outputs)


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_vit_model_folder_matches_transformers(tmp_path_factory, pixels, qkv_bias):
    torch.manual_seed(0)
    model = _randomise(transformers.ViTModel(_hf_config(qkv_bias=qkv_bias)), seed=1)
    folder = _save(tmp_path_factory, model, f"vit_model_{qkv_bias}")
    with torch.no_grad():
        reference = model(pixel_values=torch.tensor(pixels)).last_hidden_state.numpy()

    backbone = kcookbook.backbones.Backbone.from_preset(str(folder))
    assert isinstance(backbone, ViTBackbone)
    assert backbone.image_shape == (16, 12, 3)
    ours = _numpy(backbone(_channels_last(pixels)))

    assert ours.shape == reference.shape == (3, 1 + 4 * 3, 16)
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE, rtol=0)


def test_vit_image_classifier_folder_logits_match_transformers(tmp_path_factory, pixels):
    torch.manual_seed(0)
    model = _randomise(transformers.ViTForImageClassification(_hf_config()), seed=2)
    folder = _save(tmp_path_factory, model, "vit_classifier")
    with torch.no_grad():
        reference = model(pixel_values=torch.tensor(pixels)).logits.numpy()

    loader = kcookbook.presets.load(str(folder))
    backbone = loader.load_backbone()
    kernel, bias = vit_converter.classifier_head_from_hf(loader.read_tensors())
    pooled = _numpy(backbone(_channels_last(pixels)))[:, 0]  # the [CLS] token
    np.testing.assert_allclose(pooled @ kernel + bias, reference, atol=TOLERANCE, rtol=0)
    assert vit_converter.class_names_from_hf(loader.config) == [f"LABEL_{i}" for i in range(5)]


def test_vit_converted_preset_round_trip(tmp_path_factory, tmp_path, pixels):
    torch.manual_seed(0)
    model = _randomise(transformers.ViTModel(_hf_config()), seed=3)
    folder = _save(tmp_path_factory, model, "vit_round_trip")
    backbone = kcookbook.backbones.Backbone.from_preset(str(folder))
    backbone.save_to_preset(tmp_path / "preset")
    reloaded = ViTBackbone.from_preset(str(tmp_path / "preset"))
    assert reloaded.get_config() == backbone.get_config()
    images = _channels_last(pixels)
    np.testing.assert_allclose(_numpy(reloaded(images)), _numpy(backbone(images)), atol=1e-6, rtol=0)


def test_patch_embedding_is_a_dense_layer_on_flattened_patches(seeded):
    """The strided convolution equals a matmul on each row-major patch, written here in numpy."""
    embed = PatchEmbedding(image_size=(8, 6), patch_size=2, hidden_dim=5, use_class_token=True)
    images = seeded.normal(size=(2, 8, 6, 3)).astype("float32")
    ours = keras.ops.convert_to_numpy(embed(images))

    kernel = keras.ops.convert_to_numpy(embed.projection.kernel)  # (2, 2, 3, 5)
    bias = keras.ops.convert_to_numpy(embed.projection.bias)
    patches = images.reshape(2, 4, 2, 3, 2, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 12, 12)
    tokens = patches @ kernel.reshape(12, 5) + bias
    class_token = np.broadcast_to(keras.ops.convert_to_numpy(embed.class_token), (2, 1, 5))
    positions = keras.ops.convert_to_numpy(embed.position_embedding.embeddings)
    expected = np.concatenate([class_token, tokens], axis=1) + positions
    assert ours.shape == (2, 13, 5)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)


def test_vit_without_class_token_has_one_token_per_patch(seeded):
    backbone = ViTBackbone(image_shape=(8, 8, 1), patch_size=4, num_layers=1, num_heads=2,
                           hidden_dim=8, intermediate_dim=16, use_class_token=False)
    out = _numpy(backbone(seeded.normal(size=(2, 8, 8, 1)).astype("float32")))
    assert out.shape == (2, 4, 8)
    assert ViTBackbone.from_config(backbone.get_config()).count_params() == backbone.count_params()


@pytest.mark.slow
def test_vit_trains_on_every_backend(seeded):
    """A few steps of fit lower the loss: gradients flow through patches, class token and positions."""
    backbone = ViTBackbone(image_shape=(8, 8, 1), patch_size=4, num_layers=1, num_heads=2,
                           hidden_dim=8, intermediate_dim=16)
    images = keras.Input((8, 8, 1))
    logits = keras.layers.Dense(2)(backbone(images)[:, 0])
    model = keras.Model(images, logits)
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = seeded.normal(size=(32, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean(axis=(1, 2, 3)) > x[:, 4:].mean(axis=(1, 2, 3))).astype("int32")
    history = model.fit(x, y, epochs=15, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]


def test_vit_bad_inputs_say_what_to_do():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViTBackbone(image_shape=(10, 8, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=8,
                    intermediate_dim=16)
    with pytest.raises(ValueError, match=r"image_shape must be \(height, width, channels\)"):
        ViTBackbone(image_shape=(8, 8), patch_size=4, num_layers=1, num_heads=2, hidden_dim=8,
                    intermediate_dim=16)
    embed = PatchEmbedding(image_size=8, patch_size=4, hidden_dim=8)
    with pytest.raises(ValueError, match="Resize the images first"):
        embed(np.zeros((1, 12, 12, 3), "float32"))


def test_vit_unsupported_activation_is_a_clear_error(tmp_path):
    model = transformers.ViTModel(_hf_config(hidden_act="relu"))
    model.save_pretrained(tmp_path)
    with pytest.raises(kcookbook.presets.PresetError, match="hidden_act='relu'"):
        kcookbook.backbones.Backbone.from_preset(str(tmp_path))


def test_vit_for_image_classification_through_image_classifier(tmp_path_factory):
    """Raw uint8 images → ImageClassifier.from_preset(HF folder) → the logits transformers gives,
    with Hugging Face's own image processor (rescale, normalise) as the reference preprocessing."""
    torch.manual_seed(0)
    model = _randomise(transformers.ViTForImageClassification(_hf_config()), seed=4)
    folder = _save(tmp_path_factory, model, "vit_task")
    processor = transformers.ViTImageProcessor(size={"height": 16, "width": 12}, image_mean=[0.4, 0.5, 0.6],
                                               image_std=[0.2, 0.25, 0.3])
    processor.save_pretrained(folder)
    images = np.random.default_rng(1).integers(0, 256, size=(3, 16, 12, 3), dtype=np.uint8)
    with torch.no_grad():
        pixel_values = processor(images=list(images), return_tensors="pt")["pixel_values"]
        reference = model(pixel_values=pixel_values).logits.numpy()

    classifier = kcookbook.tasks.ImageClassifier.from_preset(str(folder))
    assert classifier.num_classes == 5
    assert classifier.class_names == [f"LABEL_{i}" for i in range(5)]
    ours = classifier.predict(images, verbose=0)
    np.testing.assert_allclose(ours, reference, atol=TOLERANCE, rtol=0)

    fresh = kcookbook.tasks.ImageClassifier.from_preset(str(folder), num_classes=3)
    assert fresh.predict(images, verbose=0).shape == (3, 3)


def _randomize_layer_norms(model, rng):
    for weight in model.weights:
        if "norm" in weight.path and len(weight.shape) == 1:
            weight.assign(rng.uniform(0.5, 1.5, weight.shape) if weight.path.endswith("gamma")
                          else rng.uniform(-0.5, 0.5, weight.shape))


@pytest.mark.parametrize("pooling,use_mha_bias", [("token", True), ("gap", False)])
@pytest.mark.one_backend  # keras_hub's file layout; per-backend numerics: the transformers parity tests
def test_keras_hub_vit_classifier_preset_loads_with_keras_hubs_logits(tmp_path, pooling, use_mha_bias):
    """A keras_hub ViTImageClassifier preset (what Kaggle's vit_*_imagenet are): backbone, head and
    image converter, on raw images; keras_hub's logits."""
    import keras_hub

    from kcookbook.backbones import Backbone
    from kcookbook.tasks import ImageClassifier

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(32, 32, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
        use_mha_bias=use_mha_bias)
    _randomize_layer_norms(backbone, rng)
    converter = keras_hub.layers.ViTImageConverter(image_size=(32, 32), scale=1 / 127.5, offset=-1.0)
    theirs = keras_hub.models.ViTImageClassifier(
        backbone=backbone, num_classes=5, pooling=pooling,
        preprocessor=keras_hub.models.ViTImageClassifierPreprocessor(image_converter=converter))
    theirs.save_to_preset(str(tmp_path / "preset"))

    images = rng.integers(0, 256, (2, 40, 48, 3)).astype("uint8")
    ours = ImageClassifier.from_preset(str(tmp_path / "preset"))
    np.testing.assert_allclose(ours.predict(images, verbose=0),
                               theirs.predict(images.astype("float32"), verbose=0), atol=1e-4)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(Backbone.from_preset(str(tmp_path / "preset"))(x)),
                               keras.ops.convert_to_numpy(backbone(x)), atol=1e-4)
