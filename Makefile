# Two commands matter: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The embedded Postgres, blobs, outbox and Dagster home live here unless ECR_HOME says otherwise.
export ECR_HOME ?= $(CURDIR)/.ecr

.PHONY: install demo dev test lint format migrate status stop clean benchmarks

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "needs $(PYTHON) on PATH (or make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.py pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## make demo: embedded Postgres, migrations, every asset against the stand-ins, a summary.
demo: install
	$(BIN)/python -m ecr_pipelines demo

## make dev: the Dagster UI (webserver + daemon) on the demo instance.
dev: install
	$(BIN)/python -m ecr_pipelines dev

## make test: the whole suite.
test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

migrate: install
	$(BIN)/python -m ecr_pipelines db upgrade

status: install
	$(BIN)/python -m ecr_pipelines db status

stop: install
	$(BIN)/python -m ecr_pipelines db stop

benchmarks: install
	@for script in benchmarks/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean: stop
	rm -rf $(ECR_HOME)
