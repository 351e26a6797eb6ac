# Two commands on a fresh machine:
#   make demo   set up .venv and run the main job on the embedded default (MiniLM on BBC News, offline)
#   make test   set up .venv and run the test suite
# On a GPU machine install a CUDA build of torch into .venv first (see README); `make` keeps it.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.genbound-installed
OUT    ?= demo-output
# The test suite runs in two processes (CI has 2 cores); each keeps BLAS to one thread.
PYTEST_WORKERS ?= 2

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned to the CPU wheel 2.13.0 unless a torch is already there: an unpinned
	# torch would pull a multi-GB CUDA build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/genbound demo --out $(OUT)

test: $(STAMP)
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) tests

lint: $(STAMP)
	$(VENV)/bin/ruff check genbound analysis tests benchmarks tools
	# the layers, independent siblings and no import cycles of pyproject.toml's [tool.importlinter]
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
