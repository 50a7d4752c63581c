# Every target bootstraps what it needs: a .venv built from setup.cfg and, for the tests, DCMTK.
# `make run` installs only what the SCP runs on (setup.cfg install_requires); every other target adds the
# development extra (`.[dev]`: the test, lint, template and release tools) to the same .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_STAMP := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip install -q --disable-pip-version-check
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PACKAGES := container/dicom_store_scp container/dicom_store_contract functions template_gen release

.PHONY: install run test lint render dcmtk orthanc clean bench bench-pipeline soak lock build package publish docs graphviz image-tools image-test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# The SCP and its run-time dependencies only.
$(RUNTIME_STAMP): setup.cfg pyproject.toml | $(PY)
	$(PIP) -e .
	touch $(RUNTIME_STAMP)

# Everything: the run-time dependencies and the development extra.
$(STAMP): setup.cfg pyproject.toml | $(PY)
	$(PIP) -e '.[dev]'
	touch $(RUNTIME_STAMP) $(STAMP)

install: $(STAMP)

# Starts the SCP on port 11112, storing under ./storage (no AWS account needed); installs no development tools.
run: $(RUNTIME_STAMP)
	$(VENV)/bin/dicom-store-scp

# DCMTK's storescu/echoscu are the sending peer in the tests.
dcmtk:
	@command -v storescu >/dev/null && command -v echoscu >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -qq -o DPkg::Lock::Timeout=600 && $(SUDO) apt-get install -y -qq -o DPkg::Lock::Timeout=600 dcmtk >/dev/null; }

# Orthanc with its DICOMweb plugin: a STOW-RS server not ours, which INGEST_MODE=stow is tested against.
orthanc:
	@test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -qq -o DPkg::Lock::Timeout=600 && $(SUDO) apt-get install -y -qq -o DPkg::Lock::Timeout=600 orthanc orthanc-dicomweb >/dev/null; }

# tests/image builds the SCP image and runs it with podman (a few minutes the first time, the base image cached).
test: install dcmtk orthanc graphviz image-tools
	$(PY) -m pytest

# podman with runc (crun fails on hosts with hybrid cgroups) and catatonit (--init), and mmdebstrap, which makes
# the image tests' base from Debian packages (no container registry needed). Where they cannot be installed the
# image tests skip.
image-tools:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v catatonit >/dev/null \
	  && command -v mmdebstrap >/dev/null || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -qq -o DPkg::Lock::Timeout=600 && $(SUDO) apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
	    --no-install-recommends podman runc mmdebstrap catatonit >/dev/null \
	  || echo "image-tools: podman, runc, catatonit, mmdebstrap not installed: the image tests will skip" >&2; }

# The SCP image built on a Debian-packaged Python base and run as ECS runs it (tests/image).
image-test: install dcmtk image-tools
	$(PY) -m pytest tests/image

# The CloudFormation template under templates/, rendered from template_gen/.
render: install
	$(PY) -m template_gen

# Not part of `test`: minutes of load on loopback. Results and the command go to docs/benchmarks.md. By default the
# figures of issue 21 (section 9: CPU per instance at 16 and 128 KiB PDUs, ingest on tmpfs at 1 and 4 associations,
# the 300-association burst of storage and Storage Commitment associations), medians of BENCH_REPEAT rounds;
# BENCH_ONLY=all runs every section (`.venv/bin/python bench/run.py --list`).
# 2,400 instances a round: at 600 a round lasts 0.6 s, too short to tell 5 % apart from a worker's first-instance costs.
BENCH_ONLY ?= cpu,ingest-tmpfs,burst
BENCH_REPEAT ?= 5
BENCH_INSTANCES ?= 2400
bench: install dcmtk
	$(PY) bench/run.py --only $(BENCH_ONLY) --repeat $(BENCH_REPEAT) --instances $(BENCH_INSTANCES) --output bench/results.json
	$(MAKE) bench-pipeline

# Issue 26 (docs/benchmarks.md section 13): 1,000 batches of 100 instances through the import functions and the
# template's workflow on a compressed clock, against HealthImaging's quotas, Lambda concurrency 10 and injected
# faults; about half an hour on this machine (moto's DynamoDB is most of it). Writes bench/pipeline-scale.json.
SCALE_BATCHES ?= 1000
SCALE_INSTANCES_PER_BATCH ?= 100
bench-pipeline: install
	nice -n 10 $(PY) bench/pipeline_scale.py --batches $(SCALE_BATCHES) --instances-per-batch $(SCALE_INSTANCES_PER_BATCH) \
	  --json bench/pipeline-scale.json > /dev/null

# Not part of `test`: valid DCMTK traffic and the fuzzer's hostile connections together for SOAK_SECONDS, the SCP's
# memory, threads, descriptors and spool bytes sampled to bench/soak.json (docs/benchmarks.md section 7).
SOAK_SECONDS ?= 600
soak: install dcmtk
	nice -n 10 $(PY) bench/soak.py --duration $(SOAK_SECONDS) --output bench/soak.json

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy $(PACKAGES)
	$(VENV)/bin/hadolint container/Dockerfile

# --- Release (docs/deployment.md). One version, setup.cfg's, names the image tag, the zip and the template.
VERSION ?= $(shell sed -n 's/^version *= *//p' setup.cfg)
ARCH ?= x86_64
# Empty: every region AWS HealthImaging runs in (dicom_store_contract/limits.py).
REGIONS ?=
# Empty: dicom-store-scp-artifacts-<account> (buckets <prefix>-<region>); a seller's release uses its own prefix.
ARTIFACT_BUCKET_PREFIX ?=
# The seller's AWS Marketplace ECR repository (no tag); empty: <account>'s own us-east-1 repository dicom-store-scp.
IMAGE_REPOSITORY ?=
# sha256:... of an image already in IMAGE_REPOSITORY: nothing is pushed, the template names it.
IMAGE_DIGEST ?=
DRY_RUN ?=

# Regenerates container/requirements.lock and release/functions.lock from setup.cfg (needs PyPI).
lock: install
	$(PY) -m release lock

# The SCP image, with docker or podman; says so and fails when neither engine runs here. PYTHON_IMAGE replaces
# the Dockerfile's base; IMAGE_TAG the local tag (give one with any other base: make publish pushes the default);
# CONTAINER_ENGINE picks docker or podman.
PYTHON_IMAGE ?=
IMAGE_TAG ?=
CONTAINER_ENGINE ?=
build: install
	$(PY) -m release build $(if $(PYTHON_IMAGE),--python-image '$(PYTHON_IMAGE)') \
	  $(if $(IMAGE_TAG),--tag '$(IMAGE_TAG)') $(if $(CONTAINER_ENGINE),--engine '$(CONTAINER_ENGINE)')

# dist/dicom-store-scp-functions-$(VERSION).zip: the Lambda code, byte-for-byte reproducible.
package: install
	$(PY) -m release package --arch $(ARCH)

# Image to ECR (by digest in the template), zip and template to every region's <prefix>-<region> bucket
# (readable by any account under dicom-store-scp/ only), one release template in dist/release/; DRY_RUN=1 only prints.
publish: package
	$(PY) -m release publish --version $(VERSION) --arch $(ARCH) $(if $(REGIONS),--regions $(REGIONS)) \
	  $(if $(ARTIFACT_BUCKET_PREFIX),--artifact-bucket-prefix $(ARTIFACT_BUCKET_PREFIX)) \
	  $(if $(IMAGE_REPOSITORY),--image-repository $(IMAGE_REPOSITORY)) $(if $(IMAGE_DIGEST),--image-digest $(IMAGE_DIGEST)) \
	  $(if $(ACCOUNT_ID),--account-id $(ACCOUNT_ID)) $(if $(filter-out 0,$(DRY_RUN)),--dry-run)

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
