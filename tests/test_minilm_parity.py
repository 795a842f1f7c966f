"""Real weights: all-MiniLM-L6-v2 through kcookbook gives sentence-transformers' embeddings.

The reference is sentence-transformers itself (tokenizer, BERT, mean pooling, normalisation) run on
the same checkpoint folder on CPU, plus transformers' ``BertModel`` for the per-token states.
"""

import keras
import numpy as np
import pytest

import kcookbook
from helpers import TRICKY_SENTENCES, real_tweets

TOLERANCE = 1e-4

# The real all-MiniLM-L6-v2 weights, checked once (in the torch run of `make test`); the tiny BERT folders of
# test_hf_conversion.py cover each backend's numerics against transformers.
pytestmark = [pytest.mark.slow, pytest.mark.one_backend]


@pytest.fixture(scope="module")
def sentences():
    # A text longer than MiniLM's 256-token limit checks that both sides truncate the same way.
    long_text = " ".join(real_tweets(40, start=5000))
    return real_tweets(30, start=100) + TRICKY_SENTENCES + [long_text]


@pytest.fixture(scope="module")
def reference_embeddings(minilm_path, sentences):
    import sentence_transformers
    model = sentence_transformers.SentenceTransformer(minilm_path, device="cpu")
    return model.encode(sentences, batch_size=64, convert_to_numpy=True)


@pytest.fixture(scope="module")
def embedder():
    return kcookbook.tasks.TextEmbedder.from_preset("all_minilm_l6_v2")


def test_text_embedder_matches_sentence_transformers(embedder, sentences, reference_embeddings):
    ours = embedder.predict(sentences, batch_size=64, verbose=0)

    assert ours.shape == (len(sentences), 384)
    difference = np.abs(ours - reference_embeddings).max(axis=1)
    worst = int(difference.argmax())
    assert difference.max() < TOLERANCE, f"sentence {worst} ({sentences[worst][:60]!r}) differs by {difference.max()}"
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_embeddings_do_not_depend_on_batch_composition(embedder, sentences, reference_embeddings):
    # One sentence alone (no padding) against the padded batch above.
    alone = embedder.predict([sentences[3]], verbose=0)
    np.testing.assert_allclose(alone[0], reference_embeddings[3], atol=TOLERANCE, rtol=0)


def test_predict_cuts_the_padding_and_keeps_the_input_order(embedder, sentences, reference_embeddings,
                                                           monkeypatch):
    # Sentences of every length in a shuffled order, 8 a batch: each batch is cut to its longest sequence
    # (not the preset's 256 positions), and the vectors come back in the order given.
    widths, predict = [], keras.Model.predict

    def recording_predict(model, x, **kwargs):
        widths.append(x["token_ids"].shape[1])
        return predict(model, x, **kwargs)

    monkeypatch.setattr(keras.Model, "predict", recording_predict)
    order = np.random.default_rng(0).permutation(len(sentences))
    ours = embedder.predict([sentences[i] for i in order], batch_size=8, verbose=0)

    np.testing.assert_allclose(ours, reference_embeddings[order], atol=TOLERANCE, rtol=0)
    assert min(widths) < 64 and max(widths) == 256, widths  # the long text keeps every position
    assert all(w % embedder.LENGTH_STEP == 0 for w in widths), widths


def test_preset_uses_the_checkpoint_settings(embedder):
    assert embedder.pooling == "mean" and embedder.normalize
    assert embedder.preprocessor.sequence_length == 256  # sentence_bert_config.json's max_seq_length
    assert embedder.backbone.num_layers == 6 and embedder.backbone.hidden_dim == 384


def test_backbone_token_states_match_transformers(minilm_path, embedder, sentences):
    import transformers
    import torch

    texts = sentences[:8]
    hf_tokenizer = transformers.BertTokenizerFast.from_pretrained(minilm_path)
    encoded = hf_tokenizer(texts, padding=True, return_tensors="pt")
    model = transformers.BertModel.from_pretrained(minilm_path).eval()
    with torch.no_grad():
        expected = model(**encoded).last_hidden_state.numpy()

    inputs = {"token_ids": encoded["input_ids"].numpy().astype("int32"),
              "segment_ids": encoded["token_type_ids"].numpy().astype("int32"),
              "padding_mask": encoded["attention_mask"].numpy().astype("int32")}
    ours = keras.ops.convert_to_numpy(embedder.backbone(inputs)["sequence_output"])

    real = inputs["padding_mask"].astype(bool)
    np.testing.assert_allclose(ours[real], expected[real], atol=TOLERANCE, rtol=0)


def test_converted_checkpoint_saved_as_a_kcookbook_preset_still_matches(tmp_path, embedder, sentences,
                                                                         reference_embeddings):
    directory = tmp_path / "minilm"
    embedder.save_to_preset(str(directory))
    restored = kcookbook.tasks.TextEmbedder.from_preset(str(directory))
    assert restored.preprocessor.sequence_length == 256 and restored.pooling == "mean"
    ours = restored.predict(sentences[-12:], verbose=0)
    np.testing.assert_allclose(ours, reference_embeddings[-12:], atol=TOLERANCE, rtol=0)


def test_text_classifier_on_minilm_takes_the_checkpoint_defaults():
    classifier = kcookbook.tasks.TextClassifier.from_preset("all_minilm_l6_v2", num_classes=3)
    assert classifier.pooling == "mean"  # from 1_Pooling/config.json
    assert classifier.preprocessor.sequence_length == 256
    assert classifier.predict(["a real sentence", "another one"], verbose=0).shape == (2, 3)
