"""The paper-table benchmark: its FLOPs against independent counts, its data, its workers."""

import keras
import numpy as np
import pytest

from kcookbook.benchmarks import paper as pb
from kcookbook.benchmarks.timing import (
    PEAK_FLOPS,
    BackendWorkerError,
    emit_result,
    model_flops_utilization,
    run_backend_worker,
)


@pytest.mark.parametrize("family", ["bert", "gemma", "mistral"])
def test_matmul_parameters_match_transformers_linear_weights(family):
    """The analytic count equals the weight matrices of transformers' model of the same config."""
    import torch

    model, _ = pb.build_transformers(family, pb.SCALES["cpu"][family], "float32")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert pb.matmul_parameters(family, pb.SCALES["cpu"][family]) == linear


@pytest.mark.parametrize("row, peak, published_mfu", [
    ("bert_fit", "a100_tf32", 0.28),   # REFERENCE.md: BERT fit K3-TF ≈ 28 % of TF32 peak
    ("gemma_fit", "a100_bf16", 0.49),  # Gemma-7B LoRA fit K3-TF ≈ 49 % of bf16 peak
])
def test_paper_scale_flops_reproduce_the_published_mfu(row, peak, published_mfu):
    batch, length, tokens, _ = pb.row_shape(row, "paper")
    per_token = pb.step_flops(row, "paper") / tokens
    seconds = pb.PAPER_A100_MS[row]["tensorflow"] / 1000.0
    mfu = model_flops_utilization(per_token, tokens / seconds, PEAK_FLOPS[peak])
    assert mfu == pytest.approx(published_mfu, abs=0.015)


def test_paper_scale_shapes_are_the_papers():
    assert pb.row_shape("bert_fit", "paper")[:2] == (32, 512)
    assert pb.row_shape("bert_predict", "paper")[:2] == (256, 512)
    assert pb.row_shape("mistral_fit", "paper") == (8, 128, 1024, "bfloat16")
    assert pb.row_shape("gemma_generate", "paper")[:2] == (32, 50)


def test_data_is_the_same_for_every_call_and_targets_are_next_tokens():
    x, y = pb.make_data("mistral_fit", "cpu")
    x2, y2 = pb.make_data("mistral_fit", "cpu")
    np.testing.assert_array_equal(x["token_ids"], x2["token_ids"])
    batch, length, _, _ = pb.row_shape("mistral_fit", "cpu")
    assert x["token_ids"].shape == ((pb.SCALES["cpu"]["steps"] + 1) * batch, length)
    np.testing.assert_array_equal(y[:, :-1], x["token_ids"][:, 1:])
    prompts, _ = pb.make_data("gemma_generate", "cpu")
    assert prompts.shape == (pb.SCALES["cpu"]["batch"]["generate"], 5)


def test_hand_written_lora_trains_only_the_adapters_and_starts_as_the_base_model():
    import torch

    model, _ = pb.build_transformers("mistral", pb.SCALES["cpu"]["mistral"], "float32")
    ids = torch.as_tensor(pb.make_data("mistral_generate", "cpu")[0], dtype=torch.long)
    with torch.no_grad():
        before = model(ids).logits
    trainable = pb.add_lora(model, 4)
    assert len(trainable) == 2 * 2 * pb.SCALES["cpu"]["mistral"]["num_layers"]  # a, b on q and v
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == \
        sum(p.numel() for p in trainable)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)  # b starts at zero


def test_unknown_row_and_library_are_named():
    with pytest.raises(ValueError, match="bert_fit"):
        pb.parse_row("bert_train")
    with pytest.raises(ValueError, match="transformers"):
        pb.run_table("cpu", backends=[], libraries=["hf"])
    with pytest.raises(ValueError, match="paper"):
        pb.run_table("gpu", backends=[])


def test_run_backend_worker_reads_results_and_reports_failures(capsys):
    emit_result({"x": 1})
    line = capsys.readouterr().out
    seen = []
    code = f"import os; print('noise'); print({line.strip()!r}); print(os.environ['KERAS_BACKEND'])"
    records = run_backend_worker(["-c", code], "jax", on_result=seen.append)
    assert records == seen == [{"x": 1}]
    with pytest.raises(BackendWorkerError, match="ZeroDivisionError"):
        run_backend_worker(["-c", "1 / 0"], "jax")


@pytest.mark.slow
def test_run_table_measures_every_cell_on_this_backend():
    backend = keras.backend.backend()
    table = pb.run_table("cpu", backends=[backend], rows=["bert_predict"], verbose=False)
    expected = {f"kcookbook {backend}", f"keras_hub {backend}"}
    if backend == "torch":
        expected.add("transformers torch eager")
    assert set(table.column) == expected
    assert not table.notes.str.startswith("failed").any(), table.notes.tolist()
    assert (table.ms_per_step > 0).all() and (table.steps == pb.SCALES["cpu"]["steps"]).all()
    assert (table.mfu > 0).all()
