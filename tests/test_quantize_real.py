"""Real weights: int8 (``backbone.quantize("int8")``) and bfloat16 stay close to float32.

SmolLM2-135M-Instruct on held-out Macbeth (the windows ``benchmarks/quantization_accuracy.py``
starts with) and all-MiniLM-L6-v2 on real tweets. The bounds leave a margin over what this test
measured on torch (numbers beside each bound) and tight enough that a mis-scaled model (a wrong axis
or a dropped scale) would fail them. Keras's int8 scheme also quantises each token's activations
(int8 x int8 matmuls), which costs SmolLM2 ~6% of perplexity on 8 windows: above issue #22's 2%
target; weight-only int8 stays within 1% (benchmarks/README.md). Torch runs int8 x int8 matmuls on a
CPU without BLAS: the MiniLM tweets are cut to 64 tokens to keep this test short.
"""

import keras
import numpy as np
import pytest

from kcookbook.data import load_shakespeare_splits, load_sentiment_tweets
from kcookbook.metrics import embedding_closeness, logits_closeness, next_token_nll
from kcookbook.tasks import CausalLM, TextClassifierPreprocessor, TextEmbedder

pytestmark = [pytest.mark.slow, pytest.mark.one_backend]  # the numerics of each backend: test_quantize.py


def _logits(model, ids):
    logits = model({"token_ids": ids, "padding_mask": np.ones_like(ids)})
    return keras.ops.convert_to_numpy(keras.ops.cast(logits, "float32"))


def test_smollm2_int8_and_bfloat16_perplexity_and_greedy_tokens_stay_close_to_float32():
    text = load_shakespeare_splits(["macbeth"]).validation[0].text[20000:40000]
    lm = CausalLM.from_preset("smollm2_135m_instruct")
    ids = np.asarray(lm.preprocessor.tokenizer(text))[:2 * 128].reshape(2, 128).astype("int32")
    reference = _logits(lm, ids)
    assert np.exp(next_token_nll(reference, ids)) < 100  # the real model: a random one is ~49,000

    backbone = type(lm.backbone).from_config({**lm.backbone.get_config(), "dtype": "bfloat16"})
    backbone.set_weights(lm.backbone.get_weights())
    results = {"bfloat16": _logits(CausalLM(backbone), ids)}
    del backbone
    lm.backbone.quantize("int8")
    assert lm.backbone.token_embedding.quantization_mode == "int8"
    results["int8"] = _logits(lm, ids)

    measured = {}
    for name, logits in results.items():
        closeness = logits_closeness(logits, reference, ids)
        measured[name] = (closeness["perplexity_ratio"], closeness["max_logit_diff"],
                          closeness["argmax_agreement"])
    # measured on torch: bfloat16 1.003, 1.28, 0.969; int8 1.032, 5.58, 0.824 (8 windows: 1.061, 16.8, 0.813;
    # before the int8 output layer quantised its activations too, 2026-12-07: 1.018, 6.62, 0.824)
    bounds = {"bfloat16": (1.02, 4.0, 0.92), "int8": (1.06, 15.0, 0.75)}
    for name, (ratio, difference, agreement) in measured.items():
        most_ratio, most_difference, least_agreement = bounds[name]
        assert ratio < most_ratio and difference < most_difference and agreement > least_agreement, (
            name, measured[name])


def test_minilm_int8_and_bfloat16_embeddings_keep_cosine_and_nearest_neighbours():
    texts = load_sentiment_tweets().test.texts[:40]

    def embed(model):
        return model.predict(texts, batch_size=64, verbose=0)

    model = TextEmbedder.from_preset("all_minilm_l6_v2")
    # 40 tweets of 48 tokens, not 100 of the checkpoint's 256: torch's int8 matmuls on a CPU run without
    # BLAS (padding to 256 took minutes; 100 tweets of 64 tokens, 110 s on a quiet machine).
    model.preprocessor = TextClassifierPreprocessor(model.preprocessor.tokenizer, sequence_length=48)
    reference = embed(model)
    backbone = type(model.backbone).from_config({**model.backbone.get_config(), "dtype": "bfloat16"})
    backbone.set_weights(model.backbone.get_weights())
    bfloat16 = TextEmbedder(backbone, model.preprocessor, pooling=model.pooling, normalize=model.normalize)
    measured = {"bfloat16": embed(bfloat16)}
    model.backbone.quantize("int8")
    measured["int8"] = embed(model)

    # measured on torch (smallest cosine, nearest-tweet agreement): 40 tweets of 48 tokens, bfloat16
    # 0.99988, 1.0; int8 0.9949, 1.0 (100 of 64: bfloat16 0.99990, 0.99; int8 0.9949, 0.92)
    bounds = {"bfloat16": (0.999, 0.95), "int8": (0.98, 0.85)}
    for name, vectors in measured.items():
        closeness = embedding_closeness(vectors, reference)
        least_cosine, least_agreement = bounds[name]
        print(name, closeness)  # shown by pytest -rP
        assert closeness["min_cosine"] > least_cosine and closeness["nearest_agreement"] > least_agreement, (
            name, closeness)
