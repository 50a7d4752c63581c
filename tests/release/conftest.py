"""Fixtures: fake AWS credentials first, then whatever the release step under test needs."""

from __future__ import annotations

import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from release import package, project, publish


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


MOTO_ACCOUNT = "123456789012"
ARTIFACT_PREFIX = "acme-dicom-store-scp"


def development_release(functions_zip: package.Built, regions: tuple[str, ...], output: Path) -> publish.Release:
    """This version's release of ``functions_zip`` to ``regions`` in moto's account, the image in its development
    repository, written to ``output``."""
    return publish.Release(
        version=project.version(),
        regions=regions,
        account_id=MOTO_ACCOUNT,
        image_repository=publish.development_repository(MOTO_ACCOUNT),
        artifact_bucket_prefix=ARTIFACT_PREFIX,
        zip_path=functions_zip.path,
        zip_sha256=functions_zip.sha256,
        output=output,
    )


# What a push does to the registry, for the fake engine: an image manifest under the pushed tag in moto's ECR.
REGISTRY_PUSH = """
import json, os, sys
import boto3
repository, tag = sys.argv[1].rsplit(":", 1)
registry, name = repository.split("/", 1)
config = {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 2, "digest": "sha256:" + "1" * 64}
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": config,
    "layers": [],
})
ecr = boto3.client("ecr", region_name=registry.split(".")[3], endpoint_url=os.environ["FAKE_ECR_ENDPOINT"])
print(ecr.put_image(repositoryName=name, imageManifest=manifest, imageTag=tag)["image"]["imageId"]["imageDigest"])
"""


@pytest.fixture
def fake_engine(tmp_path) -> Callable[..., Path]:
    """Container engine stand-ins in ``tmp_path/bin``: ``info`` exits with ``info_exit``; every other call is
    recorded in ``<name>.calls`` (and a login's stdin in ``<name>.calls.stdin``); a push reports a digest.
    Returns the record's path."""
    folder = tmp_path / "bin"

    def make(name: str, info_exit: int) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        script = folder / name
        pusher = folder / "registry_push.py"
        pusher.write_text(REGISTRY_PUSH)
        record = folder / f"{name}.calls"
        script.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = info ]; then exit {info_exit}; fi\n'
            f'echo "$@" >> "{record}"\n'
            f'if [ "$1" = login ]; then cat > "{record}.stdin"; fi\n'
            # A push reports the digest the registry stored, as each engine does: podman to --digestfile, docker
            # on its last line. With FAKE_ECR_ENDPOINT (a moto_server) the push puts a manifest into that ECR
            # and reports the digest ECR gives it; otherwise the digest is the sha256 of the pushed reference
            # (test_publish.pushed_digest).
            'if [ "$1" = push ]; then\n'
            "  for reference; do :; done\n"
            '  if [ -n "$FAKE_ECR_ENDPOINT" ]; then\n'
            f'    digest="$("{sys.executable}" "{pusher}" "$reference")" || exit 1\n'
            "  else\n"
            '    digest="sha256:$(printf %s "$reference" | sha256sum | cut -c1-64)"\n'
            "  fi\n"
            '  if [ "$2" = --digestfile ]; then printf %s "$digest" > "$3";\n'
            '  else echo "latest: digest: $digest size: 1234"; fi\n'
            "fi\n"
        )
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        return record

    return make
