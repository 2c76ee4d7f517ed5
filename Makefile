# The two commands of the README: `make demo` and `make test`. Everything else is a step of them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STACK_ENV := .local/stack.env
WITH_ENV := set -a && . $(STACK_ENV) && set +a &&
# Keep the sync summaries, rejections and the run's outcome; a failed run still fails make.
DAGSTER_LOG_FILTER := { grep --line-buffered -E "sync (DRY RUN|applied)|rejected|RUN_SUCCESS|RUN_FAILURE|Error" \
	| sed -E 's/^.* - (product_sync_job|cart_sync_job) - [0-9a-f-]{36} - ([0-9]+ - )?//' || true; }

.PHONY: help install up seed report demo test ui down clean

help:
	@echo "make demo   set up, start the local stack, seed drift, run both syncs (dry, then for real)"
	@echo "make test   set up and run the test suite against real servers"
	@echo "make ui     the Dagster UI on the local stack (http://127.0.0.1:3000)"
	@echo "make down   stop the local stack;  make clean  also delete it and the virtualenv"

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e ".[test]"
	touch $@

install: $(BIN)/.installed

up: install
	$(BIN)/python -m local up

seed: up
	$(BIN)/python -m local seed

report:
	@$(WITH_ENV) $(BIN)/python -m local report

demo: seed
	@echo "== drift before the syncs"
	@$(WITH_ENV) $(BIN)/python -m local report
	@printf 'dry_run: true\n' > .local/dry_run.yaml
	@for job in product_sync_job cart_sync_job; do \
		echo "== $$job, dry run (writes nothing)"; \
		$(WITH_ENV) $(BIN)/dagster job execute -m etl_defs -j $$job -c .local/dry_run.yaml 2>&1 \
			| tee .local/demo-$$job-dry-run.log | $(DAGSTER_LOG_FILTER); \
		echo "== $$job, for real"; \
		$(WITH_ENV) $(BIN)/dagster job execute -m etl_defs -j $$job 2>&1 \
			| tee .local/demo-$$job.log | $(DAGSTER_LOG_FILTER); \
	done
	@echo "== drift after the syncs (carts newer in the Order DB are left alone by design)"
	@$(WITH_ENV) $(BIN)/python -m local report
	@echo "Full logs: .local/demo-*.log. See the runs, checks and assets: make ui"

test: install
	$(BIN)/python -m pytest

ui: up
	@$(WITH_ENV) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m local down; fi

clean: down
	rm -rf .local $(VENV)
