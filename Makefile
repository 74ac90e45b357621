# The front door. `make demo` sets everything up from nothing and runs the shop end to end;
# `make test` runs the whole test suite (unit + integration on a real Kafka).
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
ORDERS ?= 500
TORCH   = torch==2.15.0

.PHONY: setup demo up test unit integration lint clean chaos bench nogil

setup: $(STAMP)

# torch first and pinned, so pip never swaps in another build while resolving the rest.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/pizzashop demo --orders $(ORDERS)

# A running shop for development (broker, SMTP sink, models, API, every worker); Ctrl+C stops it.
up: setup
	$(VENV)/bin/pizzashop up

test: setup
	$(PY) -m pytest -q

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup
	$(PY) -m pytest -q tests/integration

# The chaos suite (bench/chaos.py): 20,000 orders under kills, broker restarts and outages, about
# 15 min; exits non-zero when a promise is broken. `make chaos CHAOS_ARGS="--orders 1500 ..."`.
CHAOS_ARGS ?=
chaos: setup
	$(PY) bench/chaos.py --json $(CHAOS_ARGS)

# The benchmark suite (bench/suite.py): ceiling, peers, our flows (aiokafka and confluent-kafka
# transports), end-to-end latency at 200,500,1000,5000 orders/s (API and enricher in separate
# processes) and the API under wrk, median of 3 runs into bench/RESULTS.md; on an idle machine.
# `make bench BENCH_ARGS="--runs 1 --orders 1000 --profile"`.
BENCH_ARGS ?=
bench: setup
	$(VENV)/bin/pizzashop bench --json $(BENCH_ARGS)

# Free-threaded CPython 3.13 (--disable-gil), opt-in and not in CI (bench/nogil.sh, bench/NOGIL.md):
# builds it from Debian's source package into .cache/python3.13t (14-17 min, once), a venv
# .cache/nogil-venv with whatever has cp313t wheels, runs the runtime's unit tests on it, then the
# decode/validate stage at 1 and 2 threads on both builds. `make nogil NOGIL_ARGS="--runs 9"`.
NOGIL_ARGS ?=
nogil: setup
	NORMAL_PY=$(PY) bench/nogil.sh all --json .cache/nogil-bench.json $(NOGIL_ARGS)

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy && $(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) .pizzashop .pytest_cache .mypy_cache .ruff_cache
