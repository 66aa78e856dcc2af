# One command, one job. Each creates the virtual environment when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned, so that pip takes the CPU wheel on this machine
# instead of resolving a multi-GB CUDA build for the range in pyproject.toml.
TORCH_VERSION ?= 2.13.0
say = @echo "[setup] $(1)"

.PHONY: demo test test-pytorch docs docs-fast docs-screenshots lint bench clean

$(VENV)/.installed: Makefile pyproject.toml setup.py $(wildcard sessionrec/_native/csrc/*)
	$(call say,virtual environment $(VENV) (Python: $(shell $(PYTHON) --version 2>&1)))
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	$(call say,torch==$(TORCH_VERSION))
	@$(PY) -m pip install -q "torch==$(TORCH_VERSION)"
	$(call say,sessionrec and its dependencies; compiling the C kernels (sessionrec/_native/csrc))
	@$(PY) -m pip install -q -e ".[dev]"
	@$(PY) -c "from sessionrec._native import kernels as k; print('[setup] C kernels:', \
	  f'built, {k.threads()} thread(s)' if k.available() else \
	  'not built (no C compiler?): the PyTorch code runs instead, at about a third of the speed')"
	@touch $@

demo: $(VENV)/.installed  ## set up, then fit every model on real data and print a table
	$(PY) examples/quickstart.py

test: $(VENV)/.installed  ## set up, then run the whole test suite (slow tests included)
	$(PY) -m pytest sessionrec tests

# The shared estimator suite and the models' tests again on the pure PyTorch backend (the
# fused C kernels off): the path of a machine without a C compiler, and the reference
# the kernels are held to. CI runs it after `make test`.
test-pytorch: $(VENV)/.installed  ## the shared suite with SESSIONREC_FUSED=0
	SESSIONREC_FUSED=0 $(PY) -m pytest -m "not slow" tests/test_common.py \
	  tests/test_training.py tests/test_gru4rec.py tests/test_hrnn.py tests/test_hrnn_repeats.py \
	  tests/test_prnn.py tests/test_prnn_features.py \
	  tests/test_bprmf.py tests/test_persistence.py tests/test_serving.py tests/test_distributed.py

# The documentation site, from scratch each time: the API pages, and the gallery with every
# example executed. Warnings are errors, so a broken docstring, cross-reference or example
# fails the build. docs-fast (what CI runs) runs each example with --smoke.
SPHINX := $(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html
DOCS_CLEAN := rm -rf docs/_build docs/auto_examples docs/generated docs/sg_execution_times.rst

docs: $(VENV)/.installed  ## build the site into docs/_build/html (examples run in full)
	$(DOCS_CLEAN)
	$(SPHINX)
	@echo "[docs] open docs/_build/html/index.html"

docs-fast: $(VENV)/.installed  ## the same site, each example run with --smoke
	$(DOCS_CLEAN)
	SESSIONREC_DOCS_FAST=1 $(SPHINX)
	@echo "[docs] open docs/_build/html/index.html"

# Headless Chromium photographs of the built site (needs chromium on the PATH).
docs-screenshots: $(VENV)/.installed  ## screenshots of the index, an API and a gallery page
	$(PY) docs/screenshots.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check sessionrec tests examples benchmarks docs

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_evaluation.py
	$(PY) benchmarks/bench_gru4rec.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
	$(DOCS_CLEAN)
