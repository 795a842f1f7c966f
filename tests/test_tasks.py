"""Tasks on raw strings: TextClassifier fit/predict on lists and tf.data, MaskedLM training, TextEmbedder.

Tiny BERT over a tiny vocabulary so that each fit takes a second or two on every backend.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kcookbook.backbones import BertBackbone
from kcookbook.components import WordPieceTokenizer
from kcookbook.tasks import (
    MaskedLM,
    MaskedLMPreprocessor,
    TextClassifier,
    TextClassifierPreprocessor,
    TextEmbedder,
)

SEQUENCE_LENGTH = 16


@pytest.fixture(scope="module")
def tokenizer(tiny_vocabulary):
    return WordPieceTokenizer(tiny_vocabulary)


@pytest.fixture(scope="module")
def data(labelled_tweets):
    rows = labelled_tweets[:96]
    return [text for text, _ in rows], np.array([label for _, label in rows])


def _backbone(config):
    keras.utils.set_random_seed(11)
    return BertBackbone(**config)


def _classifier(config, tokenizer, **kwargs):
    preprocessor = TextClassifierPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH)
    return TextClassifier(_backbone(config), num_classes=3, preprocessor=preprocessor, **kwargs)


@pytest.mark.slow
def test_classifier_fits_and_predicts_on_lists_of_strings(tiny_bert_config, tokenizer, data):
    texts, labels = data
    classifier = _classifier(tiny_bert_config, tokenizer)
    classifier.compile(optimizer=keras.optimizers.Adam(3e-3))
    # Labels as a plain Python list, as users (and keras_hub's examples) write them.
    history = classifier.fit(texts, labels.tolist(), batch_size=16, epochs=3, verbose=0,
                             validation_data=(texts[:32], labels[:32].tolist()))

    losses = history.history["loss"]
    assert len(losses) == 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert "val_accuracy" in history.history
    logits = classifier.predict(texts[:10], batch_size=4, verbose=0)
    assert logits.shape == (10, 3) and np.isfinite(logits).all()
    assert classifier.predict("one single string", verbose=0).shape == (1, 3)
    loss, accuracy = classifier.evaluate(texts[:32], labels[:32].tolist(), verbose=0)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0


def test_classifier_fits_on_a_tf_data_dataset_of_strings(tiny_bert_config, tokenizer, data):
    texts, labels = data
    classifier = _classifier(tiny_bert_config, tokenizer, pooling="mean")
    dataset = tf.data.Dataset.from_tensor_slices((texts, labels)).batch(16)
    history = classifier.fit(dataset, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    strings_only = tf.data.Dataset.from_tensor_slices(texts[:20]).batch(8)
    from_dataset = classifier.predict(strings_only, verbose=0)
    from_list = classifier.predict(texts[:20], batch_size=8, verbose=0)
    assert from_dataset.shape == (20, 3)
    np.testing.assert_allclose(from_dataset, from_list, atol=1e-5)


def test_classifier_on_text_pairs_eagerly_and_in_tf_data(tiny_bert_config, tokenizer, data):
    texts, labels = data
    first, second = texts[:24], texts[24:48]
    classifier = _classifier(tiny_bert_config, tokenizer)
    pairs = tf.data.Dataset.from_tensor_slices(((first, second), labels[:24])).batch(8)
    assert np.isfinite(classifier.fit(pairs, epochs=1, verbose=0).history["loss"][0])

    eager = classifier.predict((first, second), verbose=0)
    # A dataset whose single part is a (first, second) tuple is x alone, not (x, y).
    unlabelled = tf.data.Dataset.from_tensor_slices(((first, second),)).batch(8)
    np.testing.assert_allclose(classifier.predict(unlabelled, verbose=0), eager, atol=1e-5)
    assert np.abs(eager - classifier.predict(first, verbose=0)).max() > 1e-4  # the pair matters


@pytest.mark.parametrize("pooling", ["pooled", "cls", "mean"])
def test_classifier_logits_equal_the_head_on_the_full_backbone_outputs(tiny_bert_config, pooling):
    """"pooled"/"cls" classifiers run BERT's last block on [CLS] alone (the backbone model itself is
    not in their graph); their logits equal the head applied to the full backbone's outputs."""
    backbone = _backbone(tiny_bert_config)
    classifier = TextClassifier(backbone, num_classes=3, pooling=pooling)
    rng = np.random.default_rng(12)
    token_ids = rng.integers(5, tiny_bert_config["vocabulary_size"], size=(4, 12)).astype("int32")
    padding_mask = (np.arange(12)[None] < np.array([[12], [9], [5], [2]])).astype("int32")
    x = {"token_ids": token_ids * padding_mask, "segment_ids": np.zeros_like(token_ids),
         "padding_mask": padding_mask}

    full = backbone(x)
    sequence = keras.ops.convert_to_numpy(full["sequence_output"])
    features = {"pooled": full["pooled_output"], "cls": sequence[:, 0],
                "mean": (sequence * padding_mask[..., None]).sum(1) / padding_mask.sum(1, keepdims=True)}
    expected = keras.ops.convert_to_numpy(classifier.get_layer("logits")(features[pooling]))
    np.testing.assert_allclose(classifier.predict(x, verbose=0), expected, atol=1e-5)
    assert (backbone in classifier.layers) == (pooling == "mean")
    assert sorted(classifier.head_variables()) == ["logits/bias", "logits/kernel"]


def test_classifier_takes_a_pandas_series_of_strings(tiny_bert_config, tokenizer, data):
    import pandas
    texts, _ = data
    classifier = _classifier(tiny_bert_config, tokenizer)
    np.testing.assert_allclose(classifier.predict(pandas.Series(texts[:5]), verbose=0),
                               classifier.predict(texts[:5], verbose=0), atol=1e-6)


def test_classifier_accepts_already_preprocessed_dicts(tiny_bert_config, tokenizer, data):
    texts, _ = data
    classifier = _classifier(tiny_bert_config, tokenizer)
    features = classifier.preprocessor(texts[:6])
    np.testing.assert_allclose(classifier.predict(features, verbose=0),
                               classifier.predict(texts[:6], verbose=0), atol=1e-6)


@pytest.mark.slow
def test_masked_lm_loss_decreases_on_a_repeated_corpus(tiny_bert_config, tokenizer, data):
    texts, _ = data
    corpus = texts[:16] * 4
    preprocessor = MaskedLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH,
                                        mask_selection_rate=0.25, seed=0)
    masked_lm = MaskedLM(_backbone(tiny_bert_config), preprocessor=preprocessor)
    masked_lm.compile(optimizer=keras.optimizers.Adam(5e-3))
    history = masked_lm.fit(corpus, batch_size=16, epochs=10, verbose=0)
    losses = history.history["loss"]
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_masked_lm_fits_on_a_tf_data_dataset_and_round_trips_through_a_preset(tiny_bert_config, tokenizer,
                                                                              data, tmp_path):
    texts, _ = data
    preprocessor = MaskedLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH, seed=0)
    masked_lm = MaskedLM(_backbone(tiny_bert_config), preprocessor=preprocessor)
    history = masked_lm.fit(tf.data.Dataset.from_tensor_slices(texts[:32]).batch(8), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])

    masked_lm.save_to_preset(str(tmp_path / "mlm"))
    restored = MaskedLM.from_preset(str(tmp_path / "mlm"))
    x, _, _ = preprocessor(["the [MASK] is good", "i [MASK] this film"])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(x)),
                               keras.ops.convert_to_numpy(masked_lm(x)), atol=1e-6)


def test_masked_lm_fill_mask_predicts_at_the_mask_positions(tiny_bert_config, tokenizer):
    preprocessor = MaskedLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH, seed=0)
    masked_lm = MaskedLM(_backbone(tiny_bert_config), preprocessor=preprocessor)
    x, mask_ids, mask_weights = preprocessor(["the [MASK] is good", "i love [MASK] [MASK]"])
    assert mask_weights.sum(axis=1).tolist() == [1.0, 2.0]
    assert x["token_ids"][0][x["mask_positions"][0][0]] == tokenizer.mask_token_id
    logits = masked_lm.predict(["the [MASK] is good"], verbose=0)
    assert logits.shape == (1, preprocessor.mask_selection_length, tokenizer.vocabulary_size)


def test_fill_mask_returns_the_softmax_top_k_at_each_mask(tiny_bert_config, tokenizer):
    preprocessor = MaskedLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH, seed=0)
    masked_lm = MaskedLM(_backbone(tiny_bert_config), preprocessor=preprocessor)
    texts = ["the [MASK] is good", "i [MASK] this [MASK]", "[MASK] film"]
    results = masked_lm.fill_mask(texts, top_k=4, batch_size=2)

    # The reference: token ids and mask positions found here, the model called directly, softmax in numpy.
    packed = TextClassifierPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH)(texts)
    token_ids = np.asarray(packed["token_ids"])
    positions = [np.flatnonzero(row == tokenizer.mask_token_id) for row in token_ids]
    assert [len(p) for p in positions] == [1, 2, 1]
    mask_positions = np.zeros((len(texts), 2), "int32")
    for i, p in enumerate(positions):
        mask_positions[i, : len(p)] = p
    logits = keras.ops.convert_to_numpy(masked_lm({**packed, "mask_positions": mask_positions})).astype("float64")
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))
    probabilities /= probabilities.sum(-1, keepdims=True)

    assert [len(masks) for masks in results] == [1, 2, 1]
    for i, masks in enumerate(results):
        for j, predictions in enumerate(masks):
            assert len(predictions) == 4
            expected = np.argsort(-probabilities[i, j])[:4]
            assert [token for token, _ in predictions] == [tokenizer.id_to_token(int(t)) for t in expected]
            values = [p for _, p in predictions]
            np.testing.assert_allclose(values, probabilities[i, j, expected], rtol=1e-4)
            assert values == sorted(values, reverse=True)
    # One string gives that string's list; top_k=1 keeps the best token only.
    single = masked_lm.fill_mask("the [MASK] is good", top_k=1)
    assert len(single) == 1 and len(single[0]) == 1 and single[0][0][0] == results[0][0][0][0]


def test_fill_mask_errors_name_the_problem_and_the_fix(tiny_bert_config, tokenizer):
    preprocessor = MaskedLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH, mask_selection_length=2)
    masked_lm = MaskedLM(_backbone(tiny_bert_config), preprocessor=preprocessor)
    with pytest.raises(ValueError, match=r"Text 1 \('the film is good'\) holds no mask token '\[MASK\]'.*Write '\[MASK\]'"):
        masked_lm.fill_mask(["the [MASK] is good", "the film is good"])
    late = " ".join(["good"] * SEQUENCE_LENGTH) + " [MASK]"  # the mask falls after the sequence_length cut
    with pytest.raises(ValueError, match=f"within the first {SEQUENCE_LENGTH} tokens"):
        masked_lm.fill_mask(late)
    # More masks than mask_selection_length (the training budget): every one is predicted.
    assert [len(m) for m in masked_lm.fill_mask(["[MASK] [MASK] [MASK]", "[MASK] film"], top_k=2)] == [3, 1]
    with pytest.raises(ValueError, match=r"top_k=0.*1…"):
        masked_lm.fill_mask("the [MASK] is good", top_k=0)
    bare = MaskedLM(masked_lm.backbone)
    with pytest.raises(ValueError, match=r"has no preprocessor, so fill_mask cannot tokenize.*MaskedLMPreprocessor"):
        bare.fill_mask(["the [MASK] is good"])


def test_text_embedder_on_a_tiny_model(tiny_bert_config, tokenizer, data):
    texts, _ = data
    embedder = TextEmbedder(_backbone(tiny_bert_config),
                            preprocessor=TextClassifierPreprocessor(tokenizer, sequence_length=32))
    vectors = embedder.predict(texts[:12], batch_size=12, verbose=0)
    assert vectors.shape == (12, tiny_bert_config["hidden_dim"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Padding does not change a sentence's vector: alone (short padding) vs in a batch (long padding).
    alone = embedder.predict([texts[0]], verbose=0)
    np.testing.assert_allclose(alone[0], vectors[0], atol=1e-5)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3


def test_from_preset_with_preprocessor_none_gives_the_model_alone(tiny_bert_config, tokenizer, tmp_path):
    """preprocessor=None skips the preset's tokenizer (even a broken one): the task runs on ids."""
    classifier = _classifier(tiny_bert_config, tokenizer)
    classifier.save_to_preset(str(tmp_path / "classifier"))
    (tmp_path / "classifier" / "tokenizer.json").write_text("{ not json")
    x = classifier.preprocessor(["a film", "the best film"])

    for kwargs in ({}, {"num_classes": 2}):  # the saved head, and a new one
        restored = TextClassifier.from_preset(str(tmp_path / "classifier"), preprocessor=None, **kwargs)
        assert restored.preprocessor is None
        assert restored.predict(x, verbose=0).shape == (2, kwargs.get("num_classes", 3))
    np.testing.assert_allclose(
        TextClassifier.from_preset(str(tmp_path / "classifier"), preprocessor=None).predict(x, verbose=0),
        classifier.predict(x, verbose=0), atol=1e-6)
    with pytest.raises(Exception, match="tokenizer"):
        TextClassifier.from_preset(str(tmp_path / "classifier"))
