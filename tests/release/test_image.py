"""The SCP image's Dockerfile, its lock, its health check against a real SCP, and ``make build``'s command line.

What the Dockerfile relies on is checked piece by piece here; tests/image builds the image and runs it.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support.scp import launch_scp

from release import lock, project

DOCKERFILE = project.ROOT / "container" / "Dockerfile"
BIN = Path(sys.executable).parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    found = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def only(keyword: str) -> str:
    [value] = [rest for key, rest in instructions() if key == keyword]
    return value


def test_hadolint_finds_nothing():
    result = subprocess.run([str(BIN / "hadolint"), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_runs_the_console_script_as_a_non_root_user_on_the_dicom_port():
    assert json.loads(only("ENTRYPOINT")) == ["dicom-store-scp"]
    assert only("EXPOSE") == "11112"
    assert only("STOPSIGNAL") == "SIGTERM"
    user = only("USER")
    assert user.split(":")[0] not in {"0", "root"}
    # The task definition names the same numeric user; a name would not resolve against a read-only /etc.
    assert re.fullmatch(r"\d+:\d+", user)
    assert "--uid 10001 --gid 10001" in DOCKERFILE.read_text()


def test_base_image_names_an_exact_python_release():
    [argument] = [rest for key, rest in instructions() if key == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", argument)
    assert [rest for key, rest in instructions() if key == "FROM"] == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_dependencies_come_from_the_lock_checked_against_hashes():
    installs = [rest for key, rest in instructions() if key == "RUN" and "pip install" in rest]
    assert len(installs) == 1
    assert "--require-hashes" in installs[0]
    assert "--requirement /tmp/requirements.lock" in installs[0]


def test_console_script_matches_setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(project.SETUP_CFG)
    entry = cfg["options.entry_points"]["console_scripts"].strip()
    name, _, target = (part.strip() for part in entry.partition("="))
    module, _, function = target.partition(":")
    assert name == "dicom-store-scp"
    assert f"from {module} import {function}" in DOCKERFILE.read_text()


def test_writable_paths_are_under_the_volume():
    final_stage_env = [rest for key, rest in instructions() if key == "ENV"][-1]
    environment = dict(re.findall(r"(\w+)=(\S+)", final_stage_env))
    assert only("VOLUME") == '["/tmp"]'
    assert environment["STORAGE_DIR"].startswith("/tmp/")
    assert environment["TMPDIR"] == "/tmp"
    assert environment["SCP_PORT"] == "11112"


def test_build_context_admits_exactly_what_the_dockerfile_copies():
    sources = []
    for key, rest in instructions():
        if key == "COPY" and not rest.startswith("--from"):
            sources.extend(rest.split()[:-1])
    patterns = (project.ROOT / ".dockerignore").read_text().splitlines()
    admitted = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    assert "*" in patterns
    assert sorted(admitted) == sorted(sources)


@pytest.mark.parametrize("target", project.lock_targets(), ids=lambda t: t.name)
def test_lock_satisfies_setup_cfg(target):
    pins = lock.pinned(target.path)
    for requirement in map(Requirement, target.requirements):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{target.path.name} lacks {name}: run make lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} violates {requirement}: make lock"
    text = target.path.read_text()
    assert text.count("--hash=sha256:") == len(pins)
    assert f"CPython {target.python_version} on {target.platform}" in text


def healthcheck_command() -> list[str]:
    arguments = only("HEALTHCHECK")
    command = json.loads(arguments.split("CMD", 1)[1])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_health_check_passes_without_a_log_line_and_fails_when_the_scp_is_down(tmp_path):
    scp = launch_scp(tmp_path, env={"LOG_LEVEL": "INFO"})
    try:
        lines_before = len(scp.logs())
        environment = {**os.environ, "SCP_PORT": str(scp.port)}
        for _ in range(5):
            probe = subprocess.run(healthcheck_command(), env=environment, capture_output=True, timeout=30)
            assert probe.returncode == 0, probe.stderr
        time.sleep(0.5)  # let the connection threads finish and log, were they to
        # The metrics records are written at each minute's turn whatever happens; a run across one gets them.
        assert [line for line in scp.logs()[lines_before:] if line.get("event") != "metrics"] == []
        assert scp.process.poll() is None
    finally:
        stopping = time.monotonic()
        scp.stop()
    # Probes hold no association: the graceful stop has nothing to wait for.
    assert time.monotonic() - stopping < 5
    probe = subprocess.run(healthcheck_command(), env=environment, capture_output=True, timeout=30)
    assert probe.returncode != 0


def run_build(path: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "release", "build", *arguments],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        cwd=project.ROOT,
        timeout=60,
    )


def test_build_says_plainly_when_no_engine_runs(fake_engine, tmp_path):
    fake_engine("docker", info_exit=1)
    result = run_build(str(tmp_path / "bin"))
    assert result.returncode == 1
    assert "No container engine" in result.stderr
    assert "docker is installed but `docker info` failed" in result.stderr
    assert "podman is not installed" in result.stderr
    assert "The image was not built." in result.stderr


def test_build_uses_podman_when_docker_has_no_daemon(fake_engine, tmp_path):
    fake_engine("docker", info_exit=1)
    calls = fake_engine("podman", info_exit=0)
    result = run_build(str(tmp_path / "bin"))
    assert result.returncode == 0, result.stderr
    version = project.version()
    assert calls.read_text().split() == [
        "build",
        "--file",
        "container/Dockerfile",
        # podman's default OCI format drops HEALTHCHECK.
        "--format",
        "docker",
        "--build-arg",
        f"VERSION={version}",
        "--tag",
        f"dicom-store-scp:{version}",
        ".",
    ]


def test_build_takes_another_base_and_tag_and_keeps_dockers_own_format(fake_engine, tmp_path):
    calls = fake_engine("docker", info_exit=0)
    result = run_build(str(tmp_path / "bin"), "--python-image", "localhost/base:1", "--tag", "scp-test:1")
    assert result.returncode == 0, result.stderr
    assert calls.read_text().split() == [
        "build",
        "--file",
        "container/Dockerfile",
        "--build-arg",
        "PYTHON_IMAGE=localhost/base:1",
        "--build-arg",
        f"VERSION={project.version()}",
        "--tag",
        "scp-test:1",
        ".",
    ]


def test_build_uses_only_the_engine_asked_for(fake_engine, tmp_path):
    docker = fake_engine("docker", info_exit=0)
    podman = fake_engine("podman", info_exit=0)
    result = run_build(str(tmp_path / "bin"), "--engine", "podman")
    assert result.returncode == 0, result.stderr
    assert not docker.exists()
    assert podman.read_text().split()[:5] == ["build", "--file", "container/Dockerfile", "--format", "docker"]


def test_make_build_passes_the_base_tag_and_engine_on():
    dry_run = subprocess.run(
        [
            "make",
            "--dry-run",
            "--no-print-directory",
            "build",
            "PYTHON_IMAGE=localhost/base:1",
            "IMAGE_TAG=t:1",
            "CONTAINER_ENGINE=podman",
        ],
        cwd=project.ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    command = " ".join(dry_run.stdout.replace("\\\n", " ").split())
    assert "-m release build --python-image 'localhost/base:1' --tag 't:1' --engine 'podman'" in command
