# Every target bootstraps what it needs: a fresh clone only needs python3 (3.11+), node and npm.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
NODE_STAMP := node_modules/.installed

export JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION := 20
export JSII_RUNTIME_PACKAGE_CACHE_ROOT := $(CURDIR)/.cache/jsii
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint format bench synth e2e clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cdk,dev]'
	touch $@

# checkov pins packaging<24, which the test tools cannot share: it gets a virtual environment of its own.
$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q checkov==3.3.30
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: $(STAMP)
	$(PY) -m ecs_query.demo

test: $(STAMP) $(CHECKOV_STAMP) $(NODE_STAMP)
	$(BIN)/pytest -n 2 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(PY) -m benchmarks

synth: $(STAMP)
	cd examples && ../$(PY) app.py

e2e: $(STAMP)
	$(PY) -m tests.e2e.watch

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules cdk.out examples/cdk.out .cache .demo .pytest_cache .mypy_cache .ruff_cache
