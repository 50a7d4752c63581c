"""Facts about the project that every release step reads: its root, its version, its declared dependencies."""

from __future__ import annotations

import configparser
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
SETUP_CFG = ROOT / "setup.cfg"
DIST = ROOT / "dist"
BUILD = ROOT / "build"

# The SCP image's Python (container/Dockerfile's base) and the Lambda runtime the template names.
CONTAINER_PYTHON = "3.11"
LAMBDA_PYTHON = "3.12"
LAMBDA_ARCHITECTURES = {"x86_64": "manylinux2014_x86_64", "arm64": "manylinux2014_aarch64"}

IMAGE_REPOSITORY = "dicom-store-scp"
FUNCTIONS_ZIP_STEM = "dicom-store-scp-functions"


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG, encoding="utf-8")
    return parser


def version() -> str:
    """The one release number (setup.cfg ``[metadata] version``): image tag, artifact keys, template Description."""
    return _setup_cfg()["metadata"]["version"].strip()


def _requirements(text: str) -> list[Requirement]:
    return [Requirement(line.strip()) for line in text.splitlines() if line.strip() and not line.startswith("#")]


@dataclass(frozen=True)
class LockTarget:
    """One set of run-time dependencies, resolved for the Python and platform it runs on."""

    name: str
    requirements: tuple[str, ...]
    python_version: str
    platform: str
    path: Path


def lock_targets() -> tuple[LockTarget, ...]:
    cfg = _setup_cfg()
    install_requires = _requirements(cfg["options"]["install_requires"])
    extras = cfg["options.extras_require"]
    # The SCP needs exactly install_requires.
    container = tuple(str(r) for r in install_requires)
    # The functions need their extra plus boto3 from install_requires: bundled rather than taken from the Lambda
    # runtime, whose botocore may predate the medical-imaging API and S3's conditional writes.
    functions = tuple(str(r) for r in _requirements(extras["functions"])) + tuple(
        str(r) for r in install_requires if r.name == "boto3"
    )
    return (
        LockTarget(
            "container",
            container,
            CONTAINER_PYTHON,
            "manylinux2014_x86_64",
            ROOT / "container" / "requirements.lock",
        ),
        LockTarget(
            "functions",
            functions,
            LAMBDA_PYTHON,
            LAMBDA_ARCHITECTURES["x86_64"],
            ROOT / "release" / "functions.lock",
        ),
    )


def lock_target(name: str) -> LockTarget:
    return next(target for target in lock_targets() if target.name == name)
