"""The paper's benchmark table (arXiv 2405.20247; keras.io "Keras 3 benchmarks"), measured here.

Rows: BERT classifier fit and predict; Gemma-style and Mistral-style LoRA (rank 4) fit and greedy
generate. Columns: kcookbook and keras_hub on the current Keras backend, and (in the torch process)
transformers, torch eager — plus torch.compile at ``scale="paper"``.

Two scales:

* ``"cpu"``: tiny configurations (1 layer, width 64, short sequences, generate to length 20, 5 timed
  steps, one CPU thread per process): the whole table takes a couple of minutes on two CPU cores
  (most of it compilation), so it runs in CI. Tiny models are dominated
  by per-step overhead (Python dispatch, kernel launches), not by matmuls: read it as that.
* ``"paper"``: the paper's architectures, batches and lengths — bert_base_en (fit batch 32 × 512,
  predict batch 256, float32), gemma_7b_en and mistral_7b_en (LoRA rank 4, bfloat16, fit batch
  8 × 128, greedy generate batch 32, max length 50), 100 timed steps. For a GPU. The weights are
  random (speed does not depend on their values, and nothing is downloaded), the architectures those
  presets' configurations.

Method (keras-benchmarks v0.0.5): the same configuration and the same token ids for every library;
AdamW; ms/step from the start of batch 1 to the end of the last batch (batch 0, with compilation,
left out: ``StepTimer``); a generate "step" is one whole ``generate`` call (one build call, one
overhead call, then timed calls: ``time_calls``). Each library compiles with its own defaults
(``jit_compile="auto"``: XLA on JAX, and on TensorFlow when a GPU is present; eager on torch).

A worker measures the cells of one backend and prints one JSON line per cell::

    KERAS_BACKEND=jax python -m kcookbook.benchmarks.paper --scale cpu \\
        --rows bert_fit,gemma_generate --libraries kcookbook,keras_hub

``run_table`` runs one worker per backend and returns a pandas DataFrame:

    >>> table = run_table("cpu", backends=["jax"], rows=["bert_predict"])  # doctest: +SKIP
    >>> table[["row", "column", "ms_per_step", "mfu"]]  # doctest: +SKIP
"""

import argparse
import sys
import time

import numpy as np

from kcookbook.benchmarks.timing import (
    emit_result,
    inference_flops_per_token,
    run_backend_worker,
    training_flops_per_token,
    worker_environment,
)

ROWS = ("bert_fit", "bert_predict", "gemma_fit", "gemma_generate", "mistral_fit", "mistral_generate")
LIBRARIES = ("kcookbook", "keras_hub", "transformers")
BACKENDS = ("jax", "tensorflow", "torch")
LORA_RANK = 4

# ms/step on one A100 40GB, as published (keras.io "Keras 3 benchmarks"; ../shared/REFERENCE.md).
# Generate rows: batch 32. Columns: Keras 3 on each backend, Hugging Face eager and torch.compile'd.
PAPER_A100_MS = {
    "bert_fit": {"tensorflow": 214.49, "jax": 222.37, "torch": 808.68,
                 "transformers eager": 693.37, "transformers compiled": 202.43},
    "bert_predict": {"tensorflow": 466.01, "jax": 418.72, "torch": 1865.98,
                     "transformers eager": 1849.80, "transformers compiled": 733.16},
    "gemma_fit": {"tensorflow": 232.52, "jax": 273.67, "torch": 525.15,
                  "transformers eager": 253.95, "transformers compiled": 211.73},
    "gemma_generate": {"tensorflow": 1134.91, "jax": 1128.21, "torch": 7952.67,
                       "transformers eager": 2745.18, "transformers compiled": 2735.18},
    "mistral_fit": {"tensorflow": 185.92, "jax": 213.22, "torch": 452.12,
                    "transformers eager": 217.56, "transformers compiled": 176.04},
    "mistral_generate": {"tensorflow": 966.06, "jax": 957.25, "torch": 10932.59,
                         "transformers eager": 1618.43, "transformers compiled": 1640.41},
}

# Configurations in kcookbook's argument names; ``intermediate_dim`` is the width of one feed-forward
# branch (keras_hub's Gemma takes twice that and halves it inside).
SCALES = {
    "cpu": {
        "bert": dict(vocabulary_size=1000, num_layers=1, num_heads=2, hidden_dim=64,
                     intermediate_dim=256, max_sequence_length=128),
        "gemma": dict(vocabulary_size=1000, num_layers=1, num_heads=4, num_key_value_heads=4,
                      head_dim=16, hidden_dim=48, intermediate_dim=128, max_sequence_length=128),
        "mistral": dict(vocabulary_size=1000, num_layers=1, num_heads=4, num_key_value_heads=2,
                        hidden_dim=64, intermediate_dim=128, sliding_window=16,
                        max_sequence_length=128),
        "bert_dtype": "float32", "lm_dtype": "float32",
        "bert_length": 64, "lm_length": 32, "batch": {"bert_fit": 8, "bert_predict": 16,
                                                     "lm_fit": 4, "generate": 4},
        "prompt_length": 5, "max_length": 20, "steps": 5, "generate_calls": 2,
        "transformers_compile": False,
        # One thread per process: on a small shared machine (CI) a second thread mostly waits for a
        # core another process holds, and tiny models gain nothing from it.
        "threads": 1,
        "peak_matmul_size": 1024,
    },
    "paper": {
        # bert_base_en (cased), gemma_7b_en, mistral_7b_en
        "bert": dict(vocabulary_size=28996, num_layers=12, num_heads=12, hidden_dim=768,
                     intermediate_dim=3072, max_sequence_length=512),
        "gemma": dict(vocabulary_size=256000, num_layers=28, num_heads=16, num_key_value_heads=16,
                      head_dim=256, hidden_dim=3072, intermediate_dim=24576,
                      max_sequence_length=8192),
        "mistral": dict(vocabulary_size=32000, num_layers=32, num_heads=32, num_key_value_heads=8,
                        hidden_dim=4096, intermediate_dim=14336, sliding_window=4096,
                        max_sequence_length=32768),
        "bert_dtype": "float32", "lm_dtype": "bfloat16",
        "bert_length": 512, "lm_length": 128, "batch": {"bert_fit": 32, "bert_predict": 256,
                                                       "lm_fit": 8, "generate": 32},
        "prompt_length": 5, "max_length": 50, "steps": 100, "generate_calls": 20,
        # torch.compile takes minutes per model on a CPU: only at the paper's scale (a GPU).
        "transformers_compile": True,
        "threads": None,  # the libraries' defaults
        "peak_matmul_size": 8192,
    },
}


def parse_row(row):
    """``"gemma_fit"`` → ``("gemma", "fit")``, with a clear error for an unknown row."""
    if row not in ROWS:
        raise ValueError(f"Unknown row {row!r}; the rows are {', '.join(ROWS)}.")
    family, mode = row.split("_")
    return family, mode


def row_shape(row, scale):
    """(batch, sequence length, tokens per step, dtype) of a row at ``scale``."""
    family, mode = parse_row(row)
    s = SCALES[scale]
    if family == "bert":
        batch, length = s["batch"][row], s["bert_length"]
        return batch, length, batch * length, s["bert_dtype"]
    if mode == "fit":
        batch, length = s["batch"]["lm_fit"], s["lm_length"]
        return batch, length, batch * length, s["lm_dtype"]
    batch, length = s["batch"]["generate"], s["max_length"]
    return batch, length, batch * (length - s["prompt_length"]), s["lm_dtype"]


# ----------------------------------------------------------------------------------------------------
# FLOPs, from the configuration (the same number for every library)
# ----------------------------------------------------------------------------------------------------
def matmul_parameters(family, config):
    """Parameters that take part in matmuls per token (embedding lookups left out).

    BERT classifier: per layer q, k, v, output (4·H²) and the feed-forward (2·H·I), then the pooler
    (H²) and the 2-class head. Llama-style: per layer q and output (2·H·A, A = heads × head_dim),
    k and v (2·H·Akv), the gated feed-forward (3·H·I), then the output layer over the vocabulary
    (V·H, a matmul even when tied to the input embedding). Biases and norms are left out.
    """
    h, i, layers = config["hidden_dim"], config["intermediate_dim"], config["num_layers"]
    if family == "bert":
        return layers * (4 * h * h + 2 * h * i) + h * h + 2 * h
    head_dim = config.get("head_dim") or h // config["num_heads"]
    attention = config["num_heads"] * head_dim
    key_value = config.get("num_key_value_heads", config["num_heads"]) * head_dim
    return layers * (2 * h * attention + 2 * h * key_value + 3 * h * i) + \
        config["vocabulary_size"] * h


def step_flops(row, scale):
    """Model FLOPs of one step of ``row`` at ``scale`` (one generate call for generate rows).

    fit: 6·N + 12·L·A·T per token (4·N with LoRA: the base weights are frozen); predict: 2·N + 4·L·A·T;
    generate: every position of the final length once, forward only, attending on average to half
    of the final length. A is the attention width (heads × head_dim).
    """
    family, mode = parse_row(row)
    config = SCALES[scale][family]
    n = matmul_parameters(family, config)
    layers = config["num_layers"]
    attention = config["num_heads"] * (config.get("head_dim") or
                                       config["hidden_dim"] // config["num_heads"])
    batch, length, _, _ = row_shape(row, scale)
    if mode == "fit":
        per_token = training_flops_per_token(n, layers, attention, length,
                                             frozen_weights=family != "bert")
    elif mode == "predict":
        per_token = inference_flops_per_token(n, layers, attention, length)
    else:
        per_token = inference_flops_per_token(n, layers, attention, length // 2)
    return per_token * batch * length


# ----------------------------------------------------------------------------------------------------
# Data: the same token ids for every library
# ----------------------------------------------------------------------------------------------------
def make_data(row, scale, seed=0):
    """Inputs for ``steps + 1`` batches (batch 0 compiles): ``(x, y)`` for fit/predict, prompts for
    generate."""
    family, mode = parse_row(row)
    s = SCALES[scale]
    vocabulary = s[family]["vocabulary_size"]
    batch, length, _, _ = row_shape(row, scale)
    rng = np.random.default_rng(seed)
    if mode == "generate":
        return rng.integers(2, vocabulary, (batch, s["prompt_length"])).astype("int32"), None
    n = (s["steps"] + 1) * batch
    token_ids = rng.integers(2, vocabulary, (n, length)).astype("int32")
    x = {"token_ids": token_ids, "padding_mask": np.ones_like(token_ids)}
    if family == "bert":
        x["segment_ids"] = np.zeros_like(token_ids)
        return x, rng.integers(0, 2, n).astype("int32")
    return x, np.roll(token_ids, -1, axis=1)  # next-token targets


# ----------------------------------------------------------------------------------------------------
# Keras libraries: kcookbook and keras_hub
# ----------------------------------------------------------------------------------------------------
def build_kcookbook(family, config, dtype):
    from kcookbook import backbones, tasks

    if family == "bert":
        # keras_hub's and transformers' (gelu_new) BERT run the tanh GELU: the same work here.
        backbone = backbones.BertBackbone(**config, activation="gelu_approximate", dtype=dtype)
        return tasks.TextClassifier(backbone, num_classes=2)
    backbone_class = {"gemma": backbones.GemmaBackbone, "mistral": backbones.MistralBackbone}[family]
    return tasks.CausalLM(backbone_class(**config, dtype=dtype))


def build_keras_hub(family, config, dtype):
    import keras_hub

    c = config
    if family == "bert":
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=c["vocabulary_size"], num_layers=c["num_layers"],
            num_heads=c["num_heads"], hidden_dim=c["hidden_dim"],
            intermediate_dim=c["intermediate_dim"], max_sequence_length=c["max_sequence_length"],
            dtype=dtype)
        return keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    if family == "gemma":
        backbone = keras_hub.models.GemmaBackbone(
            vocabulary_size=c["vocabulary_size"], num_layers=c["num_layers"],
            num_query_heads=c["num_heads"], num_key_value_heads=c["num_key_value_heads"],
            hidden_dim=c["hidden_dim"], intermediate_dim=2 * c["intermediate_dim"],
            head_dim=c["head_dim"], dtype=dtype)
        return keras_hub.models.GemmaCausalLM(backbone, preprocessor=None)
    backbone = keras_hub.models.MistralBackbone(
        vocabulary_size=c["vocabulary_size"], num_layers=c["num_layers"],
        num_query_heads=c["num_heads"], num_key_value_heads=c["num_key_value_heads"],
        hidden_dim=c["hidden_dim"], intermediate_dim=c["intermediate_dim"],
        sliding_window=c["sliding_window"], dtype=dtype)
    return keras_hub.models.MistralCausalLM(backbone, preprocessor=None)


def keras_hub_generate(lm, prompt_ids, max_length):
    """Greedy ``generate`` of a keras_hub CausalLM without a preprocessor: it takes prompts already
    right-padded to the final length (``compile(sampler="greedy")`` first)."""
    token_ids = np.zeros((len(prompt_ids), max_length), "int32")
    token_ids[:, :prompt_ids.shape[1]] = prompt_ids
    return lm.generate({"token_ids": token_ids, "padding_mask": token_ids != 0},
                       stop_token_ids=None)


def measure_keras_cell(library, row, scale, timer):
    """(ms per step, steps timed, notes) of one Keras library on the current backend."""
    import keras

    from kcookbook.benchmarks.timing import time_calls

    family, mode = parse_row(row)
    s = SCALES[scale]
    batch, _, _, dtype = row_shape(row, scale)
    keras.utils.set_random_seed(0)
    build = build_kcookbook if library == "kcookbook" else build_keras_hub
    model = build(family, s[family], dtype)
    x, y = make_data(row, scale)
    if mode == "generate":
        if library == "kcookbook":
            def generate():
                return model.generate({"token_ids": x, "padding_mask": np.ones_like(x)},
                                      max_length=s["max_length"], stop_token_ids=None)
        else:
            model.compile(sampler="greedy")

            def generate():
                return keras_hub_generate(model, x, s["max_length"])
        ms, _ = time_calls(generate, num_calls=s["generate_calls"])
        return ms, s["generate_calls"], "greedy, no stop token"
    notes = []
    if family != "bert" and mode == "fit":
        model.backbone.enable_lora(LORA_RANK)
        notes.append(f"LoRA r{LORA_RANK} on " + ("fused q/k/v" if library == "kcookbook"
                                                 else "query, value"))
    compile_kwargs = {} if family == "bert" else {"weighted_metrics": None}
    model.compile(optimizer=keras.optimizers.AdamW(5e-5),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  **compile_kwargs)
    if mode == "fit":
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    else:
        model.predict(x, batch_size=batch, verbose=0, callbacks=[timer])
    notes.append("XLA" if model.jit_compile else "no XLA")
    return timer.ms_per_step, timer.steps_timed, ", ".join(notes)


# ----------------------------------------------------------------------------------------------------
# transformers (torch): eager, and torch.compile'd at the paper's scale
# ----------------------------------------------------------------------------------------------------
def build_transformers(family, config, dtype):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    c = config
    if family == "bert":
        model_class = transformers.BertForSequenceClassification
        hf_config = transformers.BertConfig(
            vocab_size=c["vocabulary_size"], hidden_size=c["hidden_dim"],
            num_hidden_layers=c["num_layers"], num_attention_heads=c["num_heads"],
            intermediate_size=c["intermediate_dim"],
            max_position_embeddings=c["max_sequence_length"], hidden_act="gelu_new", num_labels=2)
    else:
        common = dict(vocab_size=c["vocabulary_size"], hidden_size=c["hidden_dim"],
                      intermediate_size=c["intermediate_dim"], num_hidden_layers=c["num_layers"],
                      num_attention_heads=c["num_heads"],
                      num_key_value_heads=c["num_key_value_heads"],
                      max_position_embeddings=c["max_sequence_length"], pad_token_id=0)
        if family == "gemma":
            model_class = transformers.GemmaForCausalLM
            hf_config = transformers.GemmaConfig(**common, head_dim=c["head_dim"],
                                                 hidden_act="gelu_pytorch_tanh")
        else:
            model_class = transformers.MistralForCausalLM
            hf_config = transformers.MistralConfig(**common, sliding_window=c["sliding_window"])
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = model_class._from_config(hf_config, dtype=getattr(torch, dtype))
    return model, device


def add_lora(model, rank):
    """Freeze ``model`` and add rank-``rank`` LoRA matrices beside every ``q_proj``/``v_proj`` (peft's
    default targets for Llama-style models; peft itself is not a dependency). Returns the new
    trainable parameters."""
    import torch

    class LoRALinear(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base
            self.a = torch.nn.Parameter(torch.randn(rank, base.in_features, dtype=base.weight.dtype,
                                                    device=base.weight.device) / rank)
            self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype,
                                                    device=base.weight.device))

        def forward(self, x):
            return self.base(x) + (x @ self.a.T) @ self.b.T

    model.requires_grad_(False)
    for layer in model.model.layers:
        layer.self_attn.q_proj = LoRALinear(layer.self_attn.q_proj)
        layer.self_attn.v_proj = LoRALinear(layer.self_attn.v_proj)
    return [p for p in model.parameters() if p.requires_grad]


def measure_transformers_cell(row, scale, timer, compiled):
    """(ms per step, steps timed, notes) of transformers on torch, eager or torch.compile'd."""
    import torch

    from kcookbook.benchmarks.timing import time_calls

    family, mode = parse_row(row)
    s = SCALES[scale]
    batch, _, _, dtype = row_shape(row, scale)
    model, device = build_transformers(family, s[family], dtype)
    x, y = make_data(row, scale)
    notes = ["torch.compile" if compiled else "eager"]
    if mode == "generate":
        model.eval()
        prompts = torch.as_tensor(x, dtype=torch.long, device=device)
        if compiled:
            model.generation_config.cache_implementation = "static"
            model.forward = torch.compile(model.forward, mode="reduce-overhead")

        def generate():
            with torch.no_grad():
                return model.generate(prompts, attention_mask=torch.ones_like(prompts),
                                      do_sample=False, max_length=s["max_length"],
                                      min_length=s["max_length"], pad_token_id=0)

        ms, _ = time_calls(generate, num_calls=s["generate_calls"])
        return ms, s["generate_calls"], ", ".join(notes + ["greedy, no stop token"])

    trainable = model.parameters()
    if family != "bert" and mode == "fit":
        trainable = add_lora(model, LORA_RANK)
        notes.append(f"LoRA r{LORA_RANK} on q_proj, v_proj (hand-written, peft's targets)")
    run = torch.compile(model) if compiled else model
    tensors = {k: torch.as_tensor(v, dtype=torch.long, device=device) for k, v in x.items()}
    labels = torch.as_tensor(y, dtype=torch.long, device=device)

    def batch_inputs(i):
        part = slice(i * batch, (i + 1) * batch)
        inputs = {"input_ids": tensors["token_ids"][part],
                  "attention_mask": tensors["padding_mask"][part]}
        if family == "bert":
            inputs["token_type_ids"] = tensors["segment_ids"][part]
        return inputs, labels[part]

    steps = s["steps"] + 1
    if mode == "fit":
        optimizer = torch.optim.AdamW(trainable, lr=5e-5)
        model.train()
        timer.on_train_begin()
        for i in range(steps):
            timer.on_train_batch_begin(i)
            inputs, target = batch_inputs(i)
            logits = run(**inputs).logits
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                     target.reshape(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            timer.on_train_batch_end(i, {"loss": loss.detach()})
        timer.on_train_end()
    else:
        model.eval()
        timer.on_predict_begin()
        with torch.no_grad():
            for i in range(steps):
                timer.on_predict_batch_begin(i)
                logits = run(**batch_inputs(i)[0]).logits
                timer.on_predict_batch_end(i, {"outputs": logits})
    return timer.ms_per_step, timer.steps_timed, ", ".join(notes)


# ----------------------------------------------------------------------------------------------------
# Worker: the cells of one backend
# ----------------------------------------------------------------------------------------------------
def worker(scale, rows, libraries):
    """Measure ``rows`` × ``libraries`` on the current Keras backend; print one JSON line per cell
    (all at the end, with the peak FLOP/s).

    transformers is measured only in the torch process. A cell that fails is reported with
    ``ms_per_step`` None and the error in ``notes`` (the other cells still run).
    """
    import keras

    from kcookbook.benchmarks.timing import StepTimer, measure_peak_flops

    backend = keras.backend.backend()
    columns = [(lib, False) for lib in libraries if lib != "transformers" or backend == "torch"]
    if "transformers" in libraries and backend == "torch" and SCALES[scale]["transformers_compile"]:
        columns.append(("transformers", True))
    dtypes = sorted({row_shape(row, scale)[3] for row in rows})
    peak_size = SCALES[scale]["peak_matmul_size"]
    peaks = {d: measure_peak_flops(size=peak_size, dtype=d, num_calls=3) for d in dtypes}
    cells = []
    for row in rows:
        batch, _, tokens, dtype = row_shape(row, scale)
        for library, compiled in columns:
            timer = StepTimer()
            begin = time.perf_counter()
            try:
                if library == "transformers":
                    ms, steps, notes = measure_transformers_cell(row, scale, timer, compiled)
                else:
                    ms, steps, notes = measure_keras_cell(library, row, scale, timer)
            except Exception as error:  # reported in the table, not hidden
                ms, steps, notes = None, 0, f"failed: {type(error).__name__}: {error}"[:300]
            name = library + (" compiled" if compiled else "")
            cells.append({"row": row, "library": name, "backend": backend, "batch": batch,
                          "dtype": dtype, "ms_per_step": ms, "steps": steps,
                          "flops_per_step": step_flops(row, scale), "tokens_per_step": tokens,
                          "notes": notes, "cell_seconds": time.perf_counter() - begin})
    # The peak is the faster of a matmul timed before and one timed after the cells: on a shared
    # machine one reading can fall in a slow spell.
    for d in dtypes:
        peaks[d] = max(peaks[d], measure_peak_flops(size=peak_size, dtype=d, num_calls=3))
    for cell in cells:
        emit_result(dict(cell, peak_flops=peaks[cell["dtype"]]))


def thread_environment(threads):
    """Environment variables limiting every backend's CPU thread pools to ``threads`` (read at import)."""
    if not threads:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "TF_NUM_INTRAOP_THREADS": str(threads),
            "TF_NUM_INTEROP_THREADS": str(threads),
            "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=false "
                         f"intra_op_parallelism_threads={threads}"}


def column_name(library, backend):
    """Column label of a cell: ``"kcookbook jax"``, ``"transformers torch eager"``…"""
    if library.startswith("transformers"):
        return "transformers torch " + ("compiled" if library.endswith("compiled") else "eager")
    return f"{library} {backend}"


def run_table(scale="cpu", backends=BACKENDS, rows=ROWS, libraries=LIBRARIES, verbose=True):
    """Run one worker process per backend and collect every cell in a pandas DataFrame.

    Columns: row, library, backend, column (a label for tables), batch, dtype, ms_per_step, steps,
    flops_per_step, tokens_per_step, peak_flops (a matmul timed on that backend), mfu (model FLOPs
    per second / peak), notes. With ``verbose`` each cell is printed as it arrives.
    """
    import pandas as pd

    if scale not in SCALES:
        raise ValueError(f"Unknown scale {scale!r}; choose one of {', '.join(SCALES)}.")
    for row in rows:
        parse_row(row)
    unknown = set(libraries) - set(LIBRARIES)
    if unknown:
        raise ValueError(f"Unknown libraries {sorted(unknown)}; choose from {', '.join(LIBRARIES)}.")

    def show(cell):
        if verbose:
            ms = "failed" if cell["ms_per_step"] is None else f"{cell['ms_per_step']:9.1f} ms/step"
            print(f"{cell['backend']:<11} {cell['row']:<17} {cell['library']:<22} {ms}  "
                  f"({cell['notes']})", flush=True)

    env = worker_environment(**thread_environment(SCALES[scale]["threads"]))
    cells = []
    for backend in backends:
        cells += run_backend_worker(
            ["-m", "kcookbook.benchmarks.paper", "--scale", scale, "--rows", ",".join(rows),
             "--libraries", ",".join(libraries)], backend, on_result=show, env=env)
    table = pd.DataFrame(cells)
    table.insert(3, "column", [column_name(lib, b) for lib, b in zip(table.library, table.backend)])
    seconds = table.ms_per_step / 1000.0
    table["mfu"] = table.flops_per_step / seconds / table.peak_flops
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ", ".join(ROWS))
    parser.add_argument("--libraries", default=",".join(LIBRARIES),
                        help="comma-separated: " + ", ".join(LIBRARIES))
    args = parser.parse_args(argv)
    rows = [r for r in args.rows.split(",") if r]
    for row in rows:
        parse_row(row)
    libraries = [lib for lib in args.libraries.split(",") if lib]
    worker(args.scale, rows, libraries)


if __name__ == "__main__":
    sys.exit(main())
