"""Fixtures: fake AWS credentials first, then whatever the release step under test needs."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from release import package


@pytest.fixture
def aws_credentials(monkeypatch):
    """Fake credentials and region, so nothing can reach a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture(scope="session")
def functions_zip(tmp_path_factory) -> package.Built:
    """The Lambda zip, built once for the session from the working tree's sources and lock."""
    return package.build(dist=tmp_path_factory.mktemp("dist"))


@pytest.fixture
def fake_engine(tmp_path) -> Callable[..., Path]:
    """Container engine stand-ins in ``tmp_path/bin``: ``info`` exits with ``info_exit``; every other call is
    recorded in ``<name>.calls`` (and a login's stdin in ``<name>.calls.stdin``); a push reports a digest.
    Returns the record's path."""
    folder = tmp_path / "bin"

    def make(name: str, info_exit: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        script = folder / name
        record = folder / f"{name}.calls"
        script.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = info ]; then exit {info_exit}; fi\n'
            f'echo "$@" >> "{record}"\n'
            f'if [ "$1" = login ]; then cat > "{record}.stdin"; fi\n'
            # A push reports the digest the registry stored, as each engine does: podman to --digestfile, docker
            # on its last line. The digest is the sha256 of the
            # pushed reference (test_publish.pushed_digest).
            'if [ "$1" = push ]; then\n'
            "  for reference; do :; done\n"
            '  digest="sha256:$(printf %s "$reference" | sha256sum | cut -c1-64)"\n'
            '  if [ "$2" = --digestfile ]; then printf %s "$digest" > "$3";\n'
            '  else echo "latest: digest: $digest size: 1234"; fi\n'
            "fi\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return record

    return make
