# simrating — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROTOS := $(wildcard protos/rating/v1/*.proto)
STAMP  := $(VENV)/.installed

.PHONY: help install run test lint proto proto-check bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the service with its dev tools

run: $(STAMP)  ## run the service on the embedded PostgreSQL (or RATING_DATABASE_URL)
	$(BIN)/python -m service

test: $(STAMP)  ## run the test suite (RATING_TEST_DATABASE_URL or embedded PostgreSQL)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff, mypy strict, import-linter layering, buf lint
	$(BIN)/ruff check service workers tests bench
	$(BIN)/ruff format --check service workers tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint

proto: $(STAMP)  ## regenerate the committed Python code from protos/
	cd protos && PATH="$(CURDIR)/$(BIN):$$PATH" $(CURDIR)/$(BIN)/python -m grpc_tools.protoc -I. \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. rating/v1/*.proto

bench: $(STAMP)  ## throughput benchmarks; writes bench/results.json
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:  ## remove the virtualenv and caches (keeps .rating-data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
