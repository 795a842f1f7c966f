"""BERT fit and predict ms/step: kcookbook vs keras_hub on jax, tensorflow and torch, vs transformers.

    .venv/bin/python benchmarks/bert_fit_predict.py                 # all three backends, 3 repeats
    .venv/bin/python benchmarks/bert_fit_predict.py --backends jax --repeats 5 --steps 20

The same configuration and the same token ids for every library: a randomly initialised BERT classifier
(2 classes; no pretrained weights are involved: speed does not depend on the values), AdamW, float32.
Each Keras backend runs in its own subprocess (the backend is fixed at import). Inside one process the
libraries take turns (the order rotates every repeat), so a slow spell on a shared machine hits both;
the table reports the median over repeats. ms/step is kcookbook's ``StepTimer``: start of batch 1 to
end of the last batch, divided by the batches in between (batch 0, with compilation, left out), as
keras-benchmarks does. transformers runs in the torch worker: ``BertForSequenceClassification``
trained with a plain eager loop (torch AdamW), predict under ``torch.no_grad``.

Each library compiles with its own defaults (``jit_compile="auto"`` unless it sets another), since
that is what a user gets; ``--keras-hub-jit`` adds a keras_hub row with ``jit_compile=True``.
"""

import argparse
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", nargs="+", default=["jax", "tensorflow", "torch"])
    p.add_argument("--repeats", type=int, default=3, help="timed fit/predict calls per library")
    p.add_argument("--steps", type=int, default=10, help="timed steps per call (plus batch 0)")
    p.add_argument("--fit-batch", type=int, default=16)
    p.add_argument("--predict-batch", type=int, default=64)
    p.add_argument("--sequence-length", type=int, default=128)
    p.add_argument("--vocabulary-size", type=int, default=30522)
    p.add_argument("--num-layers", type=int, default=4)
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--intermediate-dim", type=int, default=1024)
    p.add_argument("--libraries", nargs="+", default=["kcookbook", "keras_hub", "transformers"])
    p.add_argument("--keras-hub-jit", action="store_true",
                   help="also time keras_hub compiled with jit_compile=True")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------
# Data: the same token ids for everyone
# ----------------------------------------------------------------------------------------------------
def make_data(args, batch_size, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    n = (args.steps + 1) * batch_size
    length = args.sequence_length
    token_ids = rng.integers(1000, args.vocabulary_size, size=(n, length), dtype="int32")
    token_ids[:, 0] = 101  # [CLS]
    real = rng.integers(length // 2, length + 1, size=n)  # real tokens per row, the rest padding
    padding_mask = (np.arange(length)[None, :] < real[:, None]).astype("int32")
    token_ids = np.where(padding_mask == 1, token_ids, 0).astype("int32")
    x = {"token_ids": token_ids, "segment_ids": np.zeros_like(token_ids), "padding_mask": padding_mask}
    y = rng.integers(0, 2, size=n).astype("int32")
    return x, y


# ----------------------------------------------------------------------------------------------------
# Keras worker: kcookbook and keras_hub on one backend
# ----------------------------------------------------------------------------------------------------
def bert_kwargs(args):
    return dict(vocabulary_size=args.vocabulary_size, num_layers=args.num_layers,
                num_heads=args.num_heads, hidden_dim=args.hidden_dim,
                intermediate_dim=args.intermediate_dim, max_sequence_length=512)


def compile_classifier(model, **kwargs):
    import keras

    model.compile(optimizer=keras.optimizers.AdamW(5e-5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")], **kwargs)
    return model


def build_kcookbook(args):
    from kcookbook.backbones import BertBackbone
    from kcookbook.tasks import TextClassifier

    # keras_hub's BERT runs the tanh-approximate GELU; the same here so both do the same work.
    backbone = BertBackbone(**bert_kwargs(args), activation="gelu_approximate")
    return compile_classifier(TextClassifier(backbone, num_classes=2))


def build_keras_hub(args, **compile_kwargs):
    import keras_hub

    backbone = keras_hub.models.BertBackbone(**bert_kwargs(args))
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    return compile_classifier(model, **compile_kwargs)


class KerasRunner:
    def __init__(self, model, timer):
        self.model, self.timer = model, timer

    def fit(self, x, y, batch_size):
        self.model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0,
                       callbacks=[self.timer])
        return self.timer.ms_per_step

    def predict(self, x, batch_size):
        self.model.predict(x, batch_size=batch_size, verbose=0, callbacks=[self.timer])
        return self.timer.ms_per_step


class TransformersRunner:
    """A plain eager torch training loop, timed by the same StepTimer hooks Keras would call."""

    def __init__(self, args, timer):
        import torch
        import transformers

        transformers.logging.set_verbosity_error()
        config = transformers.BertConfig(
            vocab_size=args.vocabulary_size, hidden_size=args.hidden_dim,
            num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
            intermediate_size=args.intermediate_dim, max_position_embeddings=512,
            hidden_act="gelu_new", num_labels=2)
        torch.manual_seed(0)
        self.torch = torch
        self.model = transformers.BertForSequenceClassification(config)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-5)
        self.timer = timer

    def batches(self, x, y, batch_size):
        t = self.torch
        n = len(x["token_ids"])
        for i, start in enumerate(range(0, n, batch_size)):
            s = slice(start, start + batch_size)
            yield i, (t.from_numpy(x["token_ids"][s]).long(), t.from_numpy(x["segment_ids"][s]).long(),
                      t.from_numpy(x["padding_mask"][s]).long(),
                      None if y is None else t.from_numpy(y[s]).long())

    def fit(self, x, y, batch_size):
        self.model.train()
        self.timer.on_train_begin()
        for i, (ids, segments, mask, labels) in self.batches(x, y, batch_size):
            self.timer.on_train_batch_begin(i)
            out = self.model(input_ids=ids, token_type_ids=segments, attention_mask=mask, labels=labels)
            out.loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.timer.on_train_batch_end(i, {"loss": out.loss.detach()})
        self.timer.on_train_end()
        return self.timer.ms_per_step

    def predict(self, x, batch_size):
        self.model.eval()
        self.timer.on_predict_begin()
        with self.torch.no_grad():
            for i, (ids, segments, mask, _) in self.batches(x, None, batch_size):
                self.timer.on_predict_batch_begin(i)
                logits = self.model(input_ids=ids, token_type_ids=segments, attention_mask=mask).logits
                self.timer.on_predict_batch_end(i, {"outputs": logits})
        return self.timer.ms_per_step


def worker(args):
    backend = args.worker
    os.environ["KERAS_BACKEND"] = backend
    sys.path.insert(0, ROOT)
    import keras

    from kcookbook.benchmarks.timing import (
        StepTimer,
        emit_result,
        matmul_parameter_count,
        measure_peak_flops,
        training_flops_per_token,
    )

    keras.utils.set_random_seed(0)
    timer = StepTimer()
    runners = {}
    if "kcookbook" in args.libraries:
        runners["kcookbook"] = KerasRunner(build_kcookbook(args), timer)
    if "keras_hub" in args.libraries:
        runners["keras_hub"] = KerasRunner(build_keras_hub(args), timer)
        if args.keras_hub_jit:
            runners["keras_hub jit"] = KerasRunner(build_keras_hub(args, jit_compile=True), timer)
    if "transformers" in args.libraries and backend == "torch":
        runners["transformers"] = TransformersRunner(args, timer)

    fit_x, fit_y = make_data(args, args.fit_batch, seed=1)
    predict_x, _ = make_data(args, args.predict_batch, seed=2)
    emit = lambda **kw: emit_result({"backend": backend, **kw})  # noqa: E731

    if "kcookbook" in runners:
        backbone = runners["kcookbook"].model.backbone
        params = matmul_parameter_count(backbone)
        flops = training_flops_per_token(params, args.num_layers, args.hidden_dim, args.sequence_length)
        emit(kind="flops", matmul_parameters=params,
             train_flops_per_step=flops * args.fit_batch * args.sequence_length,
             peak_flops=measure_peak_flops())

    # Warm-up: one untimed call each compiles/traces everything.
    for name, runner in runners.items():
        begin = time.perf_counter()
        runner.fit(fit_x, fit_y, args.fit_batch)
        runner.predict(predict_x, args.predict_batch)
        emit(kind="warmup", library=name, seconds=time.perf_counter() - begin)

    names = list(runners)
    for repeat in range(args.repeats):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        for mode in ("fit", "predict"):
            for name in order:
                runner = runners[name]
                if mode == "fit":
                    ms = runner.fit(fit_x, fit_y, args.fit_batch)
                else:
                    ms = runner.predict(predict_x, args.predict_batch)
                emit(kind="time", library=name, mode=mode, repeat=repeat, ms=ms)


# ----------------------------------------------------------------------------------------------------
# Parent: one subprocess per backend, then the table
# ----------------------------------------------------------------------------------------------------
def run_backend(backend, argv):
    sys.path.insert(0, ROOT)
    from kcookbook.benchmarks.timing import BackendWorkerError, run_backend_worker

    arguments = [os.path.abspath(__file__), *argv, "--worker", backend]
    print(f"== {backend}: {' '.join(arguments)}", flush=True)
    try:
        results = run_backend_worker(arguments, backend)
    except BackendWorkerError as error:
        raise SystemExit(str(error))
    for r in results:
        if r["kind"] == "time":
            print(f"   {r['library']:>14} {r['mode']:>7} repeat {r['repeat']}: {r['ms']:8.1f} ms/step")
        elif r["kind"] == "warmup":
            print(f"   {r['library']:>14} warm-up (compile + one fit and one predict call): "
                  f"{r['seconds']:.1f} s")
    return results


def cpu_description():
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores visible"


def report(results, args):
    times = {}
    flops = {}
    for r in results:
        if r["kind"] == "time":
            times.setdefault((r["library"], r["backend"], r["mode"]), []).append(r["ms"])
        elif r["kind"] == "flops":
            flops[r["backend"]] = r
    by_repeat = {(r["library"], r["backend"], r["mode"], r["repeat"]): r["ms"]
                 for r in results if r["kind"] == "time"}
    median = {key: statistics.median(v) for key, v in times.items()}
    spread = {key: (min(v), max(v)) for key, v in times.items()}

    print()
    print(f"BERT classifier, {args.num_layers} layers, hidden {args.hidden_dim}, {args.num_heads} heads, "
          f"intermediate {args.intermediate_dim}, vocabulary {args.vocabulary_size}, "
          f"sequence {args.sequence_length}; fit batch {args.fit_batch} (AdamW), predict batch "
          f"{args.predict_batch}; float32; random weights.")
    print(f"Machine: {cpu_description()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. "
          "Shared machine: other processes compete for the cores, so numbers drift between runs; "
          "compare within one run.")
    print(f"ms/step, median of {args.repeats} calls of {args.steps} timed steps (min–max in brackets)\n")
    header = f"{'library':<14} {'backend':<11} {'fit ms/step':>22} {'predict ms/step':>22}"
    print(header)
    print("-" * len(header))
    libraries = sorted({k[0] for k in median}, key=lambda n: (n != "kcookbook", n))
    for lib in libraries:
        for backend in args.backends:
            if (lib, backend, "fit") not in median:
                continue
            cells = []
            for mode in ("fit", "predict"):
                lo, hi = spread[(lib, backend, mode)]
                cells.append(f"{median[(lib, backend, mode)]:8.1f} [{lo:6.1f}–{hi:6.1f}]")
            label = "torch eager" if lib == "transformers" else backend
            print(f"{lib:<14} {label:<11} {cells[0]:>22} {cells[1]:>22}")

    print("\nRatios (median step times; < 1 means kcookbook is faster; 'paired' is the median of the "
          "per-repeat ratios, each of two calls made back to back, which cancels slow spells better)")
    for backend in args.backends:
        for other, label in (("keras_hub", "keras_hub"), ("keras_hub jit", "keras_hub jit_compile=True"),
                             ("transformers", "transformers torch eager")):
            row = []
            for mode in ("fit", "predict"):
                a = median.get(("kcookbook", backend, mode))
                b = median.get((other, "torch" if other == "transformers" else backend, mode))
                if a is None or b is None:
                    break
                paired = [by_repeat[("kcookbook", backend, mode, i)] /
                          by_repeat[(other, backend, mode, i)] for i in range(args.repeats)
                          if ("kcookbook", backend, mode, i) in by_repeat
                          and (other, backend, mode, i) in by_repeat]
                extra = f" (paired {statistics.median(paired):4.2f})" if paired else ""
                row.append(f"{mode} {a / b:5.2f}{extra}")
            if len(row) == 2:
                note = " (other process: less reliable)" if other == "transformers" and \
                    backend != "torch" else ""
                print(f"  kcookbook {backend:<11} / {label:<27} {'   '.join(row)}{note}")

    if flops:
        print("\nkcookbook fit throughput (training FLOPs = 6·N + 12·L·H·T per token, N without "
              "embedding tables)")
        for backend in args.backends:
            f = flops.get(backend)
            m = median.get(("kcookbook", backend, "fit"))
            if not f or m is None:
                continue
            achieved = f["train_flops_per_step"] / (m / 1000)
            print(f"  {backend:<11} {f['train_flops_per_step'] / 1e9:5.1f} GFLOP/step, "
                  f"{achieved / 1e9:6.1f} GFLOP/s = {100 * achieved / f['peak_flops']:4.1f}% of this "
                  f"backend's 2048³ fp32 matmul ({f['peak_flops'] / 1e9:.0f} GFLOP/s)")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    results = []
    for backend in args.backends:
        results += run_backend(backend, argv)
    report(results, args)


if __name__ == "__main__":
    main()
