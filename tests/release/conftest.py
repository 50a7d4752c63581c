"""Fixtures: fake AWS credentials first, then whatever the release step under test needs."""

from __future__ import annotations

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
