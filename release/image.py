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


def find_engine() -> tuple[Engine | None, list[str]]:
    """The first working engine, and for each one passed over, why."""
    reasons = []
    for name in ENGINES:
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


def build_arguments(engine: Engine, version: str) -> list[str]:
    return [
        engine.path,
        "build",
        "--file",
        DOCKERFILE,
        "--build-arg",
        f"VERSION={version}",
        "--tag",
        local_tag(version),
        ".",
    ]


def build_command(version: str | None = None) -> int:
    """``make build``: 0 when the image was built; 1, saying why, when it could not be."""
    version = version or project.version()
    engine, reasons = find_engine()
    if engine is None:
        print(no_engine_message("The image was not built.", reasons), file=sys.stderr)
        return 1
    arguments = build_arguments(engine, version)
    print("+ " + " ".join(arguments), flush=True)
    return subprocess.run(arguments, cwd=project.ROOT).returncode
