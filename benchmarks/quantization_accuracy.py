"""bf16 and int8 against float32 on real weights: SmolLM2 perplexity, MiniLM embeddings (accuracy, not speed).

    .venv/bin/python benchmarks/quantization_accuracy.py                       # torch; ~10 min on 2 busy cores
    .venv/bin/python benchmarks/quantization_accuracy.py --backends jax torch --windows 4 --tweets 200

* SmolLM2-135M-Instruct (``CausalLM.from_preset("smollm2_135m_instruct")``, offline): ``--windows``
  windows of 128 tokens of held-out Macbeth (``load_shakespeare_splits(["macbeth"])``'s validation
  text, characters 20,000-40,000), full-context next-token perplexity; per row the largest
  ``|logit - fp32 logit|`` and the share of positions whose argmax (greedy next token) equals fp32's.
* all-MiniLM-L6-v2 (``TextEmbedder.from_preset("all_minilm_l6_v2")``): the first ``--tweets`` tweets
  of ``load_sentiment_tweets().test``, ``--sequence-length`` tokens each; per row the smallest cosine to the fp32 embedding and the
  share of tweets whose nearest other tweet (cosine) is the one fp32 finds.

Rows: ``float32``; ``bfloat16`` (``from_preset(..., dtype="bfloat16")``); ``int8``
(``backbone.quantize("int8")``: Keras's default int8 scheme, int8 weights with one scale per output
channel *and* int8 activations with one scale per token, int8 x int8 -> int32 matmuls); ``int8
weight-only`` (``backbone.quantize(config=keras.quantizers.Int8QuantizationConfig(
activation_quantizer=None))``: the same int8 weights, float activations); SmolLM2's ``int8
smoothed`` (``backbone.smooth_activations`` on 4 windows of the first training play, then Keras's
default int8: SmoothQuant). Each quantised row starts
from a fresh copy of the float32 weights. On a CPU, torch computes int8 x int8 matmuls without BLAS:
the ``int8`` SmolLM2 row is the slow one (minutes).
"""

import argparse
import os
import sys

SMOLLM2, MINILM = "smollm2_135m_instruct", "all_minilm_l6_v2"
WINDOW = 128
CALIBRATION_WINDOWS = 4  # int8 smoothed: 512 tokens of the first training play


def quantizers():
    import keras
    weight_only = keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
    return {"int8": dict(mode="int8"), "int8 weight-only": dict(config=weight_only)}


def smollm2_rows(windows):
    import keras
    import numpy as np

    from kcookbook.data import load_shakespeare_splits
    from kcookbook.metrics import logits_closeness, next_token_nll
    from kcookbook.tasks import CausalLM

    splits = load_shakespeare_splits(["macbeth"])
    text = splits.validation[0].text[20000:40000]
    lm = CausalLM.from_preset(SMOLLM2)
    ids = np.asarray(lm.preprocessor.tokenizer(text))[:windows * WINDOW].reshape(windows, WINDOW)
    calibration_text = splits.train[0].text[:20000]  # another play: calibration never sees Macbeth
    calibration = np.asarray(lm.preprocessor.tokenizer(calibration_text))[:CALIBRATION_WINDOWS * WINDOW]
    calibration = calibration.reshape(CALIBRATION_WINDOWS, WINDOW)
    inputs = {"token_ids": ids.astype("int32"), "padding_mask": np.ones_like(ids, "int32")}

    def logits(model):
        return keras.ops.convert_to_numpy(keras.ops.cast(model(inputs), "float32"))

    reference = logits(lm)
    rows = {"float32": {"perplexity": float(np.exp(next_token_nll(reference, ids)))}}

    def add(name, model):
        rows[name] = logits_closeness(logits(model), reference, ids)
        print(name, rows[name], file=sys.stderr, flush=True)

    weights, config = lm.backbone.get_weights(), lm.backbone.get_config()
    for name, arguments in {**quantizers(), "int8 smoothed": dict(mode="int8")}.items():
        backbone = type(lm.backbone).from_config(config)
        backbone.set_weights(weights)
        if name == "int8 smoothed":
            backbone.smooth_activations(calibration)
        backbone.quantize(**arguments)
        add(name, CausalLM(backbone))
    del lm, backbone
    add("bfloat16", CausalLM.from_preset(SMOLLM2, dtype="bfloat16"))
    return rows


def minilm_rows(num_tweets, sequence_length):
    import numpy as np

    from kcookbook.data import load_sentiment_tweets
    from kcookbook.metrics import embedding_closeness
    from kcookbook.tasks import TextClassifierPreprocessor, TextEmbedder

    def load(**kwargs):
        model = TextEmbedder.from_preset(MINILM, **kwargs)
        model.preprocessor = TextClassifierPreprocessor(model.preprocessor.tokenizer, sequence_length)
        return model

    texts = load_sentiment_tweets().test.texts[:num_tweets]

    def embed(model):
        return model.predict(texts, batch_size=64, verbose=0)

    reference = embed(load())
    rows = {"float32": {}}

    def add(name, model):
        rows[name] = embedding_closeness(embed(model), reference)
        print(name, rows[name], file=sys.stderr, flush=True)

    for name, arguments in quantizers().items():
        model = load()
        model.backbone.quantize(**arguments)
        add(name, model)
    add("bfloat16", load(dtype="bfloat16"))
    return rows


def worker(args):
    from kcookbook.benchmarks.timing import emit_result
    emit_result({"minilm": minilm_rows(args.tweets, args.sequence_length), "smollm2": smollm2_rows(args.windows)})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["torch"])
    parser.add_argument("--windows", type=int, default=8, help="SmolLM2: windows of 128 tokens")
    parser.add_argument("--tweets", type=int, default=100, help="MiniLM: tweets embedded")
    parser.add_argument("--sequence-length", type=int, default=64,
                        help="MiniLM: tokens per tweet (the checkpoint's 256 pads tweets 4x: slow int8 on torch)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from kcookbook.benchmarks.timing import BackendWorkerError, run_backend_worker

    results = {}
    for backend in args.backends:
        arguments = [__file__, "--worker", "--windows", str(args.windows), "--tweets", str(args.tweets),
                     "--sequence-length", str(args.sequence_length)]
        try:
            results[backend] = run_backend_worker(arguments, backend)[0]
        except BackendWorkerError as error:
            print(f"{backend} failed:\n{error}")
    print(f"\nSmolLM2-135M-Instruct, {args.windows} x {WINDOW} tokens of held-out Macbeth")
    print(f"{'backend':<12}{'weights':<18}{'perplexity':>11}{'vs fp32':>9}{'max |dlogit|':>14}{'argmax agree':>14}")
    for backend, result in results.items():
        for name, row in result["smollm2"].items():
            ratio = f"{row['perplexity_ratio']:.3f}" if "perplexity_ratio" in row else "-"
            diff = f"{row['max_logit_diff']:.2f}" if "max_logit_diff" in row else "-"
            agree = f"{row['argmax_agreement']:.3f}" if "argmax_agreement" in row else "-"
            print(f"{backend:<12}{name:<18}{row['perplexity']:>11.2f}{ratio:>9}{diff:>14}{agree:>14}")
    print(f"\nall-MiniLM-L6-v2, {args.tweets} test tweets, {args.sequence_length} tokens")
    print(f"{'backend':<12}{'weights':<18}{'min cosine to fp32':>20}{'nearest-tweet agree':>21}")
    for backend, result in results.items():
        for name, row in result["minilm"].items():
            if row:
                print(f"{backend:<12}{name:<18}{row['min_cosine']:>20.4f}{row['nearest_agreement']:>21.3f}")


if __name__ == "__main__":
    main()
