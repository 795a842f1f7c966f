"""Measuring speed the way the Keras 3 benchmarks do (keras-benchmarks, arXiv 2405.20247).

Three tools, each usable on its own:

* ``StepTimer``: a Keras callback giving ms/step of ``fit``/``predict``/``evaluate`` from the start of
  batch 1 to the end of the last batch, divided by the batches in between. Batch 0 (tracing and
  compilation) is left out.
* ``time_calls``: ms per call of any callable (e.g. a ``generate``): one build call, one overhead call,
  then timed calls.
* Model FLOPs utilisation: ``training_flops_per_token`` (6·N, or 4·N with frozen weights / LoRA, plus
  the attention term 12·L·H·T), ``model_flops_utilization``, and the peak either from ``PEAK_FLOPS``
  (published figures) or ``measure_peak_flops`` (a large matmul on this device).
* ``time_jit_compile``: fit and predict of one model with ``jit_compile`` off and on, the first
  call (compilation) apart from the step time.
* ``time_greedy_generation``: greedy tokens/s of a causal LM in float32, bfloat16 and int8.
* One process per backend (the backend is fixed at import): a worker prints its measurements with
  ``emit_result``, and ``run_backend_worker`` runs it under a given ``KERAS_BACKEND`` and reads them.

Accelerators run asynchronously: a step "ends" when its results exist, not when Python gets control
back. ``synchronize`` waits for them, and the timers call it at the points they read the clock.

    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile("sgd", "mse")
    >>> timer = StepTimer()
    >>> _ = model.fit(np.zeros((32, 4)), np.zeros((32, 1)), batch_size=4, verbose=0, callbacks=[timer])
    >>> timer.steps_timed, timer.ms_per_step > 0
    (7, True)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np

# Published dense peaks, FLOP/s.
PEAK_FLOPS = {
    "a100_bf16": 312e12,
    "a100_tf32": 156e12,
    "a100_fp32": 19.5e12,
    "h100_sxm_bf16": 989e12,
    "h100_sxm_tf32": 494e12,
}


def synchronize(outputs=None):
    """Wait until the device has computed ``outputs`` (any nest of tensors); returns them.

    JAX dispatches asynchronously (``block_until_ready``); torch on CUDA and TensorFlow on a GPU
    queue kernels on a stream (``torch.cuda.synchronize``, ``tf.test.experimental.sync_devices``).
    On CPU-only torch and TensorFlow, ops have finished when they return.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.block_until_ready(outputs)
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif backend == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            tf.test.experimental.sync_devices()
    return outputs


class StepTimer(keras.callbacks.Callback):
    """ms/step of ``fit``, ``predict`` or ``evaluate``, with the first step (compilation) left out.

    Like keras-benchmarks' callback: the clock is read at the start of batch ``start_batch`` (1) and at
    the end of the last batch (or of ``stop_batch``), and the time is divided by the batches in
    between. With ``steps_per_execution=k`` Keras reports batches k at a time; the first execution is
    left out and the count stays right. The device is synchronised before the end time is read.
    Over several epochs of ``fit``, batches are counted across epochs (epoch 2's first batch follows
    epoch 1's last) and the clock stops between epochs, so validation passes are not counted as steps.

    Args:
        start_batch: first batch inside the timed span.
        stop_batch: last batch inside it (None: the last batch of the call).
        clock: a function returning seconds (``time.perf_counter``; tests pass a fake one).

    After the call, ``ms_per_step`` and ``steps_timed`` hold the result (``ms_per_step`` is None when
    the call had no batch after ``start_batch``). The timer resets at each ``fit``/``predict`` call, so
    one instance can time several calls in a row.
    """

    def __init__(self, start_batch=1, stop_batch=None, clock=time.perf_counter):
        super().__init__()
        if start_batch < 0 or (stop_batch is not None and stop_batch < start_batch):
            raise ValueError(
                f"Need 0 <= start_batch <= stop_batch, got start_batch={start_batch}, "
                f"stop_batch={stop_batch}.")
        self.start_batch = start_batch
        self.stop_batch = stop_batch
        self.clock = clock
        self._fitting = False
        self.reset()

    def reset(self):
        """Forget the last measurement."""
        self.elapsed = 0.0               # seconds inside finished timed segments (one per epoch)
        self._segment_begin = self._segment_end = None
        self.first_batch = self.last_batch = None
        self._epoch_offset = 0           # steps of this fit call's earlier epochs
        self._epoch_steps = 0

    @property
    def steps_timed(self):
        if self.first_batch is None or self.last_batch is None:
            return 0
        return self.last_batch - self.first_batch + 1

    @property
    def ms_per_step(self):
        steps = self.steps_timed
        if not steps:
            return None
        seconds = self.elapsed
        if self._segment_begin is not None and self._segment_end is not None:
            seconds += self._segment_end - self._segment_begin
        return 1000.0 * seconds / steps

    def _batch_begin(self, batch):
        step = self._epoch_offset + batch  # counted across epochs
        if step < self.start_batch or (self.stop_batch is not None and step > self.stop_batch):
            return
        if self._segment_begin is None:
            self._segment_begin = self.clock()
            if self.first_batch is None:
                self.first_batch = step

    def _batch_end(self, batch, logs):
        self._epoch_steps = max(self._epoch_steps, batch + 1)
        if self._segment_begin is None:
            return
        if self.stop_batch is not None and self.last_batch is not None and \
                self.last_batch >= self.stop_batch:
            return
        synchronize(logs)
        self.last_batch = self._epoch_offset + batch
        self._segment_end = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        # The clock stops between epochs: validation and other callbacks' work are not steps.
        if self._segment_begin is not None and self._segment_end is not None:
            self.elapsed += self._segment_end - self._segment_begin
        self._segment_begin = self._segment_end = None
        self._epoch_offset += self._epoch_steps
        self._epoch_steps = 0

    # fit (a validation pass inside fit calls the test hooks too: those are ignored while fitting)
    def on_train_begin(self, logs=None):
        self.reset()
        self._fitting = True

    def on_train_end(self, logs=None):
        self._fitting = False

    def on_train_batch_begin(self, batch, logs=None):
        self._batch_begin(batch)

    def on_train_batch_end(self, batch, logs=None):
        self._batch_end(batch, logs)

    # predict
    def on_predict_begin(self, logs=None):
        self.reset()

    def on_predict_batch_begin(self, batch, logs=None):
        self._batch_begin(batch)

    def on_predict_batch_end(self, batch, logs=None):
        self._batch_end(batch, logs)

    # evaluate
    def on_test_begin(self, logs=None):
        if not self._fitting:
            self.reset()

    def on_test_batch_begin(self, batch, logs=None):
        if not self._fitting:
            self._batch_begin(batch)

    def on_test_batch_end(self, batch, logs=None):
        if not self._fitting:
            self._batch_end(batch, logs)


def time_calls(fn, *args, num_calls=10, clock=time.perf_counter, **kwargs):
    """ms per call of ``fn(*args, **kwargs)``, like keras-benchmarks' generate timing.

    One build call (tracing, compilation), one overhead call (caches, allocator warm-up), then
    ``num_calls`` timed calls; each result is synchronised before the clock is read.

    Returns ``(ms_per_call, last_result)``.

    >>> ms, result = time_calls(lambda n: sum(range(n)), 1000, num_calls=3)
    >>> result, ms > 0
    (499500, True)
    """
    if num_calls < 1:
        raise ValueError(f"num_calls must be at least 1, got {num_calls}.")
    synchronize(fn(*args, **kwargs))  # build
    synchronize(fn(*args, **kwargs))  # overhead
    begin = clock()
    for _ in range(num_calls):
        result = synchronize(fn(*args, **kwargs))
    return 1000.0 * (clock() - begin) / num_calls, result


def time_jit_compile(model, x, y=None, *, jit_compile=(False, True), batch_size=8, steps=3,
                     task="TextClassifier", compile_kwargs=None, clock=time.perf_counter):
    """Time ``fit`` and ``predict`` of one model with each ``jit_compile`` setting, on this backend.

    ``model`` is a preset handle (loaded with ``kcookbook.tasks.<task>.from_preset``) or a function
    returning a fresh model; each setting gets its own fresh model, compiled with
    ``model.compile(jit_compile=setting, **compile_kwargs)``. For each, the first ``fit`` call on one
    batch (tracing and compilation, plus one step) is timed on its own, then ``steps`` steps are timed
    with ``StepTimer`` (``steps + 1`` batches: the first is left out); the same for ``predict``.
    ``compile_s`` is the first call minus one step. What ``jit_compile`` means per backend: jax, XLA
    (False: op-by-op dispatch); tensorflow, XLA (False: a ``tf.function`` graph); torch,
    ``torch.compile`` (False: eager).

    Returns columns as NumPy arrays (``pandas.DataFrame(result)`` is the table; the arrays also
    travel back from ``kcookbook.backends.run_on_backend``): ``jit_compile`` (asked), ``jit_compile_used``
    (what Keras resolved it to), ``fit_first_call_s``, ``fit_compile_s``, ``fit_ms_per_step``,
    ``predict_first_call_s``, ``predict_compile_s``, ``predict_ms_per_step``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    needed = batch_size * (steps + 1)
    if len(x) < needed:
        raise ValueError(f"x holds {len(x)} examples; batch_size={batch_size} and steps={steps} need "
                         f"batch_size * (steps + 1) = {needed}.")
    if isinstance(model, str):
        from kcookbook import tasks  # benchmarks sit above the model code

        preset, model = model, lambda: getattr(tasks, task).from_preset(preset)
    columns = {}
    for setting in jit_compile:
        net = model()
        net.compile(jit_compile=setting, **(compile_kwargs or {}))
        row = {"jit_compile": setting, "jit_compile_used": bool(net.jit_compile)}
        for kind in ("fit", "predict"):
            call = net.fit if kind == "fit" else net.predict
            data = (x[:batch_size],) + ((y[:batch_size],) if kind == "fit" and y is not None else ())
            begin = clock()
            synchronize(call(*data, batch_size=batch_size, verbose=0))
            first = clock() - begin
            timer = StepTimer(clock=clock)
            data = (x[:needed],) + ((y[:needed],) if kind == "fit" and y is not None else ())
            call(*data, batch_size=batch_size, verbose=0, callbacks=[timer])
            row.update({f"{kind}_first_call_s": first, f"{kind}_ms_per_step": timer.ms_per_step,
                        f"{kind}_compile_s": max(first - timer.ms_per_step / 1000.0, 0.0)})
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    return {key: np.asarray(values) for key, values in columns.items()}


# Weight formats ``time_greedy_generation`` loads a causal LM in: name → how (JSON-friendly names, so
# the choice travels to another backend's process with ``kcookbook.backends.run_on_backend``).
WEIGHT_FORMATS = {
    "float32": {},
    "bfloat16": {"dtype": "bfloat16"},
    "int8": {"quantize": "int8"},  # Keras's default: int8 weights and per-token int8 activations
    "int8 weight-only": {"quantize": "int8", "activation_quantizer": None},
}


def time_greedy_generation(preset, prompt_ids, new_tokens, *, formats=tuple(WEIGHT_FORMATS), repeats=1,
                           clock=time.perf_counter):
    """Greedy tokens/s of one ``CausalLM`` preset in several weight formats (``WEIGHT_FORMATS``),
    on this backend. Each format gets a fresh model (``from_preset``, with ``dtype="bfloat16"`` or
    then ``backbone.quantize("int8", ...)``); one ``generate`` call on ``prompt_ids`` (rows of
    equal length) compiles for the shape, then ``repeats`` timed calls generate ``new_tokens``
    tokens per row with no stop token. Returns arrays: ``format``, ``tokens_per_second`` (new tokens
    of every row per second, the median call), ``first_call_s`` and ``weight_megabytes``."""
    unknown = [name for name in formats if name not in WEIGHT_FORMATS]
    if unknown:
        raise ValueError(f"Unknown weight formats {unknown}; choose from {list(WEIGHT_FORMATS)}.")
    if new_tokens < 1 or repeats < 1:
        raise ValueError(f"new_tokens and repeats must be at least 1, got {new_tokens} and {repeats}.")
    from kcookbook.tasks import CausalLM  # benchmarks sit above the model code

    prompt_ids = np.asarray(prompt_ids, dtype="int32")
    max_length = prompt_ids.shape[1] + new_tokens
    columns = {"format": [], "tokens_per_second": [], "first_call_s": [], "weight_megabytes": []}
    for name in formats:
        how = WEIGHT_FORMATS[name]
        lm = CausalLM.from_preset(preset, **({"dtype": how["dtype"]} if "dtype" in how else {}))
        if "quantize" in how:
            config = (keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)
                      if "activation_quantizer" in how else None)
            lm.backbone.quantize(how["quantize"], config=config)
        begin = clock()
        lm.generate(prompt_ids, max_length=max_length, stop_token_ids=None)
        first = clock() - begin
        seconds = []
        for _ in range(repeats):
            begin = clock()
            lm.generate(prompt_ids, max_length=max_length, stop_token_ids=None)
            seconds.append(clock() - begin)
        columns["format"].append(name)
        columns["tokens_per_second"].append(prompt_ids.shape[0] * new_tokens / float(np.median(seconds)))
        columns["first_call_s"].append(first)
        columns["weight_megabytes"].append(weight_bytes(lm) / 1e6)
        del lm
    return {key: np.asarray(values) for key, values in columns.items()}


def training_flops_per_token(num_parameters, num_layers, hidden_dim, sequence_length,
                             frozen_weights=False):
    """Training FLOPs per token: 6·N (4·N when the weights are frozen, e.g. LoRA) + 12·L·H·T.

    N counts the parameters that take part in matmuls (leave embedding lookups out:
    ``matmul_parameter_count``). A forward pass costs 2·N per token, the backward pass 4·N (gradients
    for the activations and for the weights); with frozen weights the weight gradients are skipped,
    4·N in all. Attention scores and their weighted sum add 2·2·T·H per layer forward, three times
    that with the backward pass: 12·L·H·T.
    """
    weights = (4 if frozen_weights else 6) * num_parameters
    return weights + 12 * num_layers * hidden_dim * sequence_length


def inference_flops_per_token(num_parameters, num_layers, hidden_dim, sequence_length):
    """Forward-pass FLOPs per token: 2·N + 4·L·H·T (a third of training's)."""
    return 2 * num_parameters + 4 * num_layers * hidden_dim * sequence_length


def model_flops_utilization(flops_per_token, tokens_per_second, peak_flops):
    """Fraction of the device's peak that the model's own FLOPs use (0..1)."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}.")
    return flops_per_token * tokens_per_second / peak_flops


def matmul_parameter_count(model):
    """Parameters of ``model`` outside embedding tables (lookups are not matmuls)."""
    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if list(layer._flatten_layers(include_self=False, recursive=False)):
            continue  # count leaf layers only
        if type(layer).__name__.endswith("Embedding"):
            continue
        total += sum(int(keras.ops.size(w)) for w in layer.weights)
    return total


def weight_bytes(model):
    """Bytes of ``model``'s weights as it stores them (float32 4 per value, bfloat16 2, int8 1; an
    int8 model's float scales included): what batch-1 generation reads for every token."""
    total = 0
    for variable in model.weights:
        dtype = keras.backend.standardize_dtype(variable.dtype)
        bits = 8 if dtype == "bool" else int(re.search(r"\d+", dtype).group())
        total += int(np.prod(variable.shape)) * bits // 8
    return total


def measure_peak_flops(size=2048, dtype="float32", num_calls=5):
    """FLOP/s of a ``size``³ matmul on the current backend's default device (a practical peak)."""
    a = keras.random.normal((size, size), dtype=dtype, seed=0)
    b = keras.random.normal((size, size), dtype=dtype, seed=1)
    ms, _ = time_calls(keras.ops.matmul, a, b, num_calls=num_calls)
    return 2 * size ** 3 / (ms / 1000.0)


# ----------------------------------------------------------------------------------------------------
# One process per backend
# ----------------------------------------------------------------------------------------------------
RESULT_PREFIX = "RESULT "


def emit_result(record):
    """Print ``record`` (a JSON-able dict) as one ``RESULT {...}`` line for ``run_backend_worker``."""
    print(RESULT_PREFIX + json.dumps(record), flush=True)


def worker_environment(env=None, **extra):
    """The environment of a worker process: ``env`` (default: this process's) with this checkout of
    kcookbook first on ``PYTHONPATH`` (so the child imports the same code), plus ``extra``."""
    env = dict(os.environ if env is None else env)
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class BackendWorkerError(RuntimeError):
    """A worker process exited with an error; the message ends with its stderr."""


def run_backend_worker(arguments, backend, on_result=None, env=None):
    """Run ``python *arguments`` with ``KERAS_BACKEND=backend``; return the records it emitted.

    ``arguments`` follow the interpreter (a script path or ``-m module``, then flags). Each
    ``emit_result`` line of the worker's stdout becomes a dict, passed to ``on_result`` as it
    arrives (to show progress) and returned in order. Other output is ignored; stderr goes to a
    temporary file and its last lines are in the error raised when the worker fails.
    """
    env = dict(os.environ if env is None else env, KERAS_BACKEND=backend)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    records = []
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen([sys.executable, *arguments], stdout=subprocess.PIPE, stderr=stderr,
                                text=True, env=env)
        try:
            for line in proc.stdout:
                if line.startswith(RESULT_PREFIX):
                    record = json.loads(line[len(RESULT_PREFIX):])
                    records.append(record)
                    if on_result is not None:
                        on_result(record)
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code:
            stderr.seek(0)
            tail = stderr.read()[-4000:]
            raise BackendWorkerError(f"The {backend} worker ({' '.join(arguments)}) exited with code "
                                     f"{code}. Its stderr ends:\n{tail}")
    return records
