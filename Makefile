# Two commands matter: `make demo` and `make test`. Both create .venv when it is missing.
# `make demo` / `make dev` / `make env` also write .env (the local instance), which the bare Dagster
# CLI reads from this folder: `dagster dev`, `dagster job execute -m ecr_pipelines.definitions ...`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The embedded Postgres, blobs, outbox and Dagster home live here unless ECR_HOME says otherwise.
export ECR_HOME ?= $(CURDIR)/.ecr

.PHONY: install demo dev env instance api test lint format migrate status stop clean benchmarks

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

## make api: the HTTP contracts (registry API, data-store HAWK API, CKAN intake) on API_PORT (8000).
api: install
	$(BIN)/python -m ecr_pipelines api

## make env: start the embedded Postgres, write .env, set up the instance; prints shell exports.
env: install
	$(BIN)/python -m ecr_pipelines env

## make instance: create the Dagster pool limits of the instance in .env (or DAGSTER_HOME).
instance: install
	$(BIN)/python -m ecr_pipelines instance setup

## make test: the whole suite, on TEST_WORKERS pytest-xdist workers (2: a developer's and CI's cores).
## Each worker has its own Postgres and stand-ins and is handed whole modules, the slow ones first
## (in the order ecr_pipelines_tests/conftest.py gives; --no-loadscope-reorder keeps it).
TEST_WORKERS ?= 2
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
test: install
	@if $(BIN)/python -c 'import xdist' 2>/dev/null; then \
		echo "$(BIN)/python -m pytest $(XDIST)"; \
		$(BIN)/python -m pytest $(XDIST); \
	else \
		echo "pytest-xdist is not installed (pip install -e '.[dev]'): the suite runs in one process"; \
		$(BIN)/python -m pytest; \
	fi

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

# .env points at the deleted instance; it goes too unless it holds lines of the user's own.
clean: stop
	rm -rf $(ECR_HOME)
	@if [ -f .env ]; then \
		if grep -qvE '^(#.*|[[:space:]]*|(ECR_HOME|DATABASE_URL|DAGSTER_PG_URL|DAGSTER_HOME)=.*)$$' .env; then \
			echo "kept .env (it has settings of your own): drop its ECR_HOME/DATABASE_URL/DAGSTER_* lines"; \
		else rm -f .env; fi; \
	fi
