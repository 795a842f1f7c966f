"""Why XLA's int8 kernels do not speed up batch-1 decoding on jax's CPU backend, and kcookbook's does.

    .venv/bin/python benchmarks/int8_matvec_kernels.py
    .venv/bin/python benchmarks/int8_matvec_kernels.py --rounds 5 --calls 20 --torch

Batch-1 decoding multiplies one activation row by every weight matrix, so its speed is bounded by
the bytes of weights read per token: int8 weights are a quarter of float32's, and issue #22 asks for
int8 batch-1 decoding at >= 1.8x float32's tokens/s on jax. This times the kernels XLA's CPU backend
can run for ``x (1, k) @ W (k, m)`` at SmolLM2-135M's shapes, each ``jax.jit``-compiled, in turns
(``--rounds`` rounds of ``--calls`` calls; the median call). Each kernel gets ``--copies`` copies of
its weights (30 by default, one per SmolLM2 layer; the LM head 1) and its calls cycle through them,
so that, as in the model, the weights come from memory rather than a cache:

* ``float32 dot``: ``x @ W`` (what kcookbook's float32 model runs);
* ``int8 weight-only, dequantise + dot``: ``(x @ W_int8.astype(float32)) * scale``, how Keras's
  weight-only int8 ``Dense`` computes (XLA writes the float32 copy of the weights, then reads it);
* ``int8 weight-only, fused reduce``: ``sum(x * W_int8ᵀ.astype(float32), axis=-1) * scale`` on
  transposed weights, which XLA fuses into one loop that reads each int8 weight once (no copy);
* ``int8 x int8 -> int32 dot``: Keras's default int8 (weights *and* activations quantised);
* ``bfloat16 dot``: bf16 operands, float32 accumulation;
* ``kcookbook int8 kernel``: ``kcookbook.kernels.int8_products`` (a C++ loop that widens each int8
  weight in a register, on XLA's threads), on ``W (k, m)`` as Keras's int8 ``Dense`` stores it and
  on ``Wᵀ (m, k)`` as a tied embedding table stores it.

``GB/s`` is the weight bytes the kernel must read (``k·m`` × bytes per weight) per second; a kernel
at the memory-bandwidth floor reads int8 four times faster than float32. ``--torch`` adds torch's
float32 ``linear`` and its CPU int8 weight-only kernel ``torch._weight_int8pack_mm`` on the same
shapes, for comparison (torch threads: ``--torch-threads``).
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")  # kcookbook's int8 kernel runs on jax's CPU backend

SHAPES = {  # SmolLM2-135M, per token: 30 layers of each projection, plus the tied LM head once
    "attention q/o (576 x 576)": (576, 576),
    "MLP gate/up (576 x 1536)": (576, 1536),
    "MLP down (1536 x 576)": (1536, 576),
    "LM head (576 x 49152)": (576, 49152),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--copies", type=int, default=30, help="weight copies per layer matrix")
    parser.add_argument("--torch", action="store_true", help="add torch's float32 and int8 kernels")
    parser.add_argument("--torch-threads", type=int, default=None)
    return parser.parse_args(argv)


def jax_kernels(k, m, rng):
    import jax
    import jax.numpy as jnp

    from kcookbook.kernels.int8_products import int8_product

    x = jnp.asarray(rng.standard_normal((1, k)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, m)) * 0.05, jnp.float32)
    scale = jnp.max(jnp.abs(w), axis=0) / 127.0
    w_int8 = jnp.round(w / scale).astype(jnp.int8)
    w_int8_t = jnp.asarray(w_int8.T)  # (m, k): each output's weights contiguous
    x_int8 = jnp.round(x / (jnp.max(jnp.abs(x)) / 127.0)).astype(jnp.int8)
    w_bf16 = w.astype(jnp.bfloat16)

    def int8_dot(a, b):
        return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32)

    def bf16_dot(a, b):
        return jax.lax.dot_general(a.astype(jnp.bfloat16), b, (((1,), (0,)), ((), ())),
                                   preferred_element_type=jnp.float32)

    return {  # name: (compiled function, arguments, bytes per weight)
        "float32 dot": (jax.jit(lambda a, b: a @ b), (x, w), 4),
        "int8 weight-only, dequantise + dot": (
            jax.jit(lambda a, b, s: (a @ b.astype(jnp.float32)) * s), (x, w_int8, scale), 1),
        "int8 weight-only, fused reduce": (
            jax.jit(lambda a, bt, s: jnp.sum(a * bt.astype(jnp.float32), axis=-1)[None] * s),
            (x, w_int8_t, scale), 1),
        "int8 x int8 -> int32 dot": (jax.jit(int8_dot), (x_int8, w_int8), 1),
        "bfloat16 dot": (jax.jit(bf16_dot), (x, w_bf16), 2),
        "kcookbook int8 kernel, W (k, m)": (
            jax.jit(lambda a, b, s: int8_product(a, b, "columns") * s), (x, w_int8, scale), 1),
        "kcookbook int8 kernel, Wᵀ (m, k)": (
            jax.jit(lambda a, bt, s: int8_product(a, bt, "rows") * s), (x, w_int8_t, scale), 1),
    }


def torch_kernels(k, m, rng):
    import torch

    x = torch.from_numpy(rng.standard_normal((1, k)).astype("float32"))
    w = torch.from_numpy((rng.standard_normal((m, k)) * 0.05).astype("float32"))  # (out, in)
    scale = w.abs().amax(dim=1) / 127.0
    w_int8 = torch.round(w / scale[:, None]).to(torch.int8)
    return {
        "torch float32 linear": (torch.nn.functional.linear, (x, w), 4),
        "torch int8 weight-only (_weight_int8pack_mm)": (torch._weight_int8pack_mm, (x, w_int8, scale), 1),
    }


def block(result):
    if hasattr(result, "block_until_ready"):
        result.block_until_ready()
    return result


def main(argv=None):
    import numpy as np

    args = parse_args(argv)
    rng = np.random.default_rng(0)
    if args.torch and args.torch_threads:
        import torch
        torch.set_num_threads(args.torch_threads)
    print("| matrix | kernel | ms per call | weight GB/s | vs float32 |")
    print("|---|---|---:|---:|---:|")
    for label, (k, m) in SHAPES.items():
        copies = 1 if m > 10_000 else args.copies
        kernels = {}
        for _ in range(copies):  # name -> (function, [arguments of each copy], bytes per weight)
            made = jax_kernels(k, m, rng)
            if args.torch:
                made.update(torch_kernels(k, m, rng))
            for name, (function, arguments, width) in made.items():
                kernels.setdefault(name, (function, [], width))[1].append(arguments)
        times = {name: [] for name in kernels}
        for function, copies_arguments, _ in kernels.values():
            block(function(*copies_arguments[0]))  # compile
        for _ in range(args.rounds):
            for name, (function, copies_arguments, _) in kernels.items():
                for call in range(args.calls):
                    arguments = copies_arguments[call % len(copies_arguments)]
                    begin = time.perf_counter()
                    block(function(*arguments))
                    times[name].append(time.perf_counter() - begin)
        median = {name: statistics.median(values) for name, values in times.items()}
        for name, (_, _, width) in kernels.items():
            reference = median["torch float32 linear" if name.startswith("torch") else "float32 dot"]
            print(f"| {label} | {name} | {median[name] * 1e3:.3f} | {k * m * width / median[name] / 1e9:.1f} "
                  f"| {reference / median[name]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
