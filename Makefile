# Everything a fresh machine with Python 3.11+ and make needs: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all test-joblib test-cpython bench bench-native bench-busy bench-joblib bench-capacity lint types pytest clean

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pickpool needs Python 3.11+; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,demo,dask]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pickpool demo --quick --plot pickpool-demo.png

# pickpool's auto mode against concurrent.futures, joblib, mpire, pebble and asyncio (~6 min).
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev,demo,bench]'
	@touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python benchmarks/peers.py --markdown bench-peers.md --plot bench-peers.png

# numpy, Pillow and pandas: calls with native thread pools of their own (~2 min).
bench-native: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python benchmarks/native.py --markdown bench-native.md

# auto and advise on a quiet machine and beside two spinning processes (~5 min).
bench-busy: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python benchmarks/busy.py --markdown bench-busy.md

# scikit-learn's n_jobs on loky and on pickpool's joblib backend, call after call (~30 s).
bench-joblib: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python benchmarks/joblib_backend.py --markdown bench-joblib.md

# auto against fixed thread counts on servers with a finite capacity, PostgreSQL, Redis and
# nginx among them where installed (~5 min; ITEMS=3000 for long jobs, ~20 min).
ITEMS ?= 300
bench-capacity: $(STAMP) $(BENCH_STAMP)
	$(BIN)/python benchmarks/capacity.py --items $(ITEMS) --markdown bench-capacity.md

# joblib's own tests of Parallel (those of the installed joblib), with pickpool's backend in
# loky's place; each test that checks what is loky's alone is listed with its reason (~2 min).
test-joblib: $(STAMP)
	cd "$$(mktemp -d)" && PYTHONPATH="$(CURDIR)" "$(CURDIR)/$(BIN)/python" -m pytest \
	  -c "$(CURDIR)/tests/joblib_suite.ini" --rootdir . -q --pyargs joblib.test.test_parallel

# CPython's own concurrent.futures tests (the whole test_concurrent_futures package of Python
# 3.13 and later), with pickpool.Executor in place of the standard executors (~5 min).
test-cpython: $(STAMP)
	cd "$$(mktemp -d)" && PYTHONPATH="$(CURDIR)" "$(CURDIR)/$(BIN)/python" -m pytest \
	  -c "$(CURDIR)/tests/cpython_suite.ini" --rootdir . -q --pyargs test.test_concurrent_futures

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest

test: lint types pytest test-joblib

# The whole of `make test` on each Python present, in a venv of its own: pyenv's newest 3.X,
# else a python3.X on PATH that runs (a pyenv shim may not).
PYTHONS ?= 3.11 3.12 3.13
test-all:
	@for v in $(PYTHONS); do \
	  py=""; \
	  for c in $$(command -v python$$v) $$(ls -d $$HOME/.pyenv/versions/$$v*/bin/python$$v 2>/dev/null | sort -V); do \
	    if $$c -c '' 2>/dev/null; then py=$$c; fi; \
	  done; \
	  if [ -z "$$py" ]; then echo "== Python $$v: not found, skipped"; continue; fi; \
	  echo "== Python $$v: $$py"; \
	  $(MAKE) --no-print-directory test PYTHON=$$py VENV=.venv-$$v || exit 1; \
	  if $$py -c 'import test.test_concurrent_futures.util' 2>/dev/null; then \
	    $(MAKE) --no-print-directory test-cpython PYTHON=$$py VENV=.venv-$$v || exit 1; \
	  fi; \
	done

clean:
	rm -rf $(VENV) .venv-* .pytest_cache .mypy_cache .ruff_cache
