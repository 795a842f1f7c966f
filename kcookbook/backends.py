"""Run a function on another Keras backend, from a process (or notebook) that already holds one.

Keras picks its backend once, at import: a notebook kernel on jax cannot also run tensorflow or torch.
``run_on_backend`` runs a function in a fresh Python process with ``KERAS_BACKEND`` set, and gives
back the arrays it returned:

    >>> logits = run_on_backend("torch", "kcookbook.backends:predict_preset",
    ...                         preset="my_classifier", inputs=["a tweet"])      # doctest: +SKIP
    >>> results = run_on_backends(["tensorflow", "torch"], predict_preset,
    ...                           preset="my_classifier", inputs=["a tweet"])    # doctest: +SKIP

The function is named by ``"module:function"`` or passed as a function defined in an importable
module (the child process imports it: a function typed into a notebook cell cannot be imported, and
is refused with that explanation). Keyword arguments that are NumPy arrays travel to the child in an
``.npz`` file, every other argument as JSON (strings, numbers, lists, dicts). The function returns an
array (or anything ``np.asarray`` takes, a backend tensor included) or a dict of them; they come back
in an ``.npz`` file read with ``allow_pickle=False``: nothing is ever unpickled, so an object array
is refused in the child with the name of the culprit. A child that fails raises ``BackendRunError``,
whose message names the backend, the function, the fix and the end of the child's stderr.

The child is a ``kcookbook.benchmarks.timing`` backend worker (``run_backend_worker``), the same
machinery ``kcookbook.benchmarks.paper`` runs its one-process-per-backend table with.
"""

import importlib
import json
import os
import re
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kcookbook.benchmarks.timing import BackendWorkerError, emit_result, run_backend_worker, worker_environment

__all__ = ["BACKENDS", "BackendRunError", "function_name", "predict_preset", "run_on_backend",
           "run_on_backends"]

BACKENDS = ("jax", "tensorflow", "torch")
CALL_FILE, INPUTS_FILE, OUTPUTS_FILE = "call.json", "inputs.npz", "outputs.npz"
SINGLE = "output"  # the .npz key of a function's result that is not a dict


class BackendRunError(BackendWorkerError):
    """A function run on another backend failed (or returned what cannot travel back)."""


def function_name(function):
    """``"module:qualname"`` of ``function`` (a string is returned as it is, once checked).

    Refuses what a fresh process cannot import: lambdas, functions nested in other functions, and
    functions defined in ``__main__`` (a script or a notebook cell)."""
    if isinstance(function, str):
        module, _, qualname = function.partition(":")
        if not module or not qualname:
            raise ValueError(f"Name the function as 'module:function' (e.g. "
                             f"'kcookbook.backends:predict_preset'), got {function!r}.")
        return function
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not callable(function) or module is None or qualname is None:
        raise TypeError(f"Pass a function or 'module:function', got {function!r}.")
    if module == "__main__" or "<" in qualname:
        raise ValueError(
            f"{qualname} is defined in {module if module == '__main__' else 'another function'}, so a "
            "new process cannot import it. Move it into a .py file next to the notebook (or a package) "
            "and pass it from there, or pass 'module:function'.")
    return f"{module}:{qualname}"


def resolve(name):
    """The function that ``"module:qualname"`` names."""
    module, _, qualname = name.partition(":")
    target = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def run_on_backend(backend, function, *, env=None, **kwargs):
    """Run ``function(**kwargs)`` in a new process with ``KERAS_BACKEND=backend``.

    Returns the function's result as NumPy: one array, or a dict of arrays when it returned a dict.
    ``env`` replaces the child's environment (default: this process's, with this checkout of
    kcookbook importable). Raises ``BackendRunError`` if the child fails.
    """
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    name = function_name(function)
    arrays = {key: value for key, value in kwargs.items() if isinstance(value, np.ndarray)}
    others = {key: value for key, value in kwargs.items() if key not in arrays}
    for key, value in arrays.items():
        if value.dtype.hasobject:
            raise TypeError(f"Argument {key!r} is an object array, which cannot travel without pickle; "
                            "pass a list (JSON) or an array of numbers or strings.")
    try:
        call = json.dumps({"function": name, "kwargs": others, "arrays": sorted(arrays),
                           "backend": backend})
    except TypeError as error:
        raise TypeError(f"The arguments of {name} must be NumPy arrays or JSON values (str, numbers, "
                        f"lists, dicts, None): {error}") from None
    with tempfile.TemporaryDirectory(prefix=f"kcookbook-{backend}-") as folder:
        with open(os.path.join(folder, CALL_FILE), "w") as f:
            f.write(call)
        np.savez(os.path.join(folder, INPUTS_FILE), **arrays)
        try:
            records = run_backend_worker(["-m", "kcookbook.backends", folder], backend,
                                         env=worker_environment(env))
        except BackendWorkerError as error:
            raise BackendRunError(_failure_message(name, backend, str(error))) from None
        if not records:
            raise BackendRunError(_failure_message(name, backend, "The child exited without a result."))
        with np.load(os.path.join(folder, OUTPUTS_FILE), allow_pickle=False) as data:
            outputs = {key: data[key] for key in data.files}
    return outputs[SINGLE] if records[-1]["single"] else outputs


def _failure_message(name, backend, details):
    """What failed, where, and what to do about it; ``details`` (the child's stderr) last."""
    missing = re.search(r"No module named '([^']+)'", details)
    if missing and missing[1].split(".")[0] in ("jax", "jaxlib", "tensorflow", "torch"):
        fix = f"install the {backend} backend in this environment: pip install 'kcookbook[{backend}]'"
    elif missing:
        fix = (f"the child process cannot import {missing[1]!r}: install it, or put its .py file in the "
               "working directory or on PYTHONPATH")
    else:
        fix = (f"run it alone on that backend to debug: KERAS_BACKEND={backend} python -c "
               f"\"from {name.split(':')[0]} import {name.split(':')[1].split('.')[0]}; ...\"")
    return f"{name} failed on the {backend} backend. Fix: {fix}.\n{details}"


def run_on_backends(backends, function, *, parallel=False, env=None, **kwargs):
    """``run_on_backend`` for each backend; returns ``{backend: result}`` in the order given.

    ``parallel=True`` starts every child at once (faster; leave it off when the children time
    something, since they would share the CPU)."""
    backends = list(backends)
    if parallel:
        with ThreadPoolExecutor(len(backends)) as pool:
            futures = {b: pool.submit(run_on_backend, b, function, env=env, **kwargs) for b in backends}
            return {b: future.result() for b, future in futures.items()}
    return {b: run_on_backend(b, function, env=env, **kwargs) for b in backends}


def predict_preset(preset, inputs, task="TextClassifier", batch_size=32):
    """``kcookbook.tasks.<task>.from_preset(preset).predict(inputs)`` as NumPy (for ``run_on_backend``:
    a saved model's outputs on the child's backend)."""
    import keras

    from kcookbook import tasks

    model = getattr(tasks, task).from_preset(preset)
    return keras.ops.convert_to_numpy(model.predict(inputs, batch_size=batch_size, verbose=0))


def _child(folder):
    """The child's side: call the function named in ``folder``'s call file, save what it returns."""
    import keras

    with open(os.path.join(folder, CALL_FILE)) as f:
        call = json.load(f)
    if keras.backend.backend() != call["backend"]:
        raise RuntimeError(f"Asked for the {call['backend']} backend but Keras started on "
                           f"{keras.backend.backend()} (is KERAS_BACKEND overridden?).")
    with np.load(os.path.join(folder, INPUTS_FILE), allow_pickle=False) as data:
        arrays = {key: data[key] for key in call["arrays"]}
    result = resolve(call["function"])(**call["kwargs"], **arrays)
    single = not isinstance(result, dict)
    outputs = {SINGLE: result} if single else result
    converted = {}
    for key, value in outputs.items():
        try:
            value = np.asarray(keras.ops.convert_to_numpy(value) if keras.ops.is_tensor(value) else value)
        except Exception as error:
            raise TypeError(f"{call['function']} returned {key!r}, which is not an array: {error}") from None
        if value.dtype.hasobject:
            raise TypeError(f"{call['function']} returned {key!r} as an object array, which cannot "
                            "travel back without pickle: return numbers or strings.")
        converted[str(key)] = value
    np.savez(os.path.join(folder, OUTPUTS_FILE), **converted)
    emit_result({"single": single, "backend": keras.backend.backend()})


if __name__ == "__main__":
    _child(sys.argv[1])
