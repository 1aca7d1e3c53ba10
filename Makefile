# simrating — `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PROTOS := $(wildcard protos/rating/v1/*.proto)
STAMP  := $(VENV)/.installed
# Exact versions of everything in .venv (written by `make lock`, installed by `make install`).
PINS   := constraints.txt
# The protos of the last release: `buf breaking` compares protos/ with it. Moved at a release
# by `make proto-release`, committed with the release.
RELEASED_PROTOS := protos/released.binpb
SOURCES := service workers tests bench

.PHONY: help install lock run test lint format proto proto-release bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(STAMP): pyproject.toml $(PINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade -c $(PINS) pip
	$(BIN)/pip install --quiet -c $(PINS) --build-constraint $(PINS) -e '.[dev]'
	touch $(STAMP)

# Other targets install only when pyproject.toml or the pins changed; `make install` always
# puts .venv back to exactly the pins, whatever was installed into it by hand.
install:  ## create .venv and install the service with its dev tools, at the pinned versions
	rm -f $(STAMP)
	$(MAKE) --no-print-directory $(STAMP)

# A throwaway venv resolves pyproject.toml's ranges afresh, so the pins are the newest versions
# allowed, with nothing left over from an older resolution.
lock:  ## re-resolve every dependency to its newest allowed version into constraints.txt
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install --quiet --upgrade pip setuptools; \
	"$$tmp/venv/bin/pip" install --quiet -e '.[dev]'; \
	{ sed -n '/^#/p' $(PINS); "$$tmp/venv/bin/pip" freeze --all --exclude-editable; } > "$$tmp/pins"; \
	mv "$$tmp/pins" $(PINS)
	@echo "$(PINS) rewritten: run make install, then make proto, make lint and make test"

run: $(STAMP)  ## run the service on the embedded PostgreSQL (or RATING_DATABASE_URL)
	$(BIN)/python -m service

test: $(STAMP)  ## run the test suite (RATING_TEST_DATABASE_URL or embedded PostgreSQL)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)  ## ruff, mypy strict, import-linter contracts, buf lint, buf breaking
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint
	$(BIN)/buf breaking protos --against $(RELEASED_PROTOS)

format: $(STAMP)  ## ruff format and ruff's safe fixes, in place
	$(BIN)/ruff format $(SOURCES)
	$(BIN)/ruff check --fix $(SOURCES)

proto: $(STAMP)  ## regenerate the committed Python code from protos/
	cd protos && PATH="$(CURDIR)/$(BIN):$$PATH" $(CURDIR)/$(BIN)/python -m grpc_tools.protoc -I. \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. rating/v1/*.proto

proto-release: $(STAMP)  ## at a release: make today's protos the baseline of buf breaking
	$(BIN)/buf build protos -o $(RELEASED_PROTOS)

bench: $(STAMP)  ## throughput benchmarks; writes bench/results.json
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:  ## remove the virtualenv and caches (keeps .rating-data)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
