# cloverwoo-daemon: every target creates .venv from requirements.lock when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast bench lint chaos soak clean venv

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cloverwoo demo

# Everything: unit tests, the daemon end to end over HTTP, the real WooCommerce store and proxies.
# TEST_WORKERS processes (pytest-xdist); the real store's tests stay together on one of them.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup tests

# The edit loop: core, io, actors (over fake ports) and the simulators' own tests, under a minute.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) tests/core tests/io tests/actors tests/sim

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# SOAK_SECONDS (default 600) and SOAK_RATE (default 500/s) set the length and the rate.
soak: $(STAMP)
	$(BIN)/python benchmarks/bench_soak.py

# The long chaos run. CHAOS_SCALE (default 50) multiplies the crash trials (4 moments each: 200 kills at
# 50) and the remote-fault durations (WooCommerce away for the full ten minutes); CHAOS_SECONDS feeds the
# randomised concurrency test. `make test` runs the same files short, with fixed seeds.
CHAOS_SCALE   ?= 50
CHAOS_SECONDS ?= 600
chaos: $(STAMP)
	CLOVERWOO_CHAOS_SCALE=$(CHAOS_SCALE) CLOVERWOO_CHAOS_SECONDS=$(CHAOS_SECONDS) \
		$(BIN)/python -m pytest -s tests/chaos tests/e2e/test_remote_faults.py tests/e2e/test_concurrency.py \
		tests/e2e/test_crash.py

lint: $(STAMP)
	$(BIN)/ruff check cloverwoo_daemon tests benchmarks
	$(BIN)/mypy --strict cloverwoo_daemon/core

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
