"""``make publish``: the image to ECR, the Lambda zip to each region's artifact bucket, and one release template
per region whose defaults name exactly those artifacts.

A template's parameter defaults cannot vary by region, and the function code must sit in a bucket of the
stack's own region, so every region gets its own rendered template. Published artifacts are immutable: an
existing zip of other bytes, or an image tag already taken, stops the run instead of being overwritten.

``--dry-run`` prints every action and calls nothing: no AWS API, no container engine.
"""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from release import image, project
from release.templates import release_template_text

TEMPLATE_NAME = "dicom-store-scp.yaml"


class PublishError(RuntimeError):
    """A release cannot be published as asked; nothing after the failing step was done."""


@dataclass(frozen=True)
class Release:
    version: str
    regions: tuple[str, ...]
    account_id: str
    artifact_bucket_prefix: str
    zip_path: Path
    zip_sha256: str
    output: Path = project.DIST / "release"

    def artifact_bucket(self, region: str) -> str:
        return f"{self.artifact_bucket_prefix}-{self.account_id}-{region}"

    @property
    def lambda_key(self) -> str:
        return f"functions/{self.zip_path.name}"

    def registry(self, region: str) -> str:
        return f"{self.account_id}.dkr.ecr.{region}.amazonaws.com"

    def image_uri(self, region: str) -> str:
        return f"{self.registry(region)}/{project.IMAGE_REPOSITORY}:{self.version}"

    def template_path(self, region: str) -> Path:
        return self.output / self.version / region / TEMPLATE_NAME


@dataclass
class Step:
    description: str
    run: Callable[[], None]


@dataclass
class Plan:
    release: Release
    steps: list[Step] = field(default_factory=list)

    def add(self, description: str, run: Callable[[], None]) -> None:
        self.steps.append(Step(description, run))

    def execute(self, dry_run: bool, say: Callable[[str], None] = print) -> None:
        for number, step in enumerate(self.steps, 1):
            say(f"[{'dry-run' if dry_run else 'publish'} {number}/{len(self.steps)}] {step.description}")
            if not dry_run:
                step.run()


def check_version(version: str) -> str:
    declared = project.version()
    if version != declared:
        raise PublishError(f"VERSION={version} but setup.cfg says {declared}: one version names every artifact")
    if not re.fullmatch(r"\d+\.\d+\.\d+([.-]?[A-Za-z0-9]+)*", version):
        raise PublishError(f"{version!r} is not a release version")
    return version


# --- the steps ---------------------------------------------------------------------------------------------


def ensure_repository(ecr: Any) -> None:
    try:
        ecr.describe_repositories(repositoryNames=[project.IMAGE_REPOSITORY])
    except ClientError as error:
        if error.response["Error"]["Code"] != "RepositoryNotFoundException":
            raise
        ecr.create_repository(
            repositoryName=project.IMAGE_REPOSITORY,
            # A released tag never moves: the template that names it must keep meaning the same image.
            imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
            encryptionConfiguration={"encryptionType": "AES256"},
        )


def push_image(ecr: Any, engine: image.Engine, local: str, remote: str) -> None:
    token = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(token["authorizationToken"]).decode().partition(":")
    # The password goes through stdin: on the command line it would show in the process list.
    subprocess.run(
        [engine.path, "login", "--username", user, "--password-stdin", token["proxyEndpoint"]],
        input=password,
        text=True,
        check=True,
    )
    subprocess.run([engine.path, "tag", local, remote], check=True)
    subprocess.run([engine.path, "push", remote], check=True)


def upload_zip(s3: Any, bucket: str, key: str, path: Path, sha256: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as error:
        raise PublishError(f"artifact bucket {bucket} is missing or not ours ({error})") from None
    try:
        existing = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response["Error"]["Code"] not in {"404", "NoSuchKey", "NotFound"}:
            raise
    else:
        if existing.get("Metadata", {}).get("sha256") == sha256:
            return  # the same bytes are there already: publishing again is a no-op
        raise PublishError(f"s3://{bucket}/{key} holds other bytes: bump the version instead of overwriting")
    with path.open("rb") as body:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType="application/zip",
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": sha256},
            ServerSideEncryption="AES256",
        )


def write_template(release: Release, region: str) -> None:
    path = release.template_path(region)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        release_template_text(
            release.version, release.image_uri(region), release.artifact_bucket(region), release.lambda_key
        ),
        encoding="utf-8",
    )


# --- the plan ----------------------------------------------------------------------------------------------


def _boto3_client(service: str, region: str) -> Any:
    session: Any = boto3.session.Session(region_name=region)
    return session.client(service)


def plan(
    release: Release,
    engine: image.Engine | None,
    skip_image: bool = False,
    client: Callable[[str, str], Any] = _boto3_client,
) -> Plan:
    """Every action of the release, in order; ``client(service, region)`` is called only when a step runs."""
    steps = Plan(release)
    local = image.local_tag(release.version)
    engine_name = engine.name if engine else "docker"

    def ensure(region: str) -> None:
        ensure_repository(client("ecr", region))

    def push(region: str) -> None:
        push_image(client("ecr", region), _require(engine), local, release.image_uri(region))

    def upload(region: str) -> None:
        s3 = client("s3", region)
        upload_zip(s3, release.artifact_bucket(region), release.lambda_key, release.zip_path, release.zip_sha256)

    for region in release.regions:
        remote = release.image_uri(region)
        bucket = release.artifact_bucket(region)
        steps.add(
            f"ECR {region}: ensure repository {project.IMAGE_REPOSITORY} (immutable tags, scan on push)",
            partial(ensure, region),
        )
        if skip_image:
            steps.add(f"image {remote}: not pushed (--skip-image)", _nothing)
        else:
            steps.add(
                f"image {region}: {engine_name} login --username AWS --password-stdin "
                f"https://{release.registry(region)} (token from ecr:GetAuthorizationToken); "
                f"{engine_name} tag {local} {remote}; {engine_name} push {remote}",
                partial(push, region),
            )
        steps.add(
            f"S3 {region}: put {release.zip_path.name} (sha256 {release.zip_sha256}) to "
            f"s3://{bucket}/{release.lambda_key} unless those bytes are there",
            partial(upload, region),
        )
        steps.add(
            f"template {region}: write {release.template_path(region)} with ContainerImageURI={remote}, "
            f"LambdaArtifactBucket={bucket}, LambdaArtifactKey={release.lambda_key}",
            partial(write_template, release, region),
        )
    return steps


def _nothing() -> None:
    return None


def _require(engine: image.Engine | None) -> image.Engine:
    if engine is None:
        _, reasons = image.find_engine()
        raise PublishError(image.no_engine_message("The image cannot be pushed (--skip-image to go on).", reasons))
    return engine


def account_id(dry_run: bool, given: str | None) -> str:
    if given:
        if not re.fullmatch(r"\d{12}", given):
            raise PublishError(f"{given!r} is not an AWS account id")
        return given
    if dry_run:
        raise PublishError("--dry-run calls no AWS API, so it needs --account-id (ACCOUNT_ID=...)")
    return str(boto3.client("sts").get_caller_identity()["Account"])


def zip_sha256(path: Path) -> str:
    checksum = path.with_name(path.name + ".sha256")
    if not path.is_file() or not checksum.is_file():
        raise PublishError(f"{path} is not built: run make package")
    return checksum.read_text(encoding="utf-8").split()[0]
