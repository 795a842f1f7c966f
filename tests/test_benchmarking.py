"""The benchmark harness: StepTimer's arithmetic on a fake clock, time_calls, and the MFU formula."""

import keras
import numpy as np
import pytest

from kcookbook.benchmarks.timing import (
    PEAK_FLOPS,
    StepTimer,
    matmul_parameter_count,
    measure_peak_flops,
    model_flops_utilization,
    time_calls,
    training_flops_per_token,
    weight_bytes,
)


class FakeClock:
    """Returns the given times in order; fails if read more often than expected."""

    def __init__(self, *times):
        self.times = list(times)
        self.reads = 0

    def __call__(self):
        self.reads += 1
        return self.times.pop(0)


def tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    return model


def test_step_timer_hooks_leave_out_batch_zero():
    clock = FakeClock(10.0, 11.0, 12.5, 13.0, 14.0)
    timer = StepTimer(clock=clock)
    timer.on_train_begin()
    for batch in range(5):
        timer.on_train_batch_begin(batch)
        timer.on_train_batch_end(batch, {"loss": 0.0})
    # start of batch 1 at 10.0, end of batch 4 at 14.0: 4 s over 4 steps.
    assert timer.steps_timed == 4
    assert timer.ms_per_step == pytest.approx(1000.0)
    assert clock.reads == 5  # batch 0 never read the clock


def test_step_timer_stop_batch():
    timer = StepTimer(start_batch=2, stop_batch=3, clock=FakeClock(5.0, 5.3, 5.6))
    timer.on_predict_begin()
    for batch in range(6):
        timer.on_predict_batch_begin(batch)
        timer.on_predict_batch_end(batch, {"outputs": np.zeros(2)})
    assert timer.steps_timed == 2
    assert timer.ms_per_step == pytest.approx(300.0)


def test_step_timer_in_fit_and_predict():
    x, y = np.zeros((20, 3), "float32"), np.zeros((20, 2), "float32")
    model = tiny_model()
    # 5 batches of 4: the clock is read at the start of batch 1 and the end of batches 1..4.
    timer = StepTimer(clock=FakeClock(100.0, 100.2, 100.4, 100.7, 101.0))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    assert timer.steps_timed == 4
    assert timer.ms_per_step == pytest.approx(250.0)

    timer.clock = FakeClock(0.0, 0.1, 0.3, 0.6, 1.2)
    model.predict(x, batch_size=4, verbose=0, callbacks=[timer])
    assert timer.steps_timed == 4
    assert timer.ms_per_step == pytest.approx(300.0)


def test_step_timer_counts_steps_per_execution():
    # With steps_per_execution=2 Keras (jax, tensorflow) reports batches as (begin, end) = (0, 1),
    # (2, 3), (4, 5). The first execution is left out; the timed span covers batches 2..5, four steps.
    timer = StepTimer(clock=FakeClock(1.0, 2.0, 3.0))
    timer.on_train_begin()
    for begin, end in ((0, 1), (2, 3), (4, 5)):
        timer.on_train_batch_begin(begin)
        timer.on_train_batch_end(end, {"loss": 0.0})
    assert timer.steps_timed == 4
    assert timer.ms_per_step == pytest.approx(500.0)


def test_step_timer_counts_steps_across_epochs_and_stops_the_clock_between_them():
    x, y = np.zeros((12, 3), "float32"), np.zeros((12, 2), "float32")
    # 2 epochs of 3 batches with a validation pass in between. Epoch 1: start of batch 1 (0.0), ends of
    # batches 1, 2 (1.0, 2.0); epoch 2 (steps 3..5): start 10.0, ends 11.0, 12.0, 13.0. The gap from
    # 2.0 to 10.0 (validation) is left out: 2 s + 3 s over steps 1..5.
    timer = StepTimer(clock=FakeClock(0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 13.0))
    tiny_model().fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False, callbacks=[timer],
                     validation_data=(x, y))
    assert timer.steps_timed == 5
    assert timer.ms_per_step == pytest.approx(1000.0)
    # stop_batch counts across epochs too: steps 1..4 end in epoch 2 (2 s + 3 s over 4 steps), and
    # epoch 3 reads no clock.
    timer = StepTimer(stop_batch=4, clock=FakeClock(0.0, 1.0, 2.0, 10.0, 11.0, 13.0))
    tiny_model().fit(x, y, batch_size=4, epochs=3, verbose=0, shuffle=False, callbacks=[timer])
    assert timer.steps_timed == 4
    assert timer.ms_per_step == pytest.approx(1250.0)


def test_step_timer_single_batch_has_no_measurement():
    timer = StepTimer(clock=FakeClock())
    tiny_model().fit(np.zeros((4, 3)), np.zeros((4, 2)), batch_size=4, verbose=0, callbacks=[timer])
    assert timer.steps_timed == 0 and timer.ms_per_step is None


def test_step_timer_rejects_bad_span():
    with pytest.raises(ValueError, match="start_batch"):
        StepTimer(start_batch=3, stop_batch=1)


def test_time_calls_makes_two_untimed_calls():
    calls = []
    ms, result = time_calls(lambda v: calls.append(v) or len(calls), "x", num_calls=3,
                            clock=FakeClock(7.0, 7.6))
    assert len(calls) == 5  # build, overhead, 3 timed
    assert result == 5
    assert ms == pytest.approx(200.0)
    with pytest.raises(ValueError, match="num_calls"):
        time_calls(lambda: None, num_calls=0)


def bert_matmul_parameters(layers, hidden, intermediate):
    """Parameters of a BERT encoder outside its embedding tables, counted from the architecture."""
    attention = 4 * (hidden * hidden + hidden)  # query, key, value, output projections with biases
    feed_forward = hidden * intermediate + intermediate + intermediate * hidden + hidden
    norms = 2 * 2 * hidden  # two layer norms, gamma and beta
    pooler = hidden * hidden + hidden
    embeddings_norm = 2 * hidden
    return layers * (attention + feed_forward + norms) + pooler + embeddings_norm


def test_training_flops_on_a_known_configuration():
    # 4 layers, hidden 256, intermediate 1024, sequence 128, batch 16: REFERENCE.md's 42.9 GFLOP/step.
    n = bert_matmul_parameters(4, 256, 1024)
    assert n == 3_225_344
    per_token = training_flops_per_token(n, num_layers=4, hidden_dim=256, sequence_length=128)
    assert per_token == 6 * n + 12 * 4 * 256 * 128
    assert per_token * 16 * 128 / 1e9 == pytest.approx(42.9, abs=0.05)
    frozen = training_flops_per_token(n, 4, 256, 128, frozen_weights=True)
    assert per_token - frozen == 2 * n


def test_mfu_reproduces_the_papers_bert_figure():
    # The paper: bert_base fit, batch 32 × 512, Keras 3 TF 214.49 ms/step on an A100 ≈ 28% of TF32.
    n = bert_matmul_parameters(12, 768, 3072)
    tokens_per_second = 32 * 512 / 0.21449
    mfu = model_flops_utilization(training_flops_per_token(n, 12, 768, 512), tokens_per_second,
                                  PEAK_FLOPS["a100_tf32"])
    assert mfu == pytest.approx(0.28, abs=0.01)
    with pytest.raises(ValueError, match="peak_flops"):
        model_flops_utilization(1.0, 1.0, 0)


def test_matmul_parameter_count_leaves_out_embedding_tables():
    from kcookbook.backbones import BertBackbone

    backbone = BertBackbone(vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=8,
                            intermediate_dim=16, max_sequence_length=12)
    assert matmul_parameter_count(backbone) == bert_matmul_parameters(2, 8, 16)
    embeddings = 50 * 8 + 12 * 8 + 2 * 8
    assert backbone.count_params() == bert_matmul_parameters(2, 8, 16) + embeddings


def test_weight_bytes_are_the_stored_arrays_bytes():
    """Against numpy's ``nbytes`` of each stored array: float32, bfloat16 and weight-only int8."""
    from kcookbook.backbones import LlamaBackbone

    def build(dtype="float32"):
        return LlamaBackbone(vocabulary_size=64, num_layers=2, num_heads=2, num_key_value_heads=1,
                             hidden_dim=16, intermediate_dim=32, dtype=dtype)

    def stored_bytes(model):
        return sum(keras.ops.convert_to_numpy(v).nbytes for v in model.weights)

    float32, bfloat16, int8 = build(), build("bfloat16"), build()
    int8.quantize("int8", config=keras.quantizers.Int8QuantizationConfig(activation_quantizer=None))
    assert weight_bytes(float32) == stored_bytes(float32) == 4 * float32.count_params()
    assert weight_bytes(int8) == stored_bytes(int8) < weight_bytes(float32) / 2
    assert {keras.backend.standardize_dtype(v.dtype) for v in int8.weights} >= {"int8", "float32"}
    if keras.config.backend() != "torch":  # torch's bfloat16 tensors have no numpy form
        assert weight_bytes(bfloat16) == stored_bytes(bfloat16)
    assert weight_bytes(bfloat16) == 2 * bfloat16.count_params()  # every weight bfloat16


def test_measure_peak_flops_is_positive():
    assert measure_peak_flops(size=128, num_calls=2) > 0


def test_docstring_examples_run():
    import doctest

    import kcookbook.benchmarks.timing as module

    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(module, "kcookbook.benchmarks.timing", globs=dict(vars(module))):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("old, new", [("kcookbook.benchmarking", "kcookbook.benchmarks.timing"),
                                      ("kcookbook.paper_benchmark", "kcookbook.benchmarks.paper")])
def test_old_module_names_still_work_with_a_deprecation_warning(old, new, monkeypatch):
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=new):
        module = importlib.import_module(old)
    current = importlib.import_module(new)
    names = ["StepTimer", "PEAK_FLOPS"] if new.endswith("timing") else ["run_table", "ROWS", "main"]
    for name in names:
        assert getattr(module, name) is getattr(current, name)


def test_python_m_paper_benchmark_still_runs(monkeypatch, capsys):
    """Recipe nlp/11 (as executed) and old scripts run ``python -m kcookbook.paper_benchmark``."""
    import runpy
    import sys

    monkeypatch.setattr(sys, "argv", ["paper_benchmark", "--help"])
    monkeypatch.delitem(sys.modules, "kcookbook.paper_benchmark", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("kcookbook.paper_benchmark", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--rows" in out and "bert_fit" in out
