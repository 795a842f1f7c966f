"""Seq2SeqLM greedy tokens/s on torch against jax, measured in alternating rounds (a busy machine).

    .venv/bin/python benchmarks/seq2seq_paired_speed.py --rounds 10
    .venv/bin/python benchmarks/seq2seq_paired_speed.py --trees /path/to/main . --threads 1 2

``seq2seq_generate_speed.py`` runs one backend after the other, so on a shared machine the load
changes between its jax and torch rows. Here every worker (jax, and torch for each source tree and
thread count) builds the same t5-small-shaped ``Seq2SeqLM`` once and stays alive; each round asks
every worker in turn for one timed ``generate`` (greedy, no stop token), and the ratio to jax is
taken per round, then the median. ``--trees`` compares source trees (a baseline checkout and a
branch) in the same window: each worker runs with ``PYTHONPATH`` set to its tree; jax runs from
the first.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

T5_SMALL = dict(vocabulary_size=32128, num_layers=6, num_heads=8, hidden_dim=512, intermediate_dim=2048)


def worker(args):
    import keras
    import numpy as np

    from kcookbook.backbones import T5Backbone
    from kcookbook.tasks import Seq2SeqLM

    if keras.config.backend() == "torch" and args.threads[0]:
        import torch

        torch.set_num_threads(args.threads[0])
    keras.utils.set_random_seed(0)
    lm = Seq2SeqLM(T5Backbone(**T5_SMALL, dropout=0.0))
    ids = np.random.default_rng(0).integers(2, T5_SMALL["vocabulary_size"], (args.batch, args.source_length))
    inputs = {"encoder_token_ids": ids.astype("int32"), "encoder_padding_mask": np.ones(ids.shape, "int32")}

    def run():
        return lm.generate(inputs, max_length=args.new_tokens + 1, stop_token_ids=None)

    print(json.dumps(run()["decoder_token_ids"].tolist()), flush=True)  # also the warm-up
    for _ in sys.stdin:
        start = time.perf_counter()
        run()
        print(args.batch * args.new_tokens / (time.perf_counter() - start), flush=True)


def run_rounds(command, specs, rounds, title, reference="jax"):
    """Start one persistent worker per spec ``(name, KERAS_BACKEND, source tree, arguments)``
    (``command + arguments``, with ``PYTHONPATH`` set to its tree); each prints its first output
    (tokens, also the warm-up), then one tokens/s line per ``go`` on its stdin. Rounds ask every
    worker in turn; print the median tokens/s and the median over rounds of the ratio to
    ``reference``'s speed in the same round."""
    workers = {}
    for name, backend, tree, arguments in specs:
        tree = os.path.abspath(tree)
        workers[name] = subprocess.Popen(
            command + list(arguments), cwd=tree, text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": tree})
    tokens = {name: process.stdout.readline() for name, process in workers.items()}
    if any(not line for line in tokens.values()):
        sys.exit(f"a worker failed to start: {[name for name, line in tokens.items() if not line]}")
    torch_tokens = {line for name, line in tokens.items() if name != reference}
    print(f"{title}, {rounds} rounds; load at start {open('/proc/loadavg').read().split()[:3]}; "
          f"the workers' tokens (but {reference}'s) {'identical' if len(torch_tokens) == 1 else 'DIFFER'}")
    values = {name: [] for name in workers}
    for _ in range(rounds):
        for name, process in workers.items():
            process.stdin.write("go\n")
            process.stdin.flush()
            values[name].append(float(process.stdout.readline()))
    for name, process in workers.items():
        process.stdin.close()
        process.wait()
    for name, v in values.items():
        ratios = [t / r for t, r in zip(v, values[reference])]
        print(f"{name:<40} {statistics.median(v):8.1f} tok/s  vs {reference} (median of rounds) "
              f"{statistics.median(ratios):.2f}x  per round {[round(r, 2) for r in ratios]}")
    print(f"load at end {open('/proc/loadavg').read().split()[:3]}")
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", nargs="+", default=["."], help="source trees of the torch workers")
    parser.add_argument("--threads", nargs="+", type=int, default=[1],
                        help="torch thread counts (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--source-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--batch", str(args.batch),
               "--source-length", str(args.source_length), "--new-tokens", str(args.new_tokens)]
    specs = [("jax", "jax", args.trees[0], ["--threads", "1"])] + [
        (f"torch {tree} {threads}t", "torch", tree, ["--threads", str(threads)])
        for tree in args.trees for threads in args.threads]
    run_rounds(command, specs, args.rounds, f"T5-small greedy, batch {args.batch}, {args.new_tokens} new tokens")


if __name__ == "__main__":
    main()
