# The two commands of the README: `make demo` and `make test`. Everything else is a step of them (or, like
# `make test-fast`, a shorter loop for development).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The local stack's state folder; python -m local reads the same variable.
LOCAL_STATE_DIR ?= $(CURDIR)/.local
export LOCAL_STATE_DIR
STACK_ENV := $(LOCAL_STATE_DIR)/stack.env
WITH_ENV := . $(STACK_ENV) &&
# Where `make ui` serves the Dagster UI.
UI_HOST ?= 127.0.0.1
UI_PORT ?= 3000
# Keep the sync summaries, rejections and the run's outcome; a failed run still fails make.
DAGSTER_LOG_FILTER := { grep --line-buffered -E "sync (DRY RUN|applied)|: rejected|RUN_SUCCESS|RUN_FAILURE|Error" \
	| sed -E 's/^.* - (product_sync_job|cart_sync_job) - [0-9a-f-]{36} - ([0-9]+ - )?//' || true; }

.PHONY: help install browser lint up seed report demo cdc-demo test test-fast test-slow ui shell screenshots bench down clean

help:
	@echo "make demo   set up, start the local stack, seed drift, run both syncs (dry, then for real)"
	@echo "make test   set up and run the whole test suite against real servers (TEST_WORKERS in parallel)"
	@echo "make test-fast  lint, the unit tests and the integration tests that start no daemon, webserver or browser"
	@echo "            and stop no server (a few minutes)"
	@echo "make test-slow  the fault tests on half this machine's cores, as on a machine half as fast"
	@echo "            (SLOW_TESTS= for the whole suite that way)"
	@echo "make ui     the Dagster UI on the local stack (http://$(UI_HOST):$(UI_PORT); UI_HOST, UI_PORT)"
	@echo "make shell  a shell with the local stack's environment, for dagster commands in a terminal"
	@echo "make seed   replace the local stack's data with the demo drift;  make report  the drift now"
	@echo "make cdc-demo  a price changed in MongoDB, repaired by product_changes_sensor's run (CDC_INTERVAL s)"
	@echo "make screenshots  PNGs of the UI on the demo data, into docs/"
	@echo "make bench  the benchmark (sizes: BENCH_SIZES), into benchmarks/RESULTS.md and its plots"
	@echo "make down   stop the local stack;  make clean  also delete it and the virtualenv"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	# Bytecode now: with PYTHONDONTWRITEBYTECODE set (as on CI), every dagster process would compile its imports again.
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e ".[test]"
	touch $@

install: $(BIN)/.installed

up: install
	$(BIN)/python -m local up

seed: up
	$(BIN)/python -m local seed

report: up
	@$(WITH_ENV) $(BIN)/python -m local report

demo: seed
	@echo "== drift before the syncs"
	@$(WITH_ENV) $(BIN)/python -m local report
	@printf 'dry_run: true\n' > $(LOCAL_STATE_DIR)/dry_run.yaml
	@for job in product_sync_job cart_sync_job; do \
		echo "== $$job, dry run (writes nothing)"; \
		$(WITH_ENV) $(BIN)/dagster job execute -m etl_defs -j $$job -c $(LOCAL_STATE_DIR)/dry_run.yaml 2>&1 \
			| tee $(LOCAL_STATE_DIR)/demo-$$job-dry-run.log | $(DAGSTER_LOG_FILTER); \
		echo "== $$job, for real"; \
		$(WITH_ENV) $(BIN)/dagster job execute -m etl_defs -j $$job 2>&1 \
			| tee $(LOCAL_STATE_DIR)/demo-$$job.log | $(DAGSTER_LOG_FILTER); \
		if [ $$job = product_sync_job ]; then \
			echo "== drift between the syncs (repriced products make more Order DB carts stale)"; \
			$(WITH_ENV) $(BIN)/python -m local report; \
		fi; \
	done
	@echo "== drift after the syncs (carts newer in the Order DB are left alone by design)"
	@$(WITH_ENV) $(BIN)/python -m local report
	@echo "Full logs: $(LOCAL_STATE_DIR)/demo-*.log. The runs, checks and assets: make ui"

# The browser tests drive Debian's Chromium: installed here as root; otherwise say how (they are skipped without it).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian's chromium and chromium-driver for the browser tests"; \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y -qq chromium chromium-driver >/dev/null \
				|| { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }; \
		else \
			echo "note: the browser tests need Chromium and its driver: sudo apt-get install chromium chromium-driver"; \
		fi; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# pytest-xdist workers, each with a SecantusDB and a PostgreSQL of its own. Much of the suite waits on daemons
# and sensor ticks, so more workers than cores pay, up to 4 on 2 cores: past that the servers and Dagster's
# processes contend for the CPU (measured: 5 workers took 744 s, 4 took 757 s, and 6 made the daemon scenarios
# miss their bounds). Whole modules go to the next free worker (a module's `dagster dev` is started once), the
# slowest kinds first, in the order tests/conftest.py sorts them.
TEST_WORKERS ?= 4
FAST_TEST_WORKERS ?= 3
PYTEST_PARALLEL = --dist loadfile --no-loadscope-reorder --durations=20

test: install browser lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_PARALLEL)

# The suite as on a machine half as fast: pytest and every server and process it starts pinned to half of this
# machine's cores (taskset, inherited by children), the same workers. Its deadlines derive from the bounds they
# test, not from this machine's speed, so it must pass as `make test` does.
# By default the fault tests, whose scenarios wait on daemons, runs and retries; SLOW_TESTS= runs the whole suite.
SLOW_CPUS ?= 0-$(shell n=$$(nproc); echo $$(( n > 1 ? n / 2 - 1 : 0 )))
SLOW_TESTS ?= -m faults

test-slow: install browser lint
	taskset -c $(SLOW_CPUS) $(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_PARALLEL) $(SLOW_TESTS)

test-fast: install lint
	$(BIN)/python -m pytest -n $(FAST_TEST_WORKERS) $(PYTEST_PARALLEL) -m "not (faults or daemon or webserver or browser or processes)"

ui: up
	@$(WITH_ENV) $(BIN)/dagster dev -w workspace.yaml -h $(UI_HOST) -p $(UI_PORT)

shell: up
	@echo "A shell with the local stack's environment (DAGSTER_HOME, DAGSTER_PG_URL, the database URLs); exit to leave."
	@$(WITH_ENV) PATH="$(CURDIR)/$(BIN):$$PATH" exec "$${SHELL:-/bin/bash}" -i

# The change sensor's interval in the demo (PRODUCT_CDC_INTERVAL_SECONDS; the service's default is 30).
CDC_INTERVAL ?= 10

cdc-demo: seed
	@PRODUCT_CDC_INTERVAL_SECONDS=$(CDC_INTERVAL) $(BIN)/python -m local.cdc_demo

screenshots: seed browser
	$(BIN)/python -m local.screenshots

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m local down; fi

clean:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m local clean; else rm -rf $(LOCAL_STATE_DIR); fi
	rm -rf $(VENV)

# The benchmark (benchmarks/run.py) on a private stack of its own; results in benchmarks/RESULTS.md.
BENCH_SIZES ?= 200000 1000000
bench: install
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e ".[test,bench]"
	$(BIN)/python -m benchmarks.run --sizes $(BENCH_SIZES)
