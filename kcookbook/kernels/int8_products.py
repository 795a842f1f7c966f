"""int8 weights times a few float32 rows on a CPU, by a C++ loop compiled on first use (jax, torch).

Decoding a token multiplies one row per sequence by every weight matrix, so a step's time is how
fast the weights are read. XLA's CPU backend has no int8 product that reads them at memory speed
(it converts them in memory first: ``benchmarks/README.md``, "Why int8 cannot reach 1.8×"), so
Keras's ``quantize("int8")`` made batch-1 decoding on jax *slower* than float32. The loop in
``int8_products.cc`` widens each int8 weight in a register and reads it once: on jax an XLA FFI
custom call (on XLA's threads), on torch plain C functions on the tensors' memory (on torch's
OpenMP threads; ``scaled_product_on_torch`` also quantises W8A8's rows and divides by the scales).
It runs where it applies — jax or torch, the CPU, float32 rows, at most ``MAX_ROWS`` rows
(decoding; prefill and training keep the backend's products) — and the callers fall back to Keras's
own ops everywhere else: on TensorFlow, another device, and when no C++ compiler is found (a warning
says so once). ``KCOOKBOOK_INT8_KERNEL=0`` turns it off.

The library is compiled with ``$CXX`` (else ``c++``/``g++``/``clang++``) and ``-march=native`` into
``$KCOOKBOOK_CACHE/kernels`` (default ``~/.cache/kcookbook/kernels``), once per source, compiler, CPU
and (for jax, with XLA's headers) jaxlib, in about 2 s, written under a temporary name and renamed
into place.

    >>> import numpy as np
    >>> rows = np.ones((1, 3), "float32")
    >>> matrix = np.arange(6, dtype="int8").reshape(3, 2)
    >>> sums = int8_product(rows, matrix, "columns")  # None on TensorFlow
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
LOADED = {}  # "jax": whether XLA has the targets; "torch": the C function or None (once per process)


def int8_product(rows, matrix, layout, max_rows=MAX_ROWS):
    """float32 ``rows`` (r, k) times an int8 ``matrix``, summed in float32: ``rows @ matrix`` for
    ``layout="columns"`` (``matrix`` (k, n), Keras's int8 ``Dense`` kernel) or ``rows @ matrix.T``
    for ``"rows"`` (``matrix`` (n, k), a tied embedding table). On jax an XLA custom call (inside
    ``jit`` too); on torch a call on the tensors' memory (no autograd: inference, or inside a custom
    gradient). None where the kernel does not apply (TensorFlow, not the CPU, not float32 × int8,
    more than ``max_rows`` rows — ``MAX_INT8_ROWS`` for rows of int8 values —, no kernel): the caller
    then uses Keras's ops."""
    if layout not in TARGETS:
        raise ValueError(f"layout must be one of {sorted(TARGETS)}, not {layout!r}.")
    if len(rows.shape) != 2 or not 0 < rows.shape[0] <= max_rows:
        return None
    if len(matrix.shape) != 2 or matrix.shape[0 if layout == "columns" else 1] != rows.shape[1]:
        expected = "(k, n)" if layout == "columns" else "(n, k)"
        raise ValueError(f"int8_product: rows {tuple(rows.shape)} and a {layout!r} matrix of shape "
                         f"{tuple(matrix.shape)} do not match: a {layout!r} matrix is {expected} for rows (r, k).")
    if keras.config.backend() == "torch":
        return product_on_torch(rows, matrix, layout)
    if keras.config.backend() != "jax":
        return None
    import jax
    import jax.numpy as jnp

    if (jax.default_backend() != "cpu" or keras.backend.standardize_dtype(rows.dtype) != "float32"
            or keras.backend.standardize_dtype(matrix.dtype) != "int8" or not kernel_available()):
        return None
    columns = matrix.shape[1] if layout == "columns" else matrix.shape[0]
    shape = jax.ShapeDtypeStruct((rows.shape[0], columns), jnp.float32)
    return jax.ffi.ffi_call(TARGETS[layout], shape)(jnp.asarray(rows), jnp.asarray(matrix))


def product_on_torch(rows, matrix, layout):
    """torch: ``int8_product`` on CPU tensors by the library's plain C function, its outputs split
    over ``torch.get_num_threads()`` OpenMP threads (torch's own: one libgomp per process). Like
    torch's own ops, it hangs in a process forked after OpenMP ran unless the child first calls
    ``torch.set_num_threads(1)`` (as torch's ``DataLoader`` workers do): GNU OpenMP's threads do not
    survive a fork."""
    import torch

    if (not isinstance(rows, torch.Tensor) or not isinstance(matrix, torch.Tensor)
            or rows.dtype != torch.float32 or matrix.dtype != torch.int8 or rows.device.type != "cpu"
            or matrix.device.type != "cpu" or (rows.requires_grad and torch.is_grad_enabled())):
        return None
    product = torch_kernel()
    if product is None:
        return None
    k, n = rows.shape[1], matrix.shape[1] if layout == "columns" else matrix.shape[0]  # shapes checked
    rows, matrix = rows.contiguous(), matrix.contiguous()
    sums = torch.empty((rows.shape[0], n), dtype=torch.float32)
    product(rows.data_ptr(), matrix.data_ptr(), sums.data_ptr(), rows.shape[0], k, n,
            0 if layout == "columns" else 1, torch.get_num_threads())
    return sums


def scaled_product_on_torch(rows, kernel, kernel_scale, quantizer_range=None, epsilon=0.0):
    """torch: an int8 ``Dense`` layer's output before its bias for float32 ``rows`` (r, k), its int8
    ``kernel`` (k, n) and ``kernel_scale`` (n,), in one call of the library: ``(rows @ kernel) /
    kernel_scale`` (weight-only), or with ``quantizer_range=(low, high)`` and ``epsilon`` each row
    first quantised as Keras' ``AbsMaxQuantizer`` does and the sums divided by both scales (W8A8).
    None where ``int8_product`` would return None (at most ``MAX_INT8_ROWS`` rows for W8A8)."""
    import torch

    max_rows = MAX_ROWS if quantizer_range is None else MAX_INT8_ROWS
    if (not isinstance(rows, torch.Tensor) or rows.dim() != 2 or not 0 < rows.shape[0] <= max_rows
            or rows.dtype != torch.float32 or kernel.dtype != torch.int8 or kernel_scale.dtype != torch.float32
            or rows.device.type != "cpu" or kernel.device.type != "cpu" or kernel_scale.device.type != "cpu"
            or (rows.requires_grad and torch.is_grad_enabled()) or torch_kernel() is None):
        return None
    (k, n), (low, high) = kernel.shape, quantizer_range or (0, 0)
    if rows.shape[1] != k or tuple(kernel_scale.shape) != (n,):
        raise ValueError(f"scaled_product_on_torch: rows {tuple(rows.shape)}, kernel {tuple(kernel.shape)} and scale "
                         f"{tuple(kernel_scale.shape)} do not match: rows (r, k), kernel (k, n), scale (n,).")
    rows, kernel, kernel_scale = rows.contiguous(), kernel.contiguous(), kernel_scale.contiguous()
    outputs = torch.empty((rows.shape[0], n), dtype=torch.float32)
    LOADED["torch dense"](rows.data_ptr(), kernel.data_ptr(), kernel_scale.data_ptr(), outputs.data_ptr(),
                          rows.shape[0], k, n, torch.get_num_threads(), quantizer_range is not None,
                          low, high, epsilon)
    return outputs


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
    """jax: whether the kernel is compiled and registered with XLA (tried once per process; a failure
    warns with the compiler's message and leaves Keras's products in place)."""
    if "jax" not in LOADED:
        library = load_library(for_xla=True)
        if library is not None:
            import jax

            for target in TARGETS.values():
                jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform="cpu")
        LOADED["jax"] = library is not None
    return LOADED["jax"]


def torch_kernel():
    """torch: the library's ``kcookbook_int8_product`` as a ``ctypes`` function, or None (tried once
    per process, as ``kernel_available``)."""
    if "torch" not in LOADED:
        library = load_library(for_xla=False)
        product = None
        if library is not None:
            product = library.kcookbook_int8_product
            product.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 3 + [ctypes.c_int32] * 2
            product.restype = None
            dense = LOADED["torch dense"] = library.kcookbook_int8_dense
            dense.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int32] * 2 + [ctypes.c_float] * 3
            dense.restype = None
        LOADED["torch"] = product
    return LOADED["torch"]


def load_library(for_xla):
    """The compiled library loaded with ``ctypes``, or None: turned off by ``KCOOKBOOK_INT8_KERNEL=0``,
    or it could not be built (a warning says why and how to fix it)."""
    if os.environ.get("KCOOKBOOK_INT8_KERNEL", "1") == "0":
        return None
    try:
        return ctypes.cdll.LoadLibrary(str(compiled_library(for_xla)))
    except (OSError, subprocess.SubprocessError, AttributeError) as error:  # AttributeError: a jax without jax.ffi
        details = getattr(error, "stderr", None) or str(error)
        warnings.warn(f"kcookbook's int8 kernel could not be built ({details.strip()[-600:]}); int8 layers use "
                      f"{keras.config.backend()}'s own products, which decode more slowly. Install a C++ compiler "
                      "(e.g. `apt-get install g++`, or set CXX), or set KCOOKBOOK_INT8_KERNEL=0 to silence this.",
                      stacklevel=4)
        return None


def compiled_library(for_xla=True):
    """The kernel's shared library — with the XLA FFI targets (``for_xla``, built with jaxlib's
    headers) or the plain C function alone, with OpenMP (torch's threads; without it if the compiler
    has no OpenMP: one thread) — compiled into the cache if this source, compiler, CPU (and jaxlib)
    have none yet. Raises ``OSError`` (no compiler) or ``subprocess.CalledProcessError``."""
    compiler = os.environ.get("CXX") or next(
        (found for name in ("c++", "g++", "clang++") if (found := shutil.which(name))), None)
    if compiler is None:
        raise OSError("no C++ compiler found (looked for $CXX, c++, g++, clang++)")
    if for_xla:
        import jax
        import jaxlib

        return cached_build(compiler, FLAGS + ["-DKCOOKBOOK_XLA_FFI", "-I", jax.ffi.include_dir()],
                            "xla-", jaxlib.__version__)
    try:
        return cached_build(compiler, FLAGS + ["-fopenmp"], "", "")
    except subprocess.CalledProcessError:  # e.g. clang without libomp
        return cached_build(compiler, FLAGS, "", "")


def cached_build(compiler, flags, prefix, version):
    """The library built by ``compiler`` with ``flags``, in the cache under a key of everything
    that changes the build (written under a temporary name, then renamed)."""
    identity = [compiler, *flags, platform.machine(), cpu_flags(), version]
    key = hashlib.sha256(SOURCE.read_bytes() + "\0".join(identity).encode()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("KCOOKBOOK_CACHE") or pathlib.Path.home() / ".cache" / "kcookbook")
    library = cache / "kernels" / f"int8_products-{prefix}{key}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    partial = library.with_name(f"{library.name}.{os.getpid()}.partial")
    try:
        subprocess.run([compiler, *flags, str(SOURCE), "-o", str(partial)],
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
