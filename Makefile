# One command per chore. `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# Test processes (pytest-xdist); 0 runs the suite in this one process. Each process asks
# for its next test when it is done with one (--maxschedchunk 1), in the collection's order,
# which puts the long tests first. The browser suite (a server and a Chromium per process,
# mostly waiting on the page) takes at most 2.
PYTEST_WORKERS ?= 4
SCHEDULE = --dist load --maxschedchunk 1
XDIST = -n $(PYTEST_WORKERS) $(SCHEDULE)
BROWSER_XDIST = -n $(if $(filter 0 1,$(PYTEST_WORKERS)),$(PYTEST_WORKERS),2) $(SCHEDULE)
# The suite starts hundreds of Python processes; where PYTHONDONTWRITEBYTECODE is set each
# would compile the package (and pytest the tests) again. Their bytecode is kept in the venv.
TEST_ENV = PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(abspath $(VENV))/pycache

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev,bench,sqs,redis,otel]'
	touch $(STAMP)

.PHONY: install
install: $(STAMP) ## create .venv and install the package with its dev tools

.PHONY: run
run: install ## start the all-in-one server on http://127.0.0.1:8000 (SQLite, demo handlers)
	@echo "async-jobs: API on http://127.0.0.1:8000, dashboard on http://127.0.0.1:8000/dashboard"
	$(BIN)/async-jobs serve --host 127.0.0.1 --port 8000

.PHONY: services
services: ## make sure PostgreSQL and Redis answer (starts them if not)
	./scripts/ensure-services.sh

.PHONY: test
test: install services ## install, check services, run the whole suite
	$(TEST_ENV) $(BIN)/pytest $(XDIST) $(PYTEST_ARGS)
	$(TEST_ENV) $(BIN)/pytest -p no:schemathesis $(BROWSER_XDIST) $(PYTEST_ARGS) tests/browser

.PHONY: test-fast
test-fast: install ## unit tests and the memory and SQLite variants (no PostgreSQL needed)
	$(TEST_ENV) $(BIN)/pytest -m "(unit or integration) and not postgres" $(XDIST) $(PYTEST_ARGS)

.PHONY: lint
lint: install ## ruff, ruff format --check, mypy --strict, import layers
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: format
format: install ## apply ruff's formatting and safe fixes
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

.PHONY: bench
bench: install services ## our queue against PgQueuer on this machine (bench/README.md)
	$(BIN)/python bench/compare.py

FAUXQS_VERSION = 1.9.2

.PHONY: bench-sqs
bench-sqs: install services ## the sqs transport's drain against a local SQS server alone (fauxqs, from npm)
	test -x bench/node_modules/.bin/fauxqs || npm install --prefix bench --no-save --no-package-lock --silent fauxqs@$(FAUXQS_VERSION)
	$(BIN)/async-jobs bench --transport sqs --sqs-server fauxqs --jobs 20000 --concurrency 50 --json bench/results/sqs.json

.PHONY: lock
lock: ## refresh requirements.lock from a clean resolve
	rm -rf /tmp/async-jobs-lock && $(PYTHON) -m venv /tmp/async-jobs-lock
	/tmp/async-jobs-lock/bin/pip install --quiet -e '.[dev,bench,sqs]'
	/tmp/async-jobs-lock/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock

.PHONY: clean
clean: ## remove the environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
