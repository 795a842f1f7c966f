"""Seq2SeqLM greedy tokens/s and fit ms/step: kcookbook (each backend) vs transformers, in one run.

    .venv/bin/python benchmarks/seq2seq_generate_speed.py                  # t5-small's shape
    .venv/bin/python benchmarks/seq2seq_generate_speed.py --size tiny --new-tokens 8 --repeats 1

A randomly initialised T5 (speed does not depend on the values), the same configuration for both
libraries: ``--size t5_small`` is t5-small's shape (6 + 6 layers, d_model 512, 8 heads, d_ff 2048,
vocabulary 32,128, ReLU, tied), ``--size tiny`` a 2-layer, d_model-64 model that shows the per-token
overhead. float32, a ``--source-length``-token encoder input, ``--new-tokens`` new tokens, no stop
token, greedy, batch 1 and 8.

* kcookbook: ``Seq2SeqLM(T5Backbone(...)).generate({"encoder_token_ids", "encoder_padding_mask"},
  max_length=new_tokens + 1, stop_token_ids=None)``: the encoder once, cross-attention keys/values
  once, a cached decoder step per token, compiled (jax, TensorFlow) or eager (torch).
* transformers (torch worker only): ``T5ForConditionalGeneration(T5Config(...))`` in eval mode,
  ``generate(do_sample=False, min_new_tokens=max_new_tokens=N)``, under ``torch.no_grad``.

Then (``--fit-steps``, 0 to skip) ms per training step on random token ids (``--fit-batch`` x
source/target length): kcookbook ``Seq2SeqLM.fit`` (Adam, sparse cross-entropy, each backend's
default ``jit_compile``), transformers a hand-written eager step (forward with ``labels``,
backward, ``torch.optim.Adam``). The first call of each (tracing, compilation) is reported apart;
then ``--repeats`` timed calls, median.

Each backend runs in its own subprocess (the backend is fixed at import); ``--torch-threads`` sets
``torch.set_num_threads`` in the torch worker (default: torch's own thread count, as a user gets it).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = {
    "t5_small": dict(vocabulary_size=32128, num_layers=6, num_heads=8, hidden_dim=512,
                     intermediate_dim=2048),
    "tiny": dict(vocabulary_size=1000, num_layers=2, num_heads=4, hidden_dim=64, intermediate_dim=128),
}


def transformers_config(size):
    import transformers

    c = SIZES[size]
    return transformers.T5Config(vocab_size=c["vocabulary_size"], d_model=c["hidden_dim"],
                                 d_kv=c["hidden_dim"] // c["num_heads"], d_ff=c["intermediate_dim"],
                                 num_layers=c["num_layers"], num_heads=c["num_heads"],
                                 feed_forward_proj="relu", dropout_rate=0.0, decoder_start_token_id=0)


def timed(function, repeats):
    """(first call s, median of ``repeats`` later calls s)."""
    start = time.perf_counter()
    function()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def worker(args):
    import keras
    import numpy as np

    from kcookbook.backbones import T5Backbone
    from kcookbook.tasks import Seq2SeqLM

    backend = keras.config.backend()
    if backend == "torch":
        import torch

        if args.torch_threads:  # 0: torch's default (what a user gets: one per core)
            torch.set_num_threads(args.torch_threads)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    vocabulary = SIZES[args.size]["vocabulary_size"]
    ours = Seq2SeqLM(T5Backbone(**SIZES[args.size], dropout=0.0))
    results = []
    reference = None
    if backend == "torch":
        import transformers

        reference = transformers.T5ForConditionalGeneration(transformers_config(args.size)).eval()
    for batch in args.batches:
        ids = rng.integers(2, vocabulary, (batch, args.source_length)).astype("int32")
        mask = np.ones_like(ids)

        def run_ours():
            ours.generate({"encoder_token_ids": ids, "encoder_padding_mask": mask},
                          max_length=args.new_tokens + 1, stop_token_ids=None)
        first, seconds = timed(run_ours, args.repeats)
        results.append({"library": "kcookbook", "backend": backend, "what": f"generate b{batch}",
                        "first_s": first, "value": args.new_tokens * batch / seconds, "unit": "tok/s"})
        if reference is not None:
            import torch

            def run_theirs():
                with torch.no_grad():
                    reference.generate(input_ids=torch.tensor(ids, dtype=torch.long),
                                       attention_mask=torch.tensor(mask), do_sample=False,
                                       min_new_tokens=args.new_tokens, max_new_tokens=args.new_tokens)
            first, seconds = timed(run_theirs, args.repeats)
            results.append({"library": "transformers", "backend": "torch eager", "what": f"generate b{batch}",
                            "first_s": first, "value": args.new_tokens * batch / seconds, "unit": "tok/s"})
    if args.fit_steps:
        shape = (args.fit_batch, args.source_length)
        x = {"encoder_token_ids": rng.integers(2, vocabulary, shape).astype("int32"),
             "encoder_padding_mask": np.ones(shape, "int32"),
             "decoder_token_ids": rng.integers(2, vocabulary, shape).astype("int32"),
             "decoder_padding_mask": np.ones(shape, "int32")}
        y = rng.integers(2, vocabulary, shape).astype("int32")
        ours.compile(optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True), weighted_metrics=[])
        first, seconds = timed(lambda: ours.fit(x, y, batch_size=args.fit_batch, epochs=args.fit_steps,
                                                verbose=0), args.repeats)
        results.append({"library": "kcookbook", "backend": backend, "what": "fit",
                        "first_s": first, "value": 1000 * seconds / args.fit_steps, "unit": "ms/step"})
        if reference is not None:
            import torch

            reference.train()
            optimizer = torch.optim.Adam(reference.parameters(), 1e-4)
            tensors = {k: torch.tensor(v, dtype=torch.long) for k, v in x.items()}

            def steps():
                for _ in range(args.fit_steps):
                    loss = reference(input_ids=tensors["encoder_token_ids"],
                                     attention_mask=tensors["encoder_padding_mask"],
                                     decoder_input_ids=tensors["decoder_token_ids"],
                                     labels=torch.tensor(y, dtype=torch.long)).loss
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            first, seconds = timed(steps, args.repeats)
            results.append({"library": "transformers", "backend": "torch eager", "what": "fit",
                            "first_s": first, "value": 1000 * seconds / args.fit_steps, "unit": "ms/step"})
    print("RESULTS " + json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="t5_small")
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--source-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fit-steps", type=int, default=3)
    parser.add_argument("--fit-batch", type=int, default=8)
    parser.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads; 0 (default): torch's own default")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    for backend in args.backends:
        command = [sys.executable, __file__, "--worker"] + [a for a in sys.argv[1:] if a != "--worker"]
        done = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True,
                              text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
        if done.returncode or not lines:
            print(f"{backend} worker failed:\n{done.stderr[-2000:]}")
            continue
        rows += json.loads(lines[-1][len("RESULTS "):])
    jax_values = {r["what"]: r["value"] for r in rows if r["library"] == "kcookbook" and r["backend"] == "jax"}
    print(f"T5 {args.size}: source {args.source_length} tokens, {args.new_tokens} new tokens, greedy, float32")
    print(f"{'library':<13}{'backend':<13}{'what':<13}{'first call s':>13}{'value':>12}  unit      vs kcookbook jax")
    for r in rows:
        base = jax_values.get(r["what"])
        ratio = "" if base is None else f"{r['value'] / base:.2f}x"
        print(f"{r['library']:<13}{r['backend']:<13}{r['what']:<13}{r['first_s']:>13.2f}{r['value']:>12.1f}  "
              f"{r['unit']:<10}{ratio}")


if __name__ == "__main__":
    main()
