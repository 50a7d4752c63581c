"""Fixtures: podman with the project's configuration, the Debian test base (built once, then cached by the
machine's podman), the SCP image built on it by ``make build``, and that image running.

Everything they write (config, logs of every podman call, the base and image builds) is under build/image-test/.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator

import pytest
from support.podman import (
    RUN_STYLES,
    SCP_ENV,
    DebianBase,
    Podman,
    ScpContainer,
    run_scp,
    unusable_reason,
    write_config,
)
from support.scp import free_port

from release import project

WORK = project.BUILD / "image-test"


@pytest.fixture(scope="session")
def podman() -> Podman:
    reason = unusable_reason()
    if reason:
        pytest.skip(f"the SCP image is not built or run: {reason}")
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / "podman.log"
    log.write_text("")
    return Podman(config=write_config(WORK), log=log)


@pytest.fixture(scope="session")
def test_base(podman: Podman) -> str:
    return podman.ensure_base(DebianBase.for_this_host(), WORK / "base.log")


@pytest.fixture(scope="session")
def scp_image(podman: Podman, test_base: str) -> str:
    """The image as ``make build`` builds it, on the test base and under a tag of its own: make publish pushes
    dicom-store-scp:<version>, which must never name an image built on this base. The tag names the checkout, so
    worktrees testing at once do not retag each other's images."""
    checkout = hashlib.sha256(str(project.ROOT).encode()).hexdigest()[:8]
    tag = f"localhost/dicom-store-scp-test:{project.version()}-{checkout}"
    previous = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    log = WORK / "build.log"
    with log.open("w") as output:
        built = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "build",
                f"PYTHON_IMAGE={test_base}",
                f"IMAGE_TAG={tag}",
                "CONTAINER_ENGINE=podman",
            ],
            cwd=project.ROOT,
            env=podman.env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=1200,
        )
    assert built.returncode == 0, log.read_text()[-4000:]
    current = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    if previous and previous != current:
        # The last run's image, untagged now; its layers shared with this one stay.
        podman("rmi", previous, check=False)
    return tag


def start(podman: Podman, image: str, style: str) -> ScpContainer:
    return run_scp(podman, image, style, port=free_port(), env=SCP_ENV)


@pytest.fixture(scope="module", params=sorted(RUN_STYLES))
def running_scp(request: pytest.FixtureRequest, podman: Podman, scp_image: str) -> Iterator[ScpContainer]:
    """One container per run style, shared by the module's read-only checks."""
    container = start(podman, scp_image, request.param)
    try:
        yield container
    finally:
        container.remove()


@pytest.fixture(params=sorted(RUN_STYLES))
def fresh_scp(request: pytest.FixtureRequest, podman: Podman, scp_image: str) -> Iterator[ScpContainer]:
    """A container of its own, for a test that stops it."""
    container = start(podman, scp_image, request.param)
    try:
        yield container
    finally:
        container.remove()
