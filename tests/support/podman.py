"""Test harness: podman as root with the project's own configuration, and a Python base image made from Debian
packages, so that the SCP image is built and run here with no container registry in reach.

Facts this relies on (found on the CI machines, which run as root):
- crun fails on hosts with hybrid (v1 + v2) cgroups; runc works.
- podman's default ulimits (nofile 1048576) exceed what the sandbox allows, and the container fails to start:
  the defaults here stay at or below the caller's hard limits.
- ``mmdebstrap ... | podman import`` makes a bookworm base with Debian's python3.11 in about a minute; Debian's pip
  trusts the system CA bundle, so the host's extra CA certificates (a TLS-intercepting egress) go into that base.
  Only this test base holds them; a release build uses the Dockerfile's own PYTHON_IMAGE.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# catatonit is the init process podman runs with --init (ECS runs the task with one).
TOOLS = ("podman", "runc", "catatonit", "mmdebstrap")

# What the machines allow at most (their hard limits); podman would ask for more and fail.
ULIMITS = {"nofile": (resource.RLIMIT_NOFILE, 20000), "nproc": (resource.RLIMIT_NPROC, 32768)}

# The local CA certificates Debian's update-ca-certificates adds to the system bundle.
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")


def unusable_reason() -> str | None:
    """Why the image tests cannot run here, or None."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed: `make image-test` (as root) installs them with apt-get; where "
            "that is impossible the image is not built or run"
        )
    if os.geteuid() != 0:
        return "the image tests run podman as root, as CI does (rootless podman is not set up here)"
    return None


def ulimit(name: str) -> int:
    kind, ceiling = ULIMITS[name]
    _, hard = resource.getrlimit(kind)
    return ceiling if hard == resource.RLIM_INFINITY else min(ceiling, hard)


def write_config(folder: Path) -> Path:
    """The containers.conf every podman call of the tests reads (CONTAINERS_CONF): nothing of the machine's is
    edited."""
    folder.mkdir(parents=True, exist_ok=True)
    limits = ", ".join(f'"{name}={ulimit(name)}:{ulimit(name)}"' for name in ULIMITS)
    path = folder / "containers.conf"
    path.write_text(
        "# Written by tests/support/podman.py for the image tests; see its docstring for why.\n"
        "[containers]\n"
        f"default_ulimits = [{limits}]\n"
        "\n"
        "[engine]\n"
        'runtime = "runc"\n'
        # CI containers have no systemd to hand cgroups to.
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    return path


@dataclass(frozen=True)
class DebianBase:
    """The image tests' stand-in for python:3.11-slim-bookworm: Debian's own Python 3.11 (python3-venv for the
    Dockerfile's ``python -m venv``, python-is-python3 for its ``python``, passwd for its ``useradd``)."""

    suite: str = "bookworm"
    packages: tuple[str, ...] = ("python3.11", "python3-venv", "python-is-python3", "passwd", "ca-certificates")
    sources: tuple[str, ...] = (
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    )
    extra_cas: tuple[Path, ...] = field(default_factory=tuple)

    @classmethod
    def for_this_host(cls) -> DebianBase:
        return cls(extra_cas=tuple(sorted(HOST_EXTRA_CAS.glob("*.crt"))))

    @property
    def tag(self) -> str:
        """Names this recipe: a change to it (or to the host's CAs) builds a new base, otherwise the cached one
        is used."""
        recipe = hashlib.sha256(json.dumps([self.suite, self.packages, self.sources]).encode())
        for certificate in self.extra_cas:
            recipe.update(certificate.read_bytes())
        return f"localhost/dicom-store-scp-test-base:{self.suite}-{recipe.hexdigest()[:12]}"

    def mmdebstrap(self) -> list[str]:
        """The root filesystem as a tar on stdout; essential + the packages, no documentation."""
        command = [
            "mmdebstrap",
            "--variant=essential",
            f"--include={','.join(self.packages)}",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
        ]
        if self.extra_cas:
            command += [
                f"--customize-hook=copy-in {' '.join(map(str, self.extra_cas))} /usr/local/share/ca-certificates/",
                '--customize-hook=chroot "$1" update-ca-certificates',
            ]
        return [*command, self.suite, "-", *self.sources]


@dataclass
class Podman:
    """podman with the tests' configuration; ``log`` collects what every call printed, for failure messages."""

    config: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.config)}

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120, output: bool = False
    ) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        with self.log.open("a") as log:
            log.write(f"$ podman {' '.join(args)}\n-> {completed.returncode}\n{completed.stderr}")
        if check and completed.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({completed.returncode}): {completed.stderr}")
        return completed

    def image_exists(self, tag: str) -> bool:
        return self("image", "exists", tag, check=False).returncode == 0

    def inspect(self, what: str, name: str) -> dict[str, Any]:
        [found] = json.loads(self(what, "inspect", name).stdout)
        return dict(found)

    def ensure_base(self, base: DebianBase, build_log: Path) -> str:
        """The base image's tag, built unless it is cached. One build at a time on the machine."""
        with _machine_lock("dicom-store-scp-test-base"):
            if not self.image_exists(base.tag):
                self._build_base(base, build_log)
        return base.tag

    def _build_base(self, base: DebianBase, build_log: Path) -> None:
        started = time.monotonic()
        with build_log.open("w") as log:
            strap = subprocess.Popen(base.mmdebstrap(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
            change = "LABEL org.opencontainers.image.description=image-tests-only base (holds the host's extra CAs)"
            imported = subprocess.run(
                ["podman", "import", "--change", change, "-", base.tag],
                env=self.env,
                stdin=strap.stdout,
                stdout=log,
                stderr=log,
                timeout=1200,
            )
            assert strap.stdout is not None
            strap.stdout.close()
            strapped = strap.wait(timeout=60)
            log.write(f"\nbase image built in {time.monotonic() - started:.0f} s\n")
        if strapped != 0 or imported.returncode != 0:
            self("rmi", "--force", base.tag, check=False)
            raise AssertionError(
                f"the test base was not built (mmdebstrap {strapped}, podman import "
                f"{imported.returncode}): {build_log.read_text()[-3000:]}"
            )


@contextmanager
def _machine_lock(name: str) -> Iterator[None]:
    """Several worktrees may run the image tests at once: the second waits for the first's base."""
    with open(Path(tempfile.gettempdir()) / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# How the container is run. "ecs-task" as the stack's task definition runs it (template_gen/service.py): its
# numeric user, a read-only root filesystem with a writable volume on /tmp, every capability dropped, an init
# process. "docker-run" as one runs it by hand: the image's own user, /tmp a tmpfs, the SCP as PID 1.
# podman's --read-only also mounts tmpfs on /run, /tmp and /var/tmp unless told not to; docker and ECS do not.
RUN_STYLES = {
    "ecs-task": ("--user", "10001:10001", "--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL", "--init"),
    "docker-run": ("--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,mode=1777"),
}
SCP_PORT = 11112
# The stack's grace is 100 s under ECS's 120 s stop timeout; the tests keep that order with less waiting.
GRACE_SECONDS = 20
STOP_TIMEOUT_SECONDS = 30
SCP_ENV = {"LOG_LEVEL": "INFO", "SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS)}


@dataclass
class ScpContainer:
    podman: Podman
    name: str
    port: int
    volume: str | None

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", self.name, *command, check=check)

    def read(self, path: str) -> bytes:
        completed = subprocess.run(
            ["podman", "exec", self.name, "cat", path], env=self.podman.env, capture_output=True, timeout=60
        )
        assert completed.returncode == 0, completed.stderr
        return completed.stdout

    def files(self, folder: str, pattern: str) -> list[str]:
        found = self.exec("find", folder, "-type", "f", "-name", pattern, check=False)
        return sorted(found.stdout.split())

    def logs(self) -> tuple[str, str]:
        """What the SCP wrote to (stdout, stderr), kept apart."""
        completed = self.podman("logs", self.name)
        return completed.stdout, completed.stderr

    def records(self) -> list[dict[str, Any]]:
        """The SCP's JSON log lines so far."""
        return [json.loads(line) for line in self.logs()[1].splitlines() if line.startswith("{")]

    def wait_for_record(self, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        """The first log line holding ``fields``, waiting for it while the container runs."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if fields.items() <= record.items():
                    return record
            state = self.podman.inspect("container", self.name)["State"]
            if not state["Running"] or time.monotonic() > deadline:
                raise AssertionError(f"no log line with {fields} (state {state['Status']}): {self.logs()}")
            time.sleep(0.2)

    def stop(self, grace_seconds: int) -> int:
        """SIGTERM (the image's STOPSIGNAL), SIGKILL after ``grace_seconds``; the exit code (137 if killed)."""
        self.podman("stop", "--time", str(grace_seconds), self.name, timeout=grace_seconds + 60)
        return int(self.podman.inspect("container", self.name)["State"]["ExitCode"])

    def kill(self, signal: str) -> None:
        self.podman("kill", "--signal", signal, self.name)

    def wait(self, timeout: float) -> int:
        """The exit code once the container has stopped on its own."""
        return int(self.podman("wait", self.name, timeout=timeout).stdout.strip())

    def remove(self) -> None:
        self.podman("rm", "--force", "--time", "0", self.name, check=False)
        if self.volume:
            self.podman("volume", "rm", "--force", self.volume, check=False)


def run_scp(
    podman: Podman, image: str, style: str, port: int, env: dict[str, str], host_network: bool = False
) -> ScpContainer:
    """Start the image detached in ``style`` with its DICOM port on 127.0.0.1:``port`` (published from the bridge,
    or with ``host_network`` the SCP's own, so that it reaches services on the host's loopback); returns once a
    worker listens."""
    name = f"dicom-store-scp-test-{style}-{os.getpid()}-{port}"
    arguments = [*RUN_STYLES[style]]
    volume = None
    if style == "ecs-task":
        # A named volume is seeded from the image's /tmp, as Fargate seeds a task's volume.
        volume = f"{name}-tmp"
        podman("volume", "create", volume)
        arguments += ["--volume", f"{volume}:/tmp"]
    if host_network:
        arguments += ["--network", "host"]
        env = {**env, "SCP_PORT": str(port)}
    else:
        arguments += ["--publish", f"127.0.0.1:{port}:{SCP_PORT}"]
    for key, value in env.items():
        arguments += ["--env", f"{key}={value}"]
    podman("run", "--detach", "--name", name, *arguments, image)
    container = ScpContainer(podman, name, port, volume)
    try:
        container.wait_for_record(event="listening")
    except BaseException:
        container.remove()
        raise
    return container
