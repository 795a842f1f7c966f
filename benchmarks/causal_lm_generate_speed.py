"""Greedy generation tokens/s of kcookbook's CausalLM on jax, tensorflow and torch, in one run.

    .venv/bin/python benchmarks/causal_lm_generate_speed.py
    .venv/bin/python benchmarks/causal_lm_generate_speed.py --size tiny --new-tokens 32
    .venv/bin/python benchmarks/causal_lm_generate_speed.py --torch-threads 1

Measured on the shared 2-core CPU machine (smollm2 shape, batch 1, 32 new tokens, one run, load ≈ 3):
jax 27.3 tok/s, tensorflow 25.4, torch 1.6 with torch's default 2 threads and ≈ 7.8 with one thread
(small per-token ops wait on threads when the machine is shared). torch stays the slow backend.

A randomly initialised Llama-architecture model (speed does not depend on the values):
``--size smollm2`` is SmolLM2-135M's shape (30 layers, hidden 576, 9 heads / 3 key-value heads,
vocabulary 49,152, tied embeddings), ``--size tiny`` a 2-layer, hidden-64 model that shows the
per-token overhead. float32, batch 1 and 8, an 8-token prompt, ``--new-tokens`` new tokens, no stop
token. Each backend runs in its own subprocess (the backend is fixed at import); the first
``generate`` (compilation) is left out and the median of ``--repeats`` timed calls is reported, as
tokens/s (new tokens × batch / seconds) and as the ratio to jax. Real SmolLM2 weights and keras_hub /
transformers comparisons are in the SmolLM2 benchmark.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES = {
    "smollm2": dict(vocabulary_size=49152, num_layers=30, num_heads=9, num_key_value_heads=3,
                    hidden_dim=576, intermediate_dim=1536, tie_word_embeddings=True,
                    rope_max_wavelength=100000, max_sequence_length=2048),
    "tiny": dict(vocabulary_size=1000, num_layers=2, num_heads=4, num_key_value_heads=2,
                 hidden_dim=64, intermediate_dim=128, max_sequence_length=512),
}


def worker(args):
    if args.torch_threads and os.environ.get("KERAS_BACKEND") == "torch":
        import torch

        torch.set_num_threads(args.torch_threads)
    import keras
    import numpy as np

    from kcookbook.backbones import LlamaBackbone
    from kcookbook.tasks import CausalLM

    keras.utils.set_random_seed(0)
    lm = CausalLM(LlamaBackbone(**SIZES[args.size]))
    results = {}
    for batch in args.batches:
        prompts = {"token_ids": np.random.default_rng(0).integers(3, 900, (batch, 8)).astype("int32"),
                   "padding_mask": np.ones((batch, 8), "int32")}
        max_length = 8 + args.new_tokens
        start = time.perf_counter()
        lm.generate(prompts, max_length=max_length, stop_token_ids=None)
        first = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            lm.generate(prompts, max_length=max_length, stop_token_ids=None)
            times.append(time.perf_counter() - start)
        results[batch] = {"tokens_per_s": args.new_tokens * batch / statistics.median(times),
                          "first_call_s": first}
    print("RESULT " + json.dumps(results))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    parser.add_argument("--size", choices=sorted(SIZES), default="smollm2")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default). On a small shared machine "
                             "1 thread decodes several times faster: small ops stop waiting on threads.")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows = {}
    for backend in args.backends:
        command = [sys.executable, __file__, "--worker", "--size", args.size, "--new-tokens",
                   str(args.new_tokens), "--repeats", str(args.repeats),
                   "--torch-threads", str(args.torch_threads), "--batches",
                   *map(str, args.batches)]
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        out = subprocess.run(command, env=env, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            print(f"{backend} failed:\n{out.stderr[-2000:]}")
            continue
        rows[backend] = json.loads(line[0][7:])
    print(f"\nCausalLM greedy generate, {args.size} shape, 8-token prompt + {args.new_tokens} new, float32")
    print(f"{'backend':<12}" + "".join(f"{f'batch {b} tok/s':>16}{'vs jax':>8}" for b in args.batches)
          + f"{'compile s (b1)':>16}")
    for backend, result in rows.items():
        cells = ""
        for b in args.batches:
            speed = result[str(b)]["tokens_per_s"]
            base = rows.get("jax", {}).get(str(b), {}).get("tokens_per_s")
            cells += f"{speed:>16.1f}{(speed / base if base else float('nan')):>8.2f}"
        first = result[str(args.batches[0])]["first_call_s"]
        print(f"{backend:<12}{cells}{first:>16.1f}")


if __name__ == "__main__":
    main()
