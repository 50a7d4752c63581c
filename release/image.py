"""The SCP image: find a working container engine, build, tag and push.

A docker or podman binary alone is not enough (a client without a daemon fails at the first call), so an
engine counts only when ``<engine> info`` succeeds.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass

from release import project

ENGINES = ("docker", "podman")
DOCKERFILE = "container/Dockerfile"


@dataclass(frozen=True)
class Engine:
    name: str
    path: str


def find_engine(names: tuple[str, ...] = ENGINES) -> tuple[Engine | None, list[str]]:
    """The first working engine of ``names``, and for each one passed over, why."""
    reasons = []
    for name in names:
        path = shutil.which(name)
        if path is None:
            reasons.append(f"{name} is not installed")
            continue
        try:
            probe = subprocess.run([path, "info"], capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            reasons.append(f"{name} is installed but `{name} info` did not answer within 30 s")
            continue
        if probe.returncode == 0:
            return Engine(name, path), reasons
        reasons.append(f"{name} is installed but `{name} info` failed (no engine running?)")
    return None, reasons


def no_engine_message(action: str, reasons: list[str]) -> str:
    return f"No container engine: {'; '.join(reasons)}. {action}"


def local_tag(version: str) -> str:
    return f"{project.IMAGE_REPOSITORY}:{version}"


def build_arguments(engine: Engine, version: str, python_image: str | None = None, tag: str | None = None) -> list[str]:
    """The build command line. ``python_image`` replaces the Dockerfile's base (PYTHON_IMAGE); ``tag`` the local
    release tag, so that an image built on any other base never carries the tag ``make publish`` pushes."""
    arguments = [engine.path, "build", "--file", DOCKERFILE]
    if engine.name == "podman":
        # podman writes OCI images by default, and the OCI image config has no HEALTHCHECK: podman drops it
        # with a warning. The docker format keeps it (and ECR takes either).
        arguments += ["--format", "docker"]
    if python_image:
        arguments += ["--build-arg", f"PYTHON_IMAGE={python_image}"]
    arguments += ["--build-arg", f"VERSION={version}", "--tag", tag or local_tag(version), "."]
    return arguments


def build_command(
    version: str | None = None,
    python_image: str | None = None,
    tag: str | None = None,
    engine_name: str | None = None,
) -> int:
    """``make build``: 0 when the image was built; 1, saying why, when it could not be."""
    version = version or project.version()
    engine, reasons = find_engine((engine_name,) if engine_name else ENGINES)
    if engine is None:
        print(no_engine_message("The image was not built.", reasons), file=sys.stderr)
        return 1
    arguments = build_arguments(engine, version, python_image=python_image, tag=tag)
    print("+ " + " ".join(arguments), flush=True)
    return subprocess.run(arguments, cwd=project.ROOT).returncode
