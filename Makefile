# Everything a fresh machine with Python 3.11+ and make needs: `make demo`, `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all test-joblib test-cpython test-pythons bench bench-native bench-busy bench-beyond bench-joblib bench-capacity lint types pytest clean

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

# Pure Python, C that releases the GIL and shared data under serial, threads, processes,
# sub-interpreters and auto: on this venv's Python, then on CPython 3.14 and free-threaded 3.13t
# where `make test-pythons` made their venvs (~2 min each; a venv's pyvenv.cfg, since its python
# links into the root). One table, bench-beyond.md.
bench-beyond: $(STAMP) $(BENCH_STAMP)
	rm -f bench-beyond.md
	$(BIN)/python benchmarks/beyond.py --markdown bench-beyond.md
	@for v in 3.14 3.13t; do \
	  if [ -f .venv-$$v/pyvenv.cfg ] && [ -x "$(IN_ROOT)" ]; then \
	    echo "$(IN_ROOT) .venv-$$v/bin/python benchmarks/beyond.py --markdown bench-beyond.md"; \
	    $(IN_ROOT) .venv-$$v/bin/python benchmarks/beyond.py --markdown bench-beyond.md || exit 1; \
	  else echo "== Python $$v: no .venv-$$v (make test-pythons makes it), skipped"; fi; \
	done

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

# The pytest suite on Pythons Debian 12 lacks: CPython 3.14 and a free-threaded 3.13t (3.14t too
# when tools/more-pythons.sh can get its source), in a Debian testing chroot the script builds
# under PYTHONS_DIR, outside the clone (10-20 min once; later its check takes ~5 s and runs
# quietly, into a log beside the root). Each runs in a venv of its own in the checkout
# (.venv-3.14, .venv-3.13t: the root sees only the current directory), all of them even when
# one fails, then a line each (~15 min: each suite 5-7 min, a venv's first install under one).
# Needs root (chroot, mount namespaces). PY_ROOT=3.13t runs only that one; PYTEST_ARGS narrows
# the suite.
PYTHONS_DIR ?= $(HOME)/.cache/pickpool-pythons
IN_ROOT = $(PYTHONS_DIR)/bin/in-root
PY_ROOT ?=
PYTEST_ARGS ?=
test-pythons:
ifneq ($(shell id -u),0)
	@echo "== test-pythons: skipped: the suite runs in a chroot, which needs root (every run):" >&2
	@echo "   sudo make test-pythons   (the first run builds the Pythons in $(PYTHONS_DIR), 10-20 min)" >&2
else
	@if [ -x "$(IN_ROOT)" ]; then \
	  echo "tools/more-pythons.sh $(PYTHONS_DIR) > $(PYTHONS_DIR)/more-pythons.log"; \
	  tools/more-pythons.sh "$(PYTHONS_DIR)" > "$(PYTHONS_DIR)/more-pythons.log" 2>&1 \
	    || { tail -40 "$(PYTHONS_DIR)/more-pythons.log"; exit 1; }; \
	  grep -E 'WARNING|^  /[^ ]*/bin/python[^ ]* +3\.' "$(PYTHONS_DIR)/more-pythons.log" || true; \
	else \
	  echo "tools/more-pythons.sh $(PYTHONS_DIR)  (the first time: 10-20 min)"; \
	  tools/more-pythons.sh "$(PYTHONS_DIR)"; \
	fi
	@vs="$(PY_ROOT)"; \
	[ -n "$$vs" ] || vs=$$(cd "$(PYTHONS_DIR)/bin" && ls python3.* | sed 's/^python//' | sort -V); \
	summary=$$(mktemp); fail=0; \
	for v in $$vs; do \
	  echo "== Python $$v: $(PYTHONS_DIR)/bin/python$$v, venv .venv-$$v"; \
	  t0=$$(date +%s); \
	  if ! $(MAKE) --no-print-directory .venv-$$v/.installed-in-root; then \
	    echo "  $$v: FAILED to install (see above)" >> $$summary; fail=1; continue; \
	  fi; \
	  t1=$$(date +%s); \
	  { $(IN_ROOT) .venv-$$v/bin/python -m pytest $(PYTEST_ARGS); \
	    echo $$? > .venv-$$v/pytest.rc; } 2>&1 \
	    | tee .venv-$$v/pytest.log; \
	  t2=$$(date +%s); rc=$$(cat .venv-$$v/pytest.rc); \
	  if [ "$$rc" = 0 ]; then ok=ok; else ok="FAILED (exit $$rc)"; fail=1; fi; \
	  without=$$(cat .venv-$$v/.installed-in-root); \
	  printf '  %s: %s: %s; suite %d s, install %d s%s (log: .venv-%s/pytest.log)\n' "$$v" "$$ok" \
	    "$$(tail -1 .venv-$$v/pytest.log | tr -d '=' | sed 's/^ *//; s/ *$$//')" $$((t2 - t1)) \
	    $$((t1 - t0)) "$${without:+; $$without}" "$$v" >> $$summary; \
	done; \
	echo "== test-pythons:"; cat $$summary; rm -f $$summary; exit $$fail
endif

# A venv per interpreter of the root, made and used through in-root; reinstalled when
# pyproject.toml or a pin changes. Free-threaded builds (a name ending in t) take
# constraints-ft.txt and --prefer-binary too (see there), and leave out mypy (its ast-serialize
# needs Rust to build there; tests/test_types.py skips) and psycopg[binary] (no cp313t wheel; the
# root has no PostgreSQL for tests/test_real_servers.py anyway). The demo and dask extras go in
# where they install: without them their tests skip, and the stamp and the summary line say so.
ROOT_PIP = $(IN_ROOT) .venv-$*/bin/python -m pip install --quiet -c tools/constraints.txt \
  $(if $(filter %t,$*),--prefer-binary -c tools/constraints-ft.txt)
.venv-%/.installed-in-root: pyproject.toml tools/constraints.txt tools/constraints-ft.txt
	@test -x "$(PYTHONS_DIR)/bin/python$*" || { echo "no python$* in $(PYTHONS_DIR)/bin" >&2; exit 1; }
	$(IN_ROOT) .venv-$*/bin/python -c '' 2>/dev/null || $(PYTHONS_DIR)/bin/python$* -m venv --clear .venv-$*
	$(IN_ROOT) .venv-$*/bin/python -m pip install --quiet --upgrade pip
	$(IN_ROOT) .venv-$*/bin/python tools/requirements.py dev \
	  $(if $(filter %t,$*),--without mypy psycopg) > .venv-$*/requirements-dev.txt
	$(ROOT_PIP) -e . -r .venv-$*/requirements-dev.txt
	@missing=""; for extra in demo dask; do \
	  echo "$(ROOT_PIP) -e '.[$$extra]'"; \
	  $(ROOT_PIP) -e ".[$$extra]" || { missing="$$missing $$extra"; \
	    echo "== Python $*: the $$extra extra does not install; its tests will skip" >&2; }; \
	done; \
	echo "$${missing:+without$$missing (their tests skip)}" > $@

clean:
	rm -rf $(VENV) .venv-* .pytest_cache .mypy_cache .ruff_cache
