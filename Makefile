# Every target bootstraps what it needs: a .venv built from setup.cfg and, for the tests, DCMTK.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PACKAGES := container/dicom_store_scp container/dicom_store_contract functions template_gen release

.PHONY: install run test lint render dcmtk clean bench lock build package publish docs graphviz

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
	  $(SUDO) apt-get update -qq -o DPkg::Lock::Timeout=600 && $(SUDO) apt-get install -y -qq -o DPkg::Lock::Timeout=600 dcmtk >/dev/null; }

test: install dcmtk graphviz
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
	$(VENV)/bin/hadolint container/Dockerfile

# --- Release (docs/deployment.md). One version, setup.cfg's, names the image tag, the zip and the template.
VERSION ?= $(shell sed -n 's/^version *= *//p' setup.cfg)
ARCH ?= x86_64
REGIONS ?= us-east-1
ARTIFACT_BUCKET_PREFIX ?= dicom-store-scp-artifacts
DRY_RUN ?=

# Regenerates container/requirements.lock and release/functions.lock from setup.cfg (needs PyPI).
lock: install
	$(PY) -m release lock

# The SCP image, with docker or podman; says so and fails when neither engine runs here.
build: install
	$(PY) -m release build

# dist/dicom-store-scp-functions-$(VERSION).zip: the Lambda code, byte-for-byte reproducible.
package: install
	$(PY) -m release package --arch $(ARCH)

# Image to ECR, zip to <prefix>-<account>-<region>, release template to dist/; DRY_RUN=1 only prints.
publish: package
	$(PY) -m release publish --version $(VERSION) --regions $(REGIONS) --arch $(ARCH) \
	  --artifact-bucket-prefix $(ARTIFACT_BUCKET_PREFIX) $(if $(ACCOUNT_ID),--account-id $(ACCOUNT_ID)) \
	  $(if $(filter-out 0,$(DRY_RUN)),--dry-run)

# graphviz's dot draws docs/architecture.svg.
graphviz:
	@command -v dot >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -qq -o DPkg::Lock::Timeout=600 && $(SUDO) apt-get install -y -qq -o DPkg::Lock::Timeout=600 graphviz >/dev/null; }

# The generated parts of docs/deployment.md and docs/security.md, and docs/architecture.{dot,svg}.
docs: install graphviz
	$(PY) -m release docs

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
