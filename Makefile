# The two commands a new user needs: `make run` (the whole stack on its embedded defaults) and
# `make test` (every test). Both set up the virtual environment from requirements.txt first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup run test lint bench clean

$(INSTALLED): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $(INSTALLED)

# The tests also run a real MLflow tracking server: the full package, kept out of what `make run` needs.
TEST_INSTALLED := $(VENV)/.installed-test

$(TEST_INSTALLED): $(INSTALLED) requirements-mlflow.txt
	$(BIN)/pip install --quiet -r requirements-mlflow.txt
	touch $(TEST_INSTALLED)

setup: $(INSTALLED)

run: setup
	scripts/run-stack.sh

test: $(TEST_INSTALLED)
	scripts/test.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(TEST_INSTALLED)
	$(BIN)/python bench/bench_fleet.py
	$(BIN)/python bench/bench_api.py
	$(BIN)/python bench/bench_operators.py
	$(BIN)/python bench/bench_sources.py
	$(BIN)/python bench/bench_scale.py
	$(BIN)/python bench/bench_workers.py

clean:
	rm -rf var .pytest_cache
