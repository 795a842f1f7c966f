"""int8 weights times a few float32 rows on jax's CPU backend, by a C++ loop compiled on first use.

Decoding a token multiplies one row per sequence by every weight matrix, so a step's time is how
fast the weights are read. XLA's CPU backend has no int8 product that reads them at memory speed
(it converts them in memory first: ``benchmarks/README.md``, "Why int8 cannot reach 1.8×"), so
Keras's ``quantize("int8")`` made batch-1 decoding on jax *slower* than float32. The loop in
``int8_products.cc`` widens each int8 weight in a register and reads it once (an XLA FFI custom
call, multi-threaded on XLA's pool). It runs where it applies — jax, the CPU, float32 rows, at most
``MAX_ROWS`` rows (decoding; prefill and training keep XLA's products) — and the callers fall back
to Keras's own ops everywhere else: on another backend or device, and when no C++ compiler is found
(a warning says so once). ``KCOOKBOOK_INT8_KERNEL=0`` turns it off.

The library is compiled with ``$CXX`` (else ``c++``/``g++``/``clang++``) and ``-march=native`` into
``$KCOOKBOOK_CACHE/kernels`` (default ``~/.cache/kcookbook/kernels``), once per source, jaxlib,
compiler and CPU (about 2 s), written under a temporary name and renamed into place.

    >>> import numpy as np
    >>> rows = np.ones((1, 3), "float32")
    >>> matrix = np.arange(6, dtype="int8").reshape(3, 2)
    >>> sums = int8_product(rows, matrix, "columns")  # None off jax's CPU backend
    >>> sums is None or np.asarray(sums).tolist() == [[6.0, 9.0]]
    True
"""

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import warnings

import keras
from keras import ops

SOURCE = pathlib.Path(__file__).with_name("int8_products.cc")
# The most rows the kernel takes; more (prefill, training) go through XLA's own products. Rows of
# int8 values (Keras's W8A8) stop at fewer: from batch 8, XLA's int8 × int8 product is the faster
# (SmolLM2 at batch 8: 412 tok/s by XLA, 344 by this kernel; weight-only 305 by this kernel, 257 by
# XLA's dequantise-and-multiply: benchmarks/README.md).
MAX_ROWS = 16
MAX_INT8_ROWS = 4
TARGETS = {"columns": "kcookbook_int8_columns", "rows": "kcookbook_int8_rows"}
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC", "-std=c++17", "-w"]
if platform.machine() in ("x86_64", "AMD64"):  # AVX-512 CPUs: whole 512-bit registers (an x86-only flag)
    FLAGS.insert(2, "-mprefer-vector-width=512")
LOADED = {}  # "available": whether the targets are registered with jax (decided once per process)


def int8_product(rows, matrix, layout, max_rows=MAX_ROWS):
    """float32 ``rows`` (r, k) times an int8 ``matrix``, summed in float32: ``rows @ matrix`` for
    ``layout="columns"`` (``matrix`` (k, n), Keras's int8 ``Dense`` kernel) or ``rows @ matrix.T``
    for ``"rows"`` (``matrix`` (n, k), a tied embedding table). None where the kernel does not apply
    (not jax on the CPU, not float32, more than ``max_rows`` rows — ``MAX_INT8_ROWS`` for rows of
    int8 values —, no kernel): the caller then uses Keras's ops."""
    if layout not in TARGETS:
        raise ValueError(f"layout must be one of {sorted(TARGETS)}, not {layout!r}.")
    if keras.config.backend() != "jax" or len(rows.shape) != 2 or not 0 < rows.shape[0] <= max_rows:
        return None
    import jax
    import jax.numpy as jnp

    if (jax.default_backend() != "cpu" or keras.backend.standardize_dtype(rows.dtype) != "float32"
            or keras.backend.standardize_dtype(matrix.dtype) != "int8" or not kernel_available()):
        return None
    columns = matrix.shape[1] if layout == "columns" else matrix.shape[0]
    shape = jax.ShapeDtypeStruct((rows.shape[0], columns), jnp.float32)
    return jax.ffi.ffi_call(TARGETS[layout], shape)(jnp.asarray(rows), jnp.asarray(matrix))


def int8_dense(layer, inputs):
    """An int8 ``keras.layers.Dense``'s output with the kernel's product and Keras's numerics
    (``Dense._int8_call``: rows quantised by the layer's ``inputs_quantizer`` for W8A8, float rows
    for weight-only int8; divided by the scales; then bias and activation), or None where the
    kernel does not apply (LoRA, not float32, and ``int8_product``'s cases)."""
    if layer.quantization_mode != "int8" or layer.lora_enabled or layer.compute_dtype != "float32":
        return None
    rows = ops.reshape(inputs, (-1, inputs.shape[-1]))
    quantizer = getattr(layer, "inputs_quantizer", None)
    scale, max_rows = ops.convert_to_tensor(layer.kernel_scale), MAX_ROWS
    if quantizer is not None:
        if rows.shape[0] > MAX_INT8_ROWS:
            return None
        rows, rows_scale = quantizer(rows, axis=-1)
        rows, scale, max_rows = ops.cast(rows, "float32"), ops.multiply(scale, rows_scale), MAX_INT8_ROWS
    sums = int8_product(rows, ops.convert_to_tensor(layer._kernel), "columns", max_rows)
    if sums is None:
        return None
    x = ops.reshape(ops.divide(sums, scale), tuple(inputs.shape[:-1]) + (sums.shape[-1],))
    if layer.bias is not None:
        x = ops.add(x, layer.bias)
    return layer.activation(x) if layer.activation is not None else x


def kernel_available():
    """Whether the kernel is compiled and registered with jax (tried once per process; a failure
    warns with the compiler's message and leaves Keras's products in place)."""
    if "available" not in LOADED:
        LOADED["available"] = load_kernel()
    return LOADED["available"]


def load_kernel():
    if os.environ.get("KCOOKBOOK_INT8_KERNEL", "1") == "0":
        return False
    import jax

    try:
        library = ctypes.cdll.LoadLibrary(str(compiled_library()))
    except (OSError, subprocess.SubprocessError, AttributeError) as error:  # AttributeError: a jax without jax.ffi
        details = getattr(error, "stderr", None) or str(error)
        warnings.warn(f"kcookbook's int8 kernel for jax's CPU backend could not be built ({details.strip()[-600:]}); "
                      "int8 layers use XLA's products, which decode more slowly than float32 here. Install a C++ "
                      "compiler (e.g. `apt-get install g++`, or set CXX), or set KCOOKBOOK_INT8_KERNEL=0 to "
                      "silence this.", stacklevel=3)
        return False
    for target in TARGETS.values():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform="cpu")
    return True


def compiled_library():
    """The kernel's shared library, compiled into the cache if this source, jaxlib, compiler and
    CPU have none yet. Raises ``OSError`` (no compiler) or ``subprocess.CalledProcessError``."""
    import jax
    import jaxlib

    compiler = os.environ.get("CXX") or next(
        (found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)
    if compiler is None:
        raise OSError("no C++ compiler found (looked for $CXX, c++, g++, clang++)")
    source = SOURCE.read_bytes()
    identity = [jaxlib.__version__, compiler, *FLAGS, platform.machine(), cpu_flags()]
    key = hashlib.sha256(source + "\0".join(identity).encode()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("KCOOKBOOK_CACHE") or pathlib.Path.home() / ".cache" / "kcookbook")
    library = cache / "kernels" / f"int8_products-{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    partial = library.with_name(f"{library.name}.{os.getpid()}.partial")
    try:
        subprocess.run([compiler, *FLAGS, "-I", jax.ffi.include_dir(), str(SOURCE), "-o", str(partial)],
                       check=True, capture_output=True, text=True, timeout=300)
        os.replace(partial, library)  # another process may have written the same file: same content
    finally:
        partial.unlink(missing_ok=True)
    return library


def cpu_flags():
    """The CPU's instruction-set flags (Linux), so that a cache shared between machines does not
    load a library built for another CPU's ``-march=native``."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()
