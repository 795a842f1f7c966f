"""A keras_hub 0.32 CLIP preset (``CLIPBackbone``: CLIPVisionEncoder + CLIPTextEncoder, with
``CLIPTokenizer`` and ``CLIPImageConverter``) loads into kcookbook's CLIPBackbone with keras_hub's
image and text features; keras_hub's CLIP Kaggle names are listed with keras_hub's handles.

keras_hub builds a tiny CLIP (32-px images, 16-px patches, two layers per tower), every weight
randomised (norm scales too, so a swap shows), and writes it with ``save_to_preset``.

The parity tests were run on jax, tensorflow and torch when written; CI runs them in its torch run
only (``one_backend``: building and calling keras_hub's model costs 40-130 s per file on jax and
tensorflow here, and kcookbook's per-backend numerics of this family are covered by its transformers
parity tests). ``KCOOKBOOK_ALL_BACKENDS=1`` runs them on every backend.
"""

import json
import shutil

import keras
import numpy as np
import pytest

import kcookbook
from helpers import assert_keras_hub_option_refused
from kcookbook.backbones import Backbone, CLIPBackbone

import keras_hub  # the test-only reference
from keras_hub.src.models.clip.clip_presets import backbone_presets as keras_hub_clip_presets

VOCABULARY = 64


def numpy(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    keras.utils.set_random_seed(4)
    vision = keras_hub.models.CLIPVisionEncoder(patch_size=16, hidden_dim=16, num_layers=2, num_heads=2,
                                                intermediate_dim=32, image_shape=(32, 32, 3))
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=VOCABULARY, embedding_dim=16, hidden_dim=16,
                                            num_layers=2, num_heads=2, intermediate_dim=32,
                                            intermediate_activation="gelu", max_sequence_length=8)
    reference = keras_hub.models.CLIPBackbone(vision_encoder=vision, text_encoder=text, projection_dim=12)
    # keras_hub's vision tower reads its position table at position_ids, a stored weight: 0, 1, 2…
    # in keras_hub's Kaggle presets, zeros in a freshly built model. Set as in the presets.
    vision.embedding.position_ids.assign(np.arange(5, dtype="int32")[None])
    rng = np.random.default_rng(0)
    for variable in reference.trainable_weights:  # not the vision tower's integer position_ids
        variable.assign(rng.normal(0.0, 0.3, variable.shape).astype("float32"))
    folder = tmp_path_factory.mktemp("clip") / "preset"
    reference.save_to_preset(str(folder))
    return reference, str(folder)


@pytest.mark.one_backend
def test_keras_hub_clip_preset_loads_with_its_image_and_text_features(written):
    reference, folder = written
    backbone = Backbone.from_preset(folder)
    assert isinstance(backbone, CLIPBackbone)
    assert backbone.count_params() == sum(int(np.prod(w.shape)) for w in reference.trainable_weights)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    # Each row's largest id is its end token (pooled by both); the second row is shorter.
    token_ids = np.array([[1, 5, 9, 63, 0, 0, 0, 0], [1, 7, 2, 30, 11, 62, 3, 3]], "int32")
    np.testing.assert_allclose(numpy(backbone.get_vision_embeddings(images)),
                               numpy(reference.get_vision_embeddings(images)), atol=1e-5, rtol=0)
    np.testing.assert_allclose(numpy(backbone.get_text_embeddings(token_ids)),
                               numpy(reference.get_text_embeddings(token_ids)), atol=1e-5, rtol=0)
    theirs = reference({"images": images, "token_ids": token_ids})
    ours = backbone({"images": images, "token_ids": token_ids})
    np.testing.assert_allclose(numpy(ours["logits_per_image"]), numpy(theirs["vision_logits"]), atol=1e-4,
                               rtol=1e-5)


@pytest.mark.parametrize("part, option, value", [
    ("vision_encoder", "intermediate_activation", "relu"),
    ("text_encoder", "intermediate_output_index", 1),
    ("text_encoder", "embedding_dim", 8),
])
@pytest.mark.one_backend  # no backend numerics, but its fixture builds keras_hub's CLIP: with the parity tests
def test_an_option_kcookbook_cannot_represent_is_refused_by_name(written, tmp_path, part, option, value):
    assert_keras_hub_option_refused(written[1], tmp_path / "edited", (part, "config", option), value)


@pytest.mark.backend_independent
def test_kaggle_names_are_listed_with_keras_hubs_handles():
    rows = {row["name"]: row for row in kcookbook.presets.list_presets(family="clip")}
    assert set(keras_hub_clip_presets) <= set(rows)
    for name, entry in keras_hub_clip_presets.items():
        assert rows[name]["handle"] == entry["kaggle_handle"], name
        assert rows[name]["offline"] is False and rows[name]["source"]



@pytest.mark.parametrize("pad_with_end_token", [False, True])
@pytest.mark.one_backend  # as above: the `written` fixture builds keras_hub's CLIP
def test_keras_hub_tokenizer_in_the_preset_gives_clip_tokenizer_fasts_ids(written, tmp_path, pad_with_end_token):
    """keras_hub 0.32's CLIPTokenizer cannot be built from a vocabulary (its constructor reads
    ``self.vocabulary`` before setting it, on every backend), so its preset files are written here as
    its ``save_to_preset`` lays them out; transformers' CLIPTokenizerFast on the same files is the
    reference for the ids, keras_hub's source for the padding id (0, or the end token)."""
    import transformers
    from helpers import real_tweets
    from test_clip import _openai_merges, _write_tokenizer_files  # OpenAI's BPE file, cut to 3,000 merges

    _write_tokenizer_files(tmp_path, _openai_merges(3000))
    folder = tmp_path / "preset"
    shutil.copytree(written[1], folder)
    (folder / "assets" / "tokenizer").mkdir(parents=True)
    shutil.copy(tmp_path / "vocab.json", folder / "assets" / "tokenizer" / "vocabulary.json")
    shutil.copy(tmp_path / "merges.txt", folder / "assets" / "tokenizer" / "merges.txt")
    (folder / "tokenizer.json").write_text(json.dumps({
        "module": "keras_hub.src.models.clip.clip_tokenizer", "class_name": "CLIPTokenizer",
        "config": {"name": "clip_tokenizer", "trainable": True, "dtype": "int32", "config_file": "tokenizer.json",
                   "sequence_length": None, "add_prefix_space": False, "unsplittable_tokens":
                   ["<|startoftext|>", "<|endoftext|>"], "pad_with_end_token": pad_with_end_token},
        "registered_name": "keras_hub>CLIPTokenizer"}))

    ours = kcookbook.components.Tokenizer.from_preset(str(folder))
    reference = transformers.CLIPTokenizerFast.from_pretrained(str(tmp_path))
    texts = real_tweets(30, start=500) + ["A photo of a cat, it's nice!"]
    assert [ours(t) for t in texts] == reference(texts, add_special_tokens=False)["input_ids"]
    assert ours.pad_token_id == (ours.end_token_id if pad_with_end_token else 0)
    assert (ours.start_token_id, ours.end_token_id) == (reference.bos_token_id, reference.eos_token_id)


@pytest.mark.one_backend
def test_keras_hub_image_converter_in_the_preset_loads(written, tmp_path):
    mean, std = np.array([0.48, 0.46, 0.41]), np.array([0.27, 0.26, 0.28])
    converter = keras_hub.layers.CLIPImageConverter(image_size=(32, 32), scale=(1 / 255 / std).tolist(),
                                                    offset=(-mean / std).tolist())
    folder = tmp_path / "preset"
    shutil.copytree(written[1], folder)
    converter.save_to_preset(str(folder))
    image = np.random.default_rng(2).integers(0, 256, (1, 48, 48, 3)).astype("float32")
    ours = kcookbook.components.ImageConverter.from_preset(str(folder))
    np.testing.assert_allclose(numpy(ours(image)), numpy(converter(image)), atol=1e-5)
