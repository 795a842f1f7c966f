"""kcookbook's int8 kernel (``kcookbook/kernels/int8_products.cc``: an XLA custom call on jax, a C
function on torch), checked against float64 numpy products and against Keras's own int8 layers; on
TensorFlow it must step aside."""

import ctypes
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kcookbook.components.torch_speedups import INT8_KERNEL_CALLS, KERAS_CALLS, int8_dense_on_torch, layer_calls
from kcookbook.kernels import int8_products
from kcookbook.tasks import CausalLM

from test_decoder_hf_parity import VOCAB, save_tiny_hf_model

BACKEND = keras.config.backend()
jax_only = pytest.mark.skipif(BACKEND != "jax", reason="the XLA custom call: jax only")
with_kernel = pytest.mark.skipif(BACKEND == "tensorflow", reason="jax and torch only (test_steps_aside_...)")
WEIGHT_ONLY = keras.quantizers.Int8QuantizationConfig(activation_quantizer=None)


def tensor(array):
    return keras.ops.convert_to_tensor(array)


@with_kernel
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 16])
def test_products_match_float64_in_both_layouts(rows):
    rng = np.random.default_rng(rows)
    k, n = 577, 1000  # neither a multiple of the column tiles nor of a vector's width
    x = rng.standard_normal((rows, k)).astype("float32")
    w = rng.integers(-128, 128, (k, n), dtype=np.int8)
    expected = x.astype("float64") @ w.astype("float64")
    for layout, matrix in (("columns", w), ("rows", np.ascontiguousarray(w.T))):
        sums = int8_products.int8_product(tensor(x), tensor(matrix), layout)
        assert sums is not None, layout
        sums = keras.ops.convert_to_numpy(sums)
        assert sums.shape == (rows, n) and sums.dtype == np.float32
        np.testing.assert_allclose(sums, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@with_kernel
def test_int8_rows_sum_exactly_below_two_to_the_24():
    """Keras's W8A8 sums int8 × int8 exactly in int32; the kernel's float32 sums must equal them."""
    rng = np.random.default_rng(7)
    x = rng.integers(-127, 128, (4, 1000)).astype("float32")  # |sum| ≤ 1000 · 127 · 128 < 2^24
    w = rng.integers(-128, 128, (1000, 300), dtype=np.int8)
    exact = x.astype(np.int64) @ w.astype(np.int64)
    for layout, matrix in (("columns", w), ("rows", np.ascontiguousarray(w.T))):
        sums = int8_products.int8_product(tensor(x), tensor(matrix), layout, 4)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(sums), exact)


def test_steps_aside_where_it_does_not_apply():
    x, w = np.ones((1, 4), "float32"), np.ones((4, 2), "int8")
    with pytest.raises(ValueError, match="layout must be one of"):
        int8_products.int8_product(x, w, "diagonal")
    assert (layer_calls() is INT8_KERNEL_CALLS) == (BACKEND == "jax")  # torch: int8_dense_on_torch
    if BACKEND == "tensorflow":
        assert int8_products.int8_product(tensor(x), tensor(w), "columns") is None
        return
    assert int8_products.int8_product(tensor(x), tensor(w), "columns") is not None
    assert int8_products.int8_product(tensor(np.ones((17, 4), "float32")), tensor(w), "columns") is None  # prefill
    assert int8_products.int8_product(tensor(np.ones((5, 4), "float32")), tensor(w), "columns",
                                      int8_products.MAX_INT8_ROWS) is None
    assert int8_products.int8_product(tensor(x.astype("float16")), tensor(w), "columns") is None
    assert int8_products.int8_product(tensor(x), tensor(w.astype("int32")), "columns") is None


def test_mismatched_shapes_are_refused_naming_both():
    x, w = np.ones((1, 4), "float32"), np.ones((5, 2), "int8")
    with pytest.raises(ValueError, match=r"rows \(1, 4\) and a 'columns' matrix of shape \(5, 2\) do not match"):
        int8_products.int8_product(tensor(x), tensor(w), "columns")
    with pytest.raises(ValueError, match=r"'rows' matrix is \(n, k\)"):
        int8_products.int8_product(tensor(x), tensor(w), "rows")


@with_kernel
@pytest.mark.parametrize("config", [None, WEIGHT_ONLY], ids=["w8a8", "weight_only"])
def test_int8_dense_matches_keras_int8_dense(config, monkeypatch):
    layer = keras.layers.Dense(300, activation="silu")
    layer.build((None, 200))
    layer.quantize("int8", config=config)
    x = np.random.default_rng(1).standard_normal((2, 1, 200)).astype("float32")
    if BACKEND == "jax":
        ours = int8_products.int8_dense(layer, tensor(x))
        float_layer = keras.layers.Dense(300)
        float_layer.build((None, 200))
        assert int8_products.int8_dense(float_layer, tensor(x)) is None
    else:  # torch's int8 Dense in inference loops; count the kernel's calls
        calls = count_torch_kernel_calls(monkeypatch)
        ours = int8_dense_on_torch(layer, tensor(x))
        assert calls == [1]
    assert ours is not None
    expected = keras.ops.convert_to_numpy(layer(x))  # Keras's Dense._int8_call
    assert ours.shape == expected.shape
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), expected, rtol=1e-5, atol=1e-5)
    if BACKEND == "torch" and config is None:  # W8A8: the same quantised rows, exact sums, same divisions
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours), expected)
        many = np.random.default_rng(2).standard_normal((8, 1, 200)).astype("float32")  # torch._int_mm's rows
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(int8_dense_on_torch(layer, tensor(many))),
                                      keras.ops.convert_to_numpy(layer(many)))


def count_torch_kernel_calls(monkeypatch):
    """torch: wrap the kernel's C functions so that each call appends 1 to the returned list."""
    assert int8_products.torch_kernel() is not None
    calls = []

    def counted(function):
        def call(*args):
            calls.append(1)
            return function(*args)
        return call

    for name in ("torch", "torch dense"):
        monkeypatch.setitem(int8_products.LOADED, name, counted(int8_products.LOADED[name]))
    return calls


@with_kernel
@pytest.mark.parametrize("family,config", [("llama", None), ("gemma", WEIGHT_ONLY)],
                         ids=["llama-untied-w8a8", "gemma-tied-weight_only"])
def test_decoding_on_the_kernel_matches_keras_and_uses_it(family, config, tmp_path, monkeypatch):
    save_tiny_hf_model(family, str(tmp_path / "source"))
    on_kernel, on_keras = (CausalLM.from_preset(str(tmp_path / "source")) for _ in range(2))
    for lm in (on_kernel, on_keras):
        lm.backbone.quantize("int8", config=config)
    prompt = np.random.default_rng(4).integers(3, VOCAB, (1, 6)).astype("int32")
    inputs = {"token_ids": prompt, "padding_mask": np.ones_like(prompt)}

    if BACKEND == "jax":
        check_jax_step_uses_the_kernel_and_matches_keras(on_kernel, on_keras, monkeypatch)
        ours = on_kernel.generate(inputs, max_length=16, stop_token_ids=None)
        monkeypatch.setitem(int8_products.LOADED, "jax", False)  # Keras's int8 ops from here
    else:
        calls = count_torch_kernel_calls(monkeypatch)
        ours = on_kernel.generate(inputs, max_length=16, stop_token_ids=None)
        assert len(calls) >= 9 * 9  # 2 blocks × 4 projections + the output layer, 10 new tokens
        monkeypatch.setitem(int8_products.LOADED, "torch", None)  # torch._int_mm / Keras's ops from here
    expected = on_keras.generate(inputs, max_length=16, stop_token_ids=None)
    np.testing.assert_array_equal(ours["token_ids"], expected["token_ids"])


def check_jax_step_uses_the_kernel_and_matches_keras(on_kernel, on_keras, monkeypatch):
    """jax: a decoding step's lowered program calls the kernel (the rows layout exactly when the
    output layer is tied), and its logits equal those of Keras's int8 ops."""
    import jax

    hidden = np.random.default_rng(5).standard_normal((1, on_kernel.backbone.hidden_dim)).astype("float32")
    step = jax.jit(lambda h: on_kernel.backbone.logits(
        on_kernel.backbone.blocks[0](h[:, None], calls=INT8_KERNEL_CALLS)[:, 0], INT8_KERNEL_CALLS))
    lowered = step.lower(hidden).as_text()
    tied = on_kernel.backbone.token_embedding.tie_weights  # the output layer: (vocabulary, hidden) rows
    assert "kcookbook_int8_columns" in lowered and ("kcookbook_int8_rows" in lowered) == tied
    ours = np.asarray(step(hidden))
    with monkeypatch.context() as keras_only:
        keras_only.setitem(int8_products.LOADED, "jax", False)
        reference = jax.jit(lambda h: on_keras.backbone.logits(
            on_keras.backbone.blocks[0](h[:, None], calls=KERAS_CALLS)[:, 0], KERAS_CALLS))
        assert "kcookbook_int8" not in reference.lower(hidden).as_text()
        np.testing.assert_allclose(ours, np.asarray(reference(hidden)), rtol=1e-5, atol=1e-5)


@jax_only
def test_without_a_compiler_it_warns_once_and_keras_computes(tmp_path):
    """A fresh process with no compiler: one warning naming the fix, and the int8 layer still works."""
    script = textwrap.dedent("""
        import warnings
        import keras, numpy as np
        from kcookbook.kernels import int8_products
        layer = keras.layers.Dense(8)
        layer.build((None, 4))
        layer.quantize("int8")
        x = keras.ops.ones((1, 4))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert int8_products.int8_dense(layer, x) is None
            assert int8_products.int8_dense(layer, x) is None
        messages = [str(w.message) for w in caught if "int8 kernel" in str(w.message)]
        assert len(messages) == 1, messages
        assert "C++ compiler" in messages[0] and "KCOOKBOOK_INT8_KERNEL=0" in messages[0], messages[0]
        assert np.isfinite(keras.ops.convert_to_numpy(layer(x))).all()
        print("ok")
    """)
    env = dict(os.environ, KERAS_BACKEND="jax", CXX=str(tmp_path / "no-such-compiler"),
               KCOOKBOOK_CACHE=str(tmp_path / "cache"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


@jax_only
def test_the_library_is_compiled_once_per_cache_and_written_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("KCOOKBOOK_CACHE", str(tmp_path))
    library = int8_products.compiled_library()
    assert library.parent == tmp_path / "kernels" and library.suffix == ".so"
    assert [p.name for p in library.parent.iterdir()] == [library.name]  # no partial file left
    written = library.stat().st_mtime_ns
    assert int8_products.compiled_library() == library and library.stat().st_mtime_ns == written


torch_only = pytest.mark.skipif(BACKEND != "torch", reason="the plain C function: torch only")


@torch_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_torch_products_run_on_torchs_own_openmp_runtime():
    """The library is built with OpenMP and uses the libgomp torch loaded: one OpenMP runtime in the
    process (a second one's threads would compete with torch's for the cores)."""
    import torch

    product = int8_products.torch_kernel()
    assert product is not None
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if os.path.basename(line.split()[-1]).startswith("libgomp.so")}
    assert len(runtimes) == 1, runtimes
    assert hasattr(ctypes.CDLL(str(int8_products.compiled_library(for_xla=False))), "GOMP_parallel")
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 300)).astype("float32"), rng.integers(-128, 128, (300, 5000), dtype=np.int8)
    expected, threads = x.astype("float64") @ w, torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            sums = int8_products.int8_product(torch.from_numpy(x), torch.from_numpy(w), "columns")
            np.testing.assert_allclose(sums.numpy(), expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    finally:
        torch.set_num_threads(threads)


@torch_only
def test_a_compiler_without_openmp_builds_the_one_thread_library(tmp_path, monkeypatch):
    """A compiler that rejects -fopenmp (clang without libomp): the library is built without it."""
    compiler = tmp_path / "c++"
    real = next(shutil.which(name) for name in ("c++", "g++", "clang++") if shutil.which(name))
    compiler.write_text(f'#!/bin/sh\ncase " $* " in *" -fopenmp "*) echo "unsupported: -fopenmp" >&2; exit 1;; esac\n'
                        f'exec {real} "$@"\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setenv("KCOOKBOOK_CACHE", str(tmp_path / "cache"))
    library = ctypes.CDLL(str(int8_products.compiled_library(for_xla=False)))
    assert not hasattr(library, "GOMP_parallel")
    x, w, y = np.ones((1, 3), "float32"), np.arange(6, dtype="int8").reshape(3, 2), np.zeros((1, 2), "float32")
    library.kcookbook_int8_product(*(ctypes.c_void_p(a.ctypes.data) for a in (x, w, y)), ctypes.c_int64(1),
                                   ctypes.c_int64(3), ctypes.c_int64(2), ctypes.c_int32(0), ctypes.c_int32(2))
    assert y.tolist() == [[6.0, 9.0]]


@torch_only
def test_scaled_product_refuses_mismatched_shapes_naming_all_three():
    import torch

    rows, kernel = torch.ones((1, 4)), torch.ones((5, 3), dtype=torch.int8)
    with pytest.raises(ValueError, match=r"rows \(1, 4\), kernel \(5, 3\) and scale \(3,\) do not match"):
        int8_products.scaled_product_on_torch(rows, kernel, torch.ones(3))
    with pytest.raises(ValueError, match=r"scale \(2,\) do not match"):
        int8_products.scaled_product_on_torch(torch.ones((1, 5)), kernel, torch.ones(2))
