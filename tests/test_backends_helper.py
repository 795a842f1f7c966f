"""kcookbook.backends: a function run in a child process on another Keras backend, its arrays back
through .npz (never pickle), and errors that name the backend and the fix; time_jit_compile."""

import os

import keras
import numpy as np
import pytest

from kcookbook.backends import (
    BackendRunError,
    function_name,
    predict_preset,
    run_on_backend,
    run_on_backends,
)
from kcookbook.benchmarks import time_jit_compile
from kcookbook.benchmarks.timing import BackendWorkerError

TESTS = os.path.dirname(os.path.abspath(__file__))
OTHER = {"jax": "torch", "tensorflow": "jax", "torch": "tensorflow"}[keras.backend.backend()]



@pytest.fixture(autouse=True)
def worker_importable(monkeypatch):
    """The children import tests/backends_worker.py."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [TESTS, os.environ.get("PYTHONPATH")])))


def test_arrays_round_trip_through_a_child_on_another_backend():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4)).astype("float32")
    result = run_on_backend(OTHER, "backends_worker:double_and_describe", x=x, scale=3.0,
                            words=["a", "bb"])
    assert result["backend"] == OTHER  # the child really ran the other backend
    np.testing.assert_allclose(result["scaled"], 3.0 * x, rtol=1e-6)
    assert result["scaled"].dtype == np.float32 and result["scaled"].shape == (3, 4)
    assert result["words"].tolist() == ["bb", "a"]  # strings travel without pickle


@pytest.mark.backend_independent  # the child's reply, whatever the parent's backend
def test_a_single_array_comes_back_as_an_array():
    out = run_on_backend(OTHER, "backends_worker:ones", n=5)
    assert isinstance(out, np.ndarray) and out.tolist() == [1.0] * 5


def test_run_on_backends_keeps_the_order_and_runs_each():
    results = run_on_backends([OTHER, keras.backend.backend()], "backends_worker:which", parallel=True)
    assert list(results) == [OTHER, keras.backend.backend()]
    assert {b: str(r) for b, r in results.items()} == {b: b for b in results}


@pytest.mark.backend_independent  # the child's reply, whatever the parent's backend
def test_a_failing_child_names_the_backend_the_function_and_its_error():
    with pytest.raises(BackendRunError) as caught:
        run_on_backend(OTHER, "backends_worker:fail", message="the wheels came off")
    text = str(caught.value)
    assert f"failed on the {OTHER} backend" in text
    assert "backends_worker:fail" in text and "Fix:" in text
    assert "the wheels came off" in text  # the child's stderr tail
    assert isinstance(caught.value, BackendWorkerError)


@pytest.mark.backend_independent  # the child's reply, whatever the parent's backend
def test_a_module_the_child_cannot_import_is_named_with_the_fix():
    with pytest.raises(BackendRunError, match=rf"on the {OTHER} backend.*cannot import 'no_such_module_here'"
                                              r": install it, or put its \.py file"):
        run_on_backend(OTHER, "no_such_module_here:f")


@pytest.mark.backend_independent  # the child's reply, whatever the parent's backend
def test_an_object_result_is_refused_not_pickled():
    with pytest.raises(BackendRunError, match="object array"):
        run_on_backend(OTHER, "backends_worker:object_result")


@pytest.mark.backend_independent
def test_functions_a_child_cannot_import_are_refused_before_starting_it():
    def local():
        return 1

    with pytest.raises(ValueError, match="cannot import it"):
        function_name(local)
    with pytest.raises(ValueError, match="cannot import it"):
        function_name(lambda: 1)
    with pytest.raises(ValueError, match="module:function"):
        function_name("no_colon")
    assert function_name(predict_preset) == "kcookbook.backends:predict_preset"
    with pytest.raises(ValueError, match="Unknown backend 'theano'"):
        run_on_backend("theano", predict_preset)
    with pytest.raises(TypeError, match="'bad' is an object array"):
        run_on_backend(OTHER, predict_preset, bad=np.array([object()]))
    with pytest.raises(TypeError, match="NumPy arrays or JSON values"):
        run_on_backend(OTHER, predict_preset, preset=object())


@pytest.fixture
def tiny_classifier_preset(tmp_path, tiny_vocabulary, tiny_bert_config):
    import kcookbook

    keras.utils.set_random_seed(3)
    backbone = kcookbook.backbones.BertBackbone(**tiny_bert_config)
    tokenizer = kcookbook.components.WordPieceTokenizer(tiny_vocabulary)
    preprocessor = kcookbook.tasks.TextClassifierPreprocessor(tokenizer, sequence_length=12)
    classifier = kcookbook.tasks.TextClassifier(backbone, num_classes=3, preprocessor=preprocessor)
    classifier.save_to_preset(str(tmp_path / "tiny"))
    return str(tmp_path / "tiny"), classifier


def test_a_saved_classifier_predicts_the_same_on_another_backend(tiny_classifier_preset, tweets):
    preset, classifier = tiny_classifier_preset
    texts = tweets[:6]
    here = keras.ops.convert_to_numpy(classifier.predict(texts, verbose=0))
    there = run_on_backend(OTHER, predict_preset, preset=preset, inputs=texts)
    assert there.shape == (6, 3) and np.abs(here - here[0]).max() > 1e-4  # not a constant output
    np.testing.assert_allclose(there, here, atol=1e-4)


def test_time_jit_compile_times_both_settings(tiny_classifier_preset, tweets):
    preset, _ = tiny_classifier_preset
    labels = np.arange(8) % 3
    # torch.compile adds tens of seconds of compilation (nlp/16: 36.5 s for MiniLM's first training
    # call): torch times eager only here.
    settings = [False] if keras.backend.backend() == "torch" else [False, True]
    table = time_jit_compile(preset, tweets[:8], labels, batch_size=2, steps=3, jit_compile=settings)
    assert table["jit_compile"].tolist() == settings
    assert table["jit_compile_used"][0] == False  # noqa: E712 (NumPy bool)
    for kind in ("fit", "predict"):
        assert (table[f"{kind}_ms_per_step"] > 0).all()
        assert (table[f"{kind}_first_call_s"] >= table[f"{kind}_compile_s"]).all()
    with pytest.raises(ValueError, match=r"batch_size \* \(steps \+ 1\) = 10"):
        time_jit_compile(preset, tweets[:8], labels, batch_size=2, steps=4)


def test_time_greedy_generation_loads_each_weight_format(tmp_path):
    from kcookbook.benchmarks import WEIGHT_FORMATS, time_greedy_generation
    from test_decoder_hf_parity import save_tiny_hf_model

    save_tiny_hf_model("llama", str(tmp_path))
    ticks = iter(range(1000))  # a clock that advances one second per reading: every call lasts 1 s
    table = time_greedy_generation(str(tmp_path), [[5, 6, 7], [8, 9, 10]], new_tokens=4,
                                   clock=lambda: float(next(ticks)))
    assert table["format"].tolist() == list(WEIGHT_FORMATS)
    np.testing.assert_array_equal(table["tokens_per_second"], 2 * 4 / 1.0)  # 2 rows x 4 tokens in 1 s
    np.testing.assert_array_equal(table["first_call_s"], 1.0)
    megabytes = dict(zip(table["format"], table["weight_megabytes"]))
    assert megabytes["bfloat16"] == pytest.approx(megabytes["float32"] / 2, rel=0.01)
    assert megabytes["int8"] == megabytes["int8 weight-only"] < 0.35 * megabytes["float32"]
    with pytest.raises(ValueError, match="Unknown weight formats.*int4"):
        time_greedy_generation(str(tmp_path), [[5]], new_tokens=1, formats=["int4"])
    with pytest.raises(ValueError, match="new_tokens and repeats must be at least 1"):
        time_greedy_generation(str(tmp_path), [[5]], new_tokens=0)
