# Every target bootstraps what it needs: a .venv built from setup.cfg and, for the tests, DCMTK.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PACKAGES := container/dicom_store_scp functions template_gen

.PHONY: install run test lint render dcmtk clean bench

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Starts the SCP on port 11112, storing under ./storage (no AWS account needed).
run: install
	$(VENV)/bin/dicom-store-scp

# DCMTK's storescu/echoscu are the sending peer in the tests.
dcmtk:
	@command -v storescu >/dev/null && command -v echoscu >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dcmtk >/dev/null; }

test: install dcmtk
	$(PY) -m pytest

# The CloudFormation template under templates/, rendered from template_gen/.
render: install
	$(PY) -m template_gen

# Not part of `test`: minutes of load on loopback. Results and the command go to docs/benchmarks.md.
bench: install dcmtk
	$(PY) bench/run.py --output bench/results.json

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(PACKAGES)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
