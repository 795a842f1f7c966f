"""Greedy generation tokens/s: kcookbook vs keras_hub (each backend) and transformers, in one run.

    .venv/bin/python benchmarks/causal_lm_generate_speed.py
    .venv/bin/python benchmarks/causal_lm_generate_speed.py --batches 1 --new-tokens 32
    .venv/bin/python benchmarks/causal_lm_generate_speed.py --torch-threads 1 --torch-compile
    .venv/bin/python benchmarks/causal_lm_generate_speed.py --dtype bfloat16
    .venv/bin/python benchmarks/causal_lm_generate_speed.py --quantize int8 --fit-steps 0

A randomly initialised Llama-architecture model (speed does not depend on the values), the same
configuration for every library: ``--size smollm2`` is SmolLM2-135M's shape (30 layers, hidden 576,
9 heads / 3 key-value heads, intermediate 1536, vocabulary 49,152, tied embeddings, rope theta 1e5),
``--size tiny`` a 2-layer, hidden-64 model that shows the per-token overhead; ``--size gemma3_270m``
Gemma 3 270M's shape (18 layers, 5 local sliding-window-512 layers to 1 global, hidden 640, 4 heads
/ 1 key-value head of 256, intermediate 2048, vocabulary 262,144, QK-norm, post-norms) and
``--size gemma3_tiny`` a 6-layer, hidden-64 Gemma 3 with a window of 4, through kcookbook's
``Gemma3Backbone``, keras_hub's ``Gemma3Backbone`` (text only; keras_hub 0.32's ``Gemma3CausalLM``
fails in ``generate`` on token ids without a preprocessor, and a library whose first call fails is
left out of the table with the error printed) and transformers' ``Gemma3ForCausalLM``. float32, batch 1 and 8, an 8-token prompt, ``--new-tokens`` new tokens, no
stop token, greedy. ``--size gemma3_270m --weights gguf`` times the real model instead: kcookbook's
``CausalLM.from_preset("gemma3_270m")`` and transformers' ``AutoModelForCausalLM.from_pretrained(folder,
gguf_file=...)`` both read the same Q4_K_M GGUF file and dequantise it to float32 (keras_hub keeps
random weights of the same shape: speed does not depend on the values).

* kcookbook: ``CausalLM(LlamaBackbone(...)).generate(token ids, stop_token_ids=None)``; with
  ``--torch-compile`` the torch worker also times ``lm.jit_compile = True`` (one-token steps through
  one ``torch.compile``d decoder block shared by every layer).
* keras_hub 0.32: ``LlamaCausalLM(LlamaBackbone(...), preprocessor=None)``, ``compile(sampler="greedy")``,
  ``generate({"token_ids", "padding_mask"} padded to the final length, stop_token_ids=None)``.
* transformers (torch worker only): ``LlamaForCausalLM(LlamaConfig(...))`` in eval mode,
  ``generate(do_sample=False, min_new_tokens=max_new_tokens=N)``, under ``torch.no_grad``.

Fewer bytes per token: ``--dtype bfloat16`` builds every library's model in bfloat16 (Keras dtype
policy; transformers ``.to(torch.bfloat16)``); ``--quantize int8`` quantises the float32 models with
Keras's ``model.quantize("int8")`` (kcookbook and keras_hub) and transformers' with torch's dynamic
int8 ``quantize_dynamic`` of its ``nn.Linear`` layers (the int8 path transformers runs on a CPU).
``--quantize int8-weights`` quantises weights only (``Int8QuantizationConfig(activation_quantizer=None)``:
float activations times dequantised int8 weights) and ``int8-weights-float-embeddings`` also keeps every
``keras.layers.Embedding`` (the token table and, when tied, the LM head) in float32 (``filters=``).
Either way a ``kcookbook float32`` row is timed in the same worker, so the table's "vs fp32" column is
kcookbook's own speed-up in one run (speed only: the weights are random, so nothing here measures
accuracy). ``--quantize`` has no ``fit``: int8 kernels do not train (LoRA on top of them does).

Then (``--fit-steps``, 0 to skip) CausalLM ``fit`` ms/step of the same two Keras models: full
fine-tuning on token ids (``--fit-batch`` x ``--fit-length`` random tokens, next-token targets),
``AdamW(1e-5)``, ``SparseCategoricalCrossentropy(from_logits=True)``, no metrics, each library with
its default ``jit_compile`` (XLA on jax; off on TensorFlow-CPU and torch, as Keras decides). One
``fit`` call of one step compiles; then the libraries take turns, ``--repeats`` times, one
``--fit-steps``-step ``fit`` each, timed by ``StepTimer`` from its first batch.

Each backend runs in its own subprocess (the backend is fixed at import); ``--torch-threads`` sets
``torch.set_num_threads`` in the torch worker (on a shared 2-core machine one thread is several
times faster: small ops stop waiting for a descheduled thread). In a worker every library is first
called once (tracing, compilation: reported as "first call s"), then the libraries take turns,
``--repeats`` times; the table gives the median tokens/s (new tokens x batch / seconds) and the
ratios kcookbook/keras_hub (same process) and backend/jax (across processes).
"""

import argparse
import json
import os
import statistics
import sys
import time

SIZES = {
    "smollm2": dict(vocabulary_size=49152, num_layers=30, num_heads=9, num_key_value_heads=3,
                    hidden_dim=576, intermediate_dim=1536, tie_word_embeddings=True,
                    rope_max_wavelength=100000, max_sequence_length=2048),
    "tiny": dict(vocabulary_size=1000, num_layers=2, num_heads=4, num_key_value_heads=2,
                 hidden_dim=64, intermediate_dim=128, max_sequence_length=512),
    "gemma3_270m": dict(family="gemma3", vocabulary_size=262144, num_layers=18, num_heads=4,
                        num_key_value_heads=1, head_dim=256, hidden_dim=640, intermediate_dim=2048,
                        sliding_window=512, query_pre_attn_scalar=256, max_sequence_length=32768),
    "gemma3_tiny": dict(family="gemma3", vocabulary_size=1000, num_layers=6, num_heads=4,
                        num_key_value_heads=1, head_dim=16, hidden_dim=64, intermediate_dim=128,
                        sliding_window=4, query_pre_attn_scalar=16, max_sequence_length=512),
}


def gemma3_models(size):
    """kcookbook's, keras_hub's and (a function building) transformers' Gemma 3 of ``size``."""
    import keras_hub
    from kcookbook.backbones import Gemma3Backbone

    config = {k: v for k, v in SIZES[size].items() if k != "family"}
    ours = Gemma3Backbone(**config)
    theirs = keras_hub.models.Gemma3CausalLM(backbone=keras_hub.models.Gemma3Backbone(
        vocabulary_size=config["vocabulary_size"], image_size=896, num_layers=config["num_layers"],
        num_query_heads=config["num_heads"], num_key_value_heads=config["num_key_value_heads"],
        hidden_dim=config["hidden_dim"], intermediate_dim=config["intermediate_dim"],
        head_dim=config["head_dim"], query_head_dim_normalize=True, use_query_key_norm=True,
        use_post_ffw_norm=True, use_post_attention_norm=True, use_sliding_window_attention=True,
        sliding_window_size=config["sliding_window"]), preprocessor=None)

    def reference():
        import transformers

        return transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            vocab_size=config["vocabulary_size"], hidden_size=config["hidden_dim"],
            intermediate_size=config["intermediate_dim"], num_hidden_layers=config["num_layers"],
            num_attention_heads=config["num_heads"], head_dim=config["head_dim"],
            num_key_value_heads=config["num_key_value_heads"],
            sliding_window=config["sliding_window"],
            query_pre_attn_scalar=config["query_pre_attn_scalar"],
            max_position_embeddings=config["max_sequence_length"])).eval()

    return ours, theirs, reference


def gguf_reference():
    """transformers' Gemma 3 270M from the same GGUF file as the ``gemma3_270m`` preset (float32)."""
    import transformers

    from kcookbook.presets import get_preset

    path = get_preset("gemma3_270m").offline_path()
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path)).eval()


def keras_hub_config(size):
    config = dict(SIZES[size])
    return dict(vocabulary_size=config["vocabulary_size"], num_layers=config["num_layers"],
                num_query_heads=config["num_heads"], hidden_dim=config["hidden_dim"],
                intermediate_dim=config["intermediate_dim"],
                num_key_value_heads=config["num_key_value_heads"],
                rope_max_wavelength=config.get("rope_max_wavelength", 10000),
                tie_word_embeddings=config.get("tie_word_embeddings", False))


def generators(args, backend):
    """name → function(prompt ids (batch, 8), max_length) running one greedy generation; and the
    two Keras models by name."""
    import keras
    import numpy as np

    import keras_hub
    from kcookbook.backbones import LlamaBackbone
    from kcookbook.backbones.backbone import default_dtype_policy
    from kcookbook.benchmarks.paper import keras_hub_generate
    from kcookbook.tasks import CausalLM

    keras.utils.set_random_seed(0)
    baseline = None
    with default_dtype_policy(args.dtype):  # every library's layers take it
        if SIZES[args.size].get("family") == "gemma3":
            backbone, theirs, reference_model = gemma3_models(args.size)
            ours = CausalLM(backbone)
            if args.weights == "gguf":  # the real weights, for kcookbook and transformers alike
                del backbone, ours
                ours = CausalLM.from_preset("gemma3_270m")
                reference_model = gguf_reference
        else:
            ours = CausalLM(LlamaBackbone(**SIZES[args.size]))
            theirs = keras_hub.models.LlamaCausalLM(
                keras_hub.models.LlamaBackbone(**keras_hub_config(args.size)), preprocessor=None)
            reference_model = None
    if args.dtype != "float32" or args.quantize:
        baseline = CausalLM(ours.backbone.__class__.from_config(
            {**ours.backbone.get_config(), "dtype": "float32"}))
    if args.quantize:
        ours.backbone.quantize("int8", **quantize_options(args.quantize))
        theirs.quantize("int8", **quantize_options(args.quantize))
    theirs.compile(sampler="greedy")

    def run_ours(ids, max_length, lm=ours):
        lm.generate({"token_ids": ids, "padding_mask": np.ones_like(ids)}, max_length=max_length,
                    stop_token_ids=None)

    def run_theirs(ids, max_length):
        keras_hub_generate(theirs, ids, max_length)

    runs = {"kcookbook": run_ours, "keras_hub": run_theirs}
    if baseline is not None:
        runs["kcookbook float32"] = lambda ids, max_length: run_ours(ids, max_length, baseline)
    if backend == "torch" and args.torch_compile:
        compiled = CausalLM(ours.backbone)
        compiled.jit_compile = True
        runs["kcookbook+compile"] = lambda ids, max_length: run_ours(ids, max_length, compiled)
    if backend == "torch":
        import torch
        import transformers

        config = SIZES[args.size]
        reference = reference_model() if reference_model else transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=config["vocabulary_size"], hidden_size=config["hidden_dim"],
            intermediate_size=config["intermediate_dim"], num_hidden_layers=config["num_layers"],
            num_attention_heads=config["num_heads"],
            num_key_value_heads=config["num_key_value_heads"],
            rope_theta=config.get("rope_max_wavelength", 10000),
            max_position_embeddings=config["max_sequence_length"],
            tie_word_embeddings=config.get("tie_word_embeddings", False))).eval()
        if args.dtype == "bfloat16":
            reference = reference.to(torch.bfloat16)
        if args.quantize:
            reference = torch.ao.quantization.quantize_dynamic(reference, {torch.nn.Linear}, dtype=torch.qint8)

        def run_transformers(ids, max_length):
            new = max_length - ids.shape[1]
            with torch.no_grad():
                reference.generate(torch.as_tensor(ids, dtype=torch.long), do_sample=False,
                                   max_new_tokens=new, min_new_tokens=new, pad_token_id=0)

        runs["transformers"] = run_transformers
    return runs, {"kcookbook": ours, "keras_hub": theirs}


def fit_runs(args, models):
    """name → function() running one ``fit`` of ``--fit-steps`` steps, and a ``StepTimer``."""
    import keras
    import numpy as np

    from kcookbook.benchmarks.timing import StepTimer

    rng = np.random.default_rng(0)
    token_ids = rng.integers(3, SIZES[args.size]["vocabulary_size"],
                             (args.fit_batch * args.fit_steps, args.fit_length)).astype("int32")
    x = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    y = np.roll(token_ids, -1, axis=1)
    timer = StepTimer(start_batch=0)
    runs = {}
    for name, model in models.items():
        model.compile(optimizer=keras.optimizers.AdamW(1e-5), weighted_metrics=None,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

        def run(model=model, steps=args.fit_steps):
            n = steps * args.fit_batch
            model.fit({k: v[:n] for k, v in x.items()}, y[:n], batch_size=args.fit_batch,
                      epochs=1, shuffle=False, verbose=0, callbacks=[timer])
            return timer.ms_per_step

        runs[name] = run
    return runs



def quantize_options(kind):
    """``quantize("int8", **options)`` for ``--quantize``: Keras's default (weights and activations
    int8), weights only, or weights only with the embedding tables (and a tied LM head) left float."""
    import keras

    if kind == "int8":
        return {}
    options = {"config": keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)}
    if kind == "int8-weights-float-embeddings":
        options["filters"] = lambda layer: not isinstance(layer, keras.layers.Embedding)
    return options

def worker(args):
    backend = os.environ["KERAS_BACKEND"]
    if args.torch_threads and backend == "torch":
        import torch

        torch.set_num_threads(args.torch_threads)
    import numpy as np

    from kcookbook.benchmarks.timing import emit_result

    runs, models = generators(args, backend)
    results = {}
    for batch in args.batches:
        ids = np.random.default_rng(0).integers(3, 900, (batch, 8)).astype("int32")
        max_length = 8 + args.new_tokens
        times = {name: [] for name in runs}
        first = {}
        for name, run in list(runs.items()):
            start = time.perf_counter()
            try:
                run(ids, max_length)
            except Exception as error:  # e.g. keras_hub 0.32's Gemma3CausalLM.generate on ids alone
                print(f"{backend}: {name} left out, its generate failed: {type(error).__name__}: "
                      f"{str(error)[:200]}", file=sys.stderr, flush=True)
                del runs[name], times[name]
                continue
            first[name] = time.perf_counter() - start
        for repeat in range(args.repeats):
            names = list(runs)
            names = names[repeat % len(names):] + names[:repeat % len(names)]  # rotate the order
            for name in names:
                start = time.perf_counter()
                runs[name](ids, max_length)
                times[name].append(time.perf_counter() - start)
        results[batch] = {name: {"tokens_per_s": args.new_tokens * batch / statistics.median(t),
                                 "first_call_s": first[name]} for name, t in times.items()}
        print(f"{backend} batch {batch}: " + json.dumps(results[batch]), file=sys.stderr, flush=True)
    if args.fit_steps:
        fits = fit_runs(args, models)
        first = {name: run(steps=1) for name, run in fits.items()}
        times = {name: [] for name in fits}
        for repeat in range(args.repeats):
            names = list(fits)
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:
                times[name].append(fits[name]())
        results["fit"] = {name: {"ms_per_step": statistics.median(t), "first_step_ms": first[name]}
                          for name, t in times.items()}
        print(f"{backend} fit: " + json.dumps(results["fit"]), file=sys.stderr, flush=True)
    emit_result(results)


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
    parser.add_argument("--torch-compile", action="store_true",
                        help="also time kcookbook on torch with jit_compile=True (one decoder block "
                             "torch.compiled and shared by every layer; ~10-30 s of compilation).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="every library's model in this dtype (a kcookbook float32 row is added)")
    parser.add_argument("--quantize", choices=["int8", "int8-weights", "int8-weights-float-embeddings"],
                        default=None,
                        help="quantise the float32 models (a kcookbook float32 row is added); "
                             "needs --fit-steps 0")
    parser.add_argument("--fit-steps", type=int, default=3,
                        help="timed steps per fit call (0: no fit measurement)")
    parser.add_argument("--fit-batch", type=int, default=2)
    parser.add_argument("--fit-length", type=int, default=128)
    parser.add_argument("--weights", choices=["random", "gguf"], default="random",
                        help="gguf (with --size gemma3_270m): kcookbook and transformers load the real "
                             "gemma3_270m GGUF file; keras_hub keeps random weights")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quantize and args.fit_steps:
        parser.error("--quantize times generation only: int8 kernels do not train. Add --fit-steps 0.")
    if args.quantize and args.dtype != "float32":
        parser.error("--quantize quantises the float32 models: leave --dtype at float32.")
    if args.weights == "gguf" and args.size != "gemma3_270m":
        parser.error("--weights gguf loads the real Gemma 3 270M: use it with --size gemma3_270m.")
    if args.weights == "gguf" and (args.quantize or args.dtype != "float32"):
        parser.error("--weights gguf times the dequantised float32 model: leave --dtype and --quantize.")
    if args.worker:
        return worker(args)
    from kcookbook.benchmarks.timing import BackendWorkerError, run_backend_worker

    rows = {}
    for backend in args.backends:
        arguments = [__file__, "--worker", "--size", args.size, "--new-tokens",
                     str(args.new_tokens), "--repeats", str(args.repeats),
                     "--fit-steps", str(args.fit_steps), "--fit-batch", str(args.fit_batch),
                     "--fit-length", str(args.fit_length), "--dtype", args.dtype, "--weights", args.weights,
                     *(["--quantize", args.quantize] if args.quantize else []),
                     "--torch-threads", str(args.torch_threads), "--batches",
                     *map(str, args.batches)] + (["--torch-compile"] if args.torch_compile else [])
        try:
            rows[backend] = run_backend_worker(arguments, backend)[0]
        except BackendWorkerError as error:
            print(f"{backend} failed:\n{error}")
    weights = ("real weights from the GGUF file; keras_hub random" if args.weights == "gguf"
               else "random weights")
    print(f"\nGreedy generate, {args.size} shape ({weights}), 8-token prompt + {args.new_tokens} "
          f"new, {args.quantize or args.dtype}, torch threads: {args.torch_threads or 'default'}")
    print(f"{'backend':<12}{'library':<19}{'batch':>6}{'tok/s':>9}{'vs keras_hub':>14}"
          f"{'vs jax':>8}{'vs fp32':>9}{'first call s':>14}")
    for backend, result in rows.items():
        for b in args.batches:
            for name, cell in result[str(b)].items():
                speed = cell["tokens_per_s"]
                hub = result[str(b)].get("keras_hub", {}).get("tokens_per_s")
                jax_speed = rows.get("jax", {}).get(str(b), {}).get("kcookbook", {}).get("tokens_per_s")
                vs_hub = f"{speed / hub:.2f}" if hub and name != "keras_hub" else "-"
                vs_jax = f"{speed / jax_speed:.2f}" if jax_speed and name.startswith("kcookbook") else "-"
                fp32 = result[str(b)].get("kcookbook float32", {}).get("tokens_per_s")
                vs_fp32 = f"{speed / fp32:.2f}" if fp32 and name == "kcookbook" else "-"
                print(f"{backend:<12}{name:<19}{b:>6}{speed:>9.1f}{vs_hub:>14}{vs_jax:>8}{vs_fp32:>9}"
                      f"{cell['first_call_s']:>14.1f}")
    if args.fit_steps:
        print(f"\nCausalLM fit, full fine-tuning, batch {args.fit_batch} x {args.fit_length} tokens, "
              f"AdamW, median of {args.repeats} fits of {args.fit_steps} steps")
        print(f"{'backend':<12}{'library':<19}{'ms/step':>9}{'kcookbook / keras_hub':>23}"
              f"{'first step s':>14}")
        for backend, result in rows.items():
            fit = result.get("fit", {})
            for name, cell in fit.items():
                ratio = "-"
                if name == "kcookbook" and "keras_hub" in fit:
                    ratio = f"{cell['ms_per_step'] / fit['keras_hub']['ms_per_step']:.2f}"
                print(f"{backend:<12}{name:<19}{cell['ms_per_step']:>9.0f}{ratio:>23}"
                      f"{cell['first_step_ms'] / 1000:>14.1f}")


if __name__ == "__main__":
    main()
