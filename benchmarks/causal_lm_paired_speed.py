"""CausalLM greedy tokens/s on torch against transformers' eager ``generate``, in alternating rounds.

    .venv/bin/python benchmarks/causal_lm_paired_speed.py --trees /path/to/main . --batch 8 --rounds 8

``causal_lm_generate_speed.py`` times kcookbook and transformers in one torch worker; this compares
source trees (a baseline checkout and a branch) as well, in the same window of a busy machine:
persistent workers — transformers' ``LlamaForCausalLM`` and kcookbook's ``CausalLM(LlamaBackbone)``
from each tree (``PYTHONPATH``), SmolLM2-135M's shape with random weights, float32, an 8-token
prompt, no stop token — each asked in turn for one timed ``generate`` per round
(``seq2seq_paired_speed.run_rounds``); the ratio to transformers is taken per round, then the median.
``--threads 0`` (the default) leaves torch's thread count and OpenMP settings as a user gets them.
"""

import argparse
import json
import os
import sys
import time

from causal_lm_generate_speed import SIZES
from seq2seq_paired_speed import run_rounds


def worker(args):
    import numpy as np
    import torch

    if args.threads[0]:
        torch.set_num_threads(args.threads[0])
    config = SIZES["smollm2"]
    ids = np.random.default_rng(0).integers(3, 900, (args.batch, 8)).astype("int32")
    max_length = 8 + args.new_tokens
    if args.library == "transformers":
        import transformers

        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=config["vocabulary_size"], hidden_size=config["hidden_dim"],
            intermediate_size=config["intermediate_dim"], num_hidden_layers=config["num_layers"],
            num_attention_heads=config["num_heads"], num_key_value_heads=config["num_key_value_heads"],
            rope_theta=config["rope_max_wavelength"], max_position_embeddings=config["max_sequence_length"],
            tie_word_embeddings=config["tie_word_embeddings"])).eval()

        def run():
            with torch.no_grad():
                return model.generate(torch.as_tensor(ids, dtype=torch.long), do_sample=False,
                                      max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                      pad_token_id=0).tolist()
    else:
        import keras

        from kcookbook.backbones import LlamaBackbone
        from kcookbook.tasks import CausalLM

        keras.utils.set_random_seed(0)
        lm = CausalLM(LlamaBackbone(**config))

        def run():
            return lm.generate({"token_ids": ids, "padding_mask": np.ones_like(ids)}, max_length=max_length,
                               stop_token_ids=None)["token_ids"].tolist()

    print(json.dumps(run()), flush=True)  # also the warm-up
    for _ in sys.stdin:
        start = time.perf_counter()
        run()
        print(args.batch * args.new_tokens / (time.perf_counter() - start), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trees", nargs="+", default=["."], help="source trees of the kcookbook workers")
    parser.add_argument("--threads", nargs=1, type=int, default=[0],
                        help="torch's thread count (0: its default)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--library", default="kcookbook", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    command = [sys.executable, os.path.abspath(__file__), "--worker", "--batch", str(args.batch),
               "--new-tokens", str(args.new_tokens), "--threads", str(args.threads[0])]
    specs = [("transformers", "torch", args.trees[0], ["--library", "transformers"])] + [
        (f"kcookbook {tree}", "torch", tree, []) for tree in args.trees]
    run_rounds(command, specs, args.rounds, reference="transformers",
               title=f"SmolLM2-135M's shape, greedy, batch {args.batch}, {args.new_tokens} new tokens, "
                     f"torch threads {args.threads[0] or 'default'}")


if __name__ == "__main__":
    main()
