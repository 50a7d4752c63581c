"""``make publish``: the image to one ECR repository, the Lambda zip to each region's artifact bucket, and ONE
release template for every supported region, naming the image by the digest its push reported.

- Image: ``IMAGE_REPOSITORY`` is the seller's AWS Marketplace repository (``709825985650.dkr.ecr.us-east-1.
  amazonaws.com/<seller>/<name>``: Marketplace made it, publishing only pushes) or, by default, a development
  repository in the publishing account's us-east-1 registry (made when missing, with immutable tags). The image
  is tagged with the version; the template names ``<repository>@sha256:<digest>``, so a moved tag changes nothing.
- Function code: ``<ARTIFACT_BUCKET_PREFIX>-<region>`` in every region served, key
  ``dicom-store-scp/<version>/<zip>``. The bucket is made when missing; its policy lets anyone read objects
  under ``dicom-store-scp/`` and nothing else (no listing, no other key, no write). Published objects are
  immutable: they are written with ``If-None-Match: *`` (S3 refuses to replace an existing key), an existing
  key with other bytes stops the run, and versioning keeps every version should anything else replace one. The
  version id each region's PutObject answered (or, when the same bytes were there already, the one holding
  them) is what the template names: a later write to the key, by any means, does not change what stacks run.
- Template: rendered once the zip is in every region (template_gen.release's mapping filled in: the image's
  digest, each region's object version), written to ``dist/release/<version>/`` with ``artifacts.json`` (the
  same facts, for the listing), and uploaded next to the zip in every region's bucket, so its S3 URL launches
  it in that region.

``--dry-run`` prints every action and calls nothing: no AWS API, no container engine.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from release import image, project
from release.templates import release_template_text
from template_gen import release as layout

TEMPLATE_NAME = "dicom-store-scp.yaml"
RECORD_NAME = "artifacts.json"
DEVELOPMENT_IMAGE_REGION = "us-east-1"
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


class PublishError(RuntimeError):
    """A release cannot be published as asked; nothing after the failing step was done."""


def development_repository(account_id: str) -> str:
    """The default image repository: the publishing account's own, usable for testing in that account."""
    return f"{account_id}.dkr.ecr.{DEVELOPMENT_IMAGE_REGION}.amazonaws.com/{project.IMAGE_REPOSITORY}"


def development_bucket_prefix(account_id: str) -> str:
    """The default bucket prefix: bucket names are global, so the account id keeps a developer's apart."""
    return f"dicom-store-scp-artifacts-{account_id}"


@dataclass(frozen=True)
class Release:
    version: str
    regions: tuple[str, ...]
    account_id: str
    image_repository: str
    artifact_bucket_prefix: str
    zip_path: Path
    zip_sha256: str
    output: Path = project.DIST / "release"

    def __post_init__(self) -> None:
        if not re.fullmatch(layout.ECR_REPOSITORY_PATTERN.strip("^$"), self.image_repository):
            raise PublishError(
                f"{self.image_repository!r} is not an ECR repository URI "
                "(<account>.dkr.ecr.<region>.amazonaws.com/<name>, no tag)"
            )
        if not re.fullmatch(layout.BUCKET_PREFIX_PATTERN.strip("^$"), self.artifact_bucket_prefix):
            raise PublishError(
                f"{self.artifact_bucket_prefix!r} is no bucket prefix: lower-case letters, digits and hyphens, "
                f"at most {layout.BUCKET_PREFIX_MAX} characters (<prefix>-<region> is the bucket's name)"
            )
        unsupported = sorted(set(self.regions) - set(layout.HEALTHIMAGING_REGIONS))
        if unsupported:
            raise PublishError(
                f"{', '.join(unsupported)}: AWS HealthImaging does not run there "
                f"(supported: {', '.join(layout.HEALTHIMAGING_REGIONS)})"
            )

    def artifact_bucket(self, region: str) -> str:
        return layout.artifact_bucket(self.artifact_bucket_prefix, region)

    @property
    def lambda_key(self) -> str:
        return layout.artifact_key(self.version, self.zip_path.name)

    @property
    def template_key(self) -> str:
        return layout.artifact_key(self.version, TEMPLATE_NAME)

    def template_url(self, region: str) -> str:
        return f"https://{self.artifact_bucket(region)}.s3.{region}.amazonaws.com/{self.template_key}"

    @property
    def registry(self) -> str:
        return self.image_repository.split("/", 1)[0]

    @property
    def registry_account(self) -> str:
        return self.registry.split(".")[0]

    @property
    def registry_region(self) -> str:
        return self.registry.split(".")[3]

    @property
    def repository_name(self) -> str:
        return self.image_repository.split("/", 1)[1]

    @property
    def own_repository(self) -> bool:
        """Whether the repository is in the publishing account (else Marketplace's, which publishing never makes)."""
        return self.registry_account == self.account_id

    @property
    def image_tag_uri(self) -> str:
        return f"{self.image_repository}:{self.version}"

    def image_by_digest(self, digest: str) -> str:
        return f"{self.image_repository}@{digest}"

    @property
    def template_path(self) -> Path:
        return self.output / self.version / TEMPLATE_NAME

    @property
    def record_path(self) -> Path:
        return self.output / self.version / RECORD_NAME


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


# --- the image ---------------------------------------------------------------------------------------------


def ensure_repository(ecr: Any, name: str) -> None:
    try:
        ecr.describe_repositories(repositoryNames=[name])
    except ClientError as error:
        if error.response["Error"]["Code"] != "RepositoryNotFoundException":
            raise
        ecr.create_repository(
            repositoryName=name,
            # A released tag never moves (the template names the digest in any case).
            imageTagMutability="IMMUTABLE",
            imageScanningConfiguration={"scanOnPush": True},
            encryptionConfiguration={"encryptionType": "AES256"},
        )


def push_image(ecr: Any, engine: image.Engine, local: str, remote: str) -> str:
    """Log in to ``remote``'s registry, tag and push; the digest the registry stored, as the engine reports it."""
    token = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(token["authorizationToken"]).decode().partition(":")
    registry = "https://" + remote.split("/", 1)[0]
    # The password goes through stdin: on the command line it would show in the process list.
    subprocess.run(
        [engine.path, "login", "--username", user, "--password-stdin", registry],
        input=password,
        text=True,
        check=True,
    )
    subprocess.run([engine.path, "tag", local, remote], check=True)
    if engine.name == "podman":
        with tempfile.TemporaryDirectory() as folder:
            digest_file = Path(folder) / "digest"
            subprocess.run([engine.path, "push", "--digestfile", str(digest_file), remote], check=True)
            reported = digest_file.read_text(encoding="utf-8") if digest_file.exists() else ""
    else:
        # docker prints "<tag>: digest: sha256:<hex> size: <n>" when the push is done.
        pushed = subprocess.run([engine.path, "push", remote], check=True, capture_output=True, text=True)
        print(pushed.stdout, end="")
        found = re.search(r"digest: (sha256:[a-f0-9]{64})", pushed.stdout)
        reported = found.group(1) if found else ""
    digest = reported.strip()
    if not _DIGEST.fullmatch(digest):
        raise PublishError(f"{engine.name} push {remote} reported no image digest ({reported!r})")
    return digest


def check_registry_digest(ecr: Any, release: Release, digest: str) -> None:
    """The version's tag in the account's own repository must hold the image the engine says it pushed.

    (Marketplace's registry is not checked: a seller may push there, not necessarily describe.)
    """
    try:
        details = ecr.describe_images(
            registryId=release.registry_account,
            repositoryName=release.repository_name,
            imageIds=[{"imageTag": release.version}],
        )["imageDetails"]
    except ClientError as error:
        raise PublishError(f"{release.image_tag_uri} is not in ECR after the push ({error})") from None
    held = {detail["imageDigest"] for detail in details}
    if held != {digest}:
        raise PublishError(
            f"the push reported {digest}, but ECR holds {', '.join(sorted(held))} for {release.image_tag_uri}"
        )


# --- the artifact buckets ----------------------------------------------------------------------------------


def artifact_bucket_policy(bucket: str) -> dict[str, Any]:
    """Anyone may read the release artifacts, and only them: s3:GetObject under the artifact prefix, and
    s3:GetObjectVersion, which reading a given version (the template's S3ObjectVersion) needs besides.

    Nothing grants s3:ListBucket, any other key, or any write; the owner's own access comes from its IAM
    identity, not from this policy.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReleaseArtifactsReadableByAnyAccount",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": f"arn:aws:s3:::{bucket}/{layout.ARTIFACT_PREFIX}/*",
            }
        ],
    }


def ensure_artifact_bucket(s3: Any, bucket: str, region: str, account_id: str) -> None:
    """The bucket, ours, with versioning, default encryption, ACLs disabled and public ACLs blocked.

    Block Public Access keeps blocking ACLs; it must admit a public *policy*, as the read grant to every
    account is public in S3's sense.
    """
    try:
        s3.head_bucket(Bucket=bucket, ExpectedBucketOwner=account_id)
    except ClientError as error:
        code = error.response["Error"]["Code"]
        if code not in _MISSING:
            raise PublishError(f"artifact bucket {bucket} exists but is not this account's ({code})") from None
        options = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        s3.create_bucket(Bucket=bucket, ObjectOwnership="BucketOwnerEnforced", **options)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": False,
            "RestrictPublicBuckets": False,
        },
    )


def put_artifact_policy(s3: Any, bucket: str) -> None:
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(artifact_bucket_policy(bucket)))


def upload_once(s3: Any, bucket: str, key: str, body: bytes, sha256: str, content_type: str) -> str:
    """Write ``body`` unless the key exists; the same bytes there already are fine, other bytes are refused.

    Returns the object version holding ``body``: the one the write answered, or the existing one.
    """
    try:
        written = s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            IfNoneMatch="*",
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": sha256},
            ServerSideEncryption="AES256",
        )
        return _version_id(bucket, key, written)
    except ClientError as error:
        if error.response["Error"]["Code"] not in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
            raise
    existing = s3.head_object(Bucket=bucket, Key=key)
    if existing.get("Metadata", {}).get("sha256") != sha256:
        raise PublishError(f"s3://{bucket}/{key} holds other bytes: bump the version instead of overwriting")
    return _version_id(bucket, key, existing)


def _version_id(bucket: str, key: str, answer: dict[str, Any]) -> str:
    version_id = str(answer.get("VersionId") or layout.UNVERSIONED)
    if version_id == layout.UNVERSIONED:
        raise PublishError(f"s3://{bucket}/{key} has no object version: the bucket's versioning is not enabled")
    return version_id


# --- the plan ----------------------------------------------------------------------------------------------


def _boto3_client(service: str, region: str) -> Any:
    session: Any = boto3.session.Session(region_name=region)
    return session.client(service)


def plan(
    release: Release,
    engine: image.Engine | None,
    image_digest: str | None = None,
    client: Callable[[str, str], Any] = _boto3_client,
) -> Plan:
    """Every action of the release, in order; ``client(service, region)`` is called only when a step runs.

    ``image_digest``: the image is in the repository already (pushed before); no engine is needed.
    """
    if image_digest is not None and not _DIGEST.fullmatch(image_digest):
        raise PublishError(f"{image_digest!r} is not an image digest (sha256:<64 hex digits>)")
    steps = Plan(release)
    local = image.local_tag(release.version)
    engine_name = engine.name if engine else "docker"
    pushed: dict[str, str] = {} if image_digest is None else {"digest": image_digest}
    rendered: dict[str, bytes] = {}
    # Region -> the object version of the zip there, as its upload answered.
    versions: dict[str, str] = {}

    def ensure() -> None:
        ensure_repository(client("ecr", release.registry_region), release.repository_name)

    def push() -> None:
        ecr = client("ecr", release.registry_region)
        digest = push_image(ecr, _require(engine), local, release.image_tag_uri)
        if release.own_repository:
            check_registry_digest(ecr, release, digest)
        pushed["digest"] = digest

    def render() -> None:
        if "digest" not in pushed:
            raise PublishError("the image's digest is unknown: push it, or give --image-digest")
        artifacts = layout.Artifacts(
            image_uri=release.image_by_digest(pushed["digest"]),
            bucket_prefix=release.artifact_bucket_prefix,
            functions_key=release.lambda_key,
            functions_versions={region: versions[region] for region in release.regions},
        )
        text = release_template_text(release.version, artifacts)
        release.template_path.parent.mkdir(parents=True, exist_ok=True)
        release.template_path.write_text(text, encoding="utf-8")
        release.record_path.write_text(json.dumps(_record(release, artifacts), indent=2) + "\n", encoding="utf-8")
        rendered["template"] = text.encode("utf-8")

    def bucket(region: str) -> None:
        ensure_artifact_bucket(client("s3", region), release.artifact_bucket(region), region, release.account_id)

    def upload_code(region: str) -> None:
        versions[region] = upload_once(
            client("s3", region),
            release.artifact_bucket(region),
            release.lambda_key,
            release.zip_path.read_bytes(),
            release.zip_sha256,
            "application/zip",
        )

    def upload_template(region: str) -> None:
        template = rendered["template"]
        upload_once(
            client("s3", region),
            release.artifact_bucket(region),
            release.template_key,
            template,
            hashlib.sha256(template).hexdigest(),
            "application/x-yaml",
        )

    def policy(region: str) -> None:
        put_artifact_policy(client("s3", region), release.artifact_bucket(region))

    if image_digest is not None:
        steps.add(f"image: {release.image_by_digest(image_digest)} given, not pushed", _nothing)
    else:
        if release.own_repository:
            steps.add(
                f"ECR {release.registry_region}: ensure repository {release.repository_name} "
                "(immutable tags, scan on push)",
                ensure,
            )
        steps.add(
            f"image: {engine_name} login --username AWS --password-stdin https://{release.registry} "
            f"(token from ecr:GetAuthorizationToken); {engine_name} tag {local} {release.image_tag_uri}; "
            f"{engine_name} push {release.image_tag_uri}, keeping the digest it reports",
            push,
        )
    for region in release.regions:
        name = release.artifact_bucket(region)
        steps.add(
            f"S3 {region}: ensure bucket {name} (this account's; versioning, SSE-S3, ACLs disabled)",
            partial(bucket, region),
        )
        steps.add(
            f"S3 {region}: put s3://{name}/{release.lambda_key} (sha256 {release.zip_sha256}) with "
            "If-None-Match: * (an existing key of other bytes stops), keeping the object version it answers",
            partial(upload_code, region),
        )
    steps.add(
        f"template: write {release.template_path} and {release.record_path.name}, one for every region, with the "
        f"image {release.image_repository}@<digest>, function code s3://{release.artifact_bucket_prefix}-<region>/"
        f"{release.lambda_key} at each region's object version",
        render,
    )
    for region in release.regions:
        name = release.artifact_bucket(region)
        steps.add(
            f"S3 {region}: put s3://{name}/{release.template_key} with If-None-Match: *",
            partial(upload_template, region),
        )
        steps.add(
            f"S3 {region}: bucket policy of {name}: s3:GetObject(Version) on {layout.ARTIFACT_PREFIX}/* for any "
            f"account, nothing else; launch with {release.template_url(region)}",
            partial(policy, region),
        )
    return steps


def _nothing() -> None:
    return None


def _record(release: Release, artifacts: layout.Artifacts) -> dict[str, Any]:
    """What the release published, for the listing and for whoever checks a stack against it."""
    return {
        "version": release.version,
        "image": artifacts.image_uri,
        "functions": {
            region: {
                "bucket": release.artifact_bucket(region),
                "key": artifacts.functions_key,
                "versionId": artifacts.functions_versions[region],
                "sha256": release.zip_sha256,
            }
            for region in artifacts.regions
        },
        "templateUrls": {region: release.template_url(region) for region in artifacts.regions},
    }


def _require(engine: image.Engine | None) -> image.Engine:
    if engine is None:
        _, reasons = image.find_engine()
        raise PublishError(image.no_engine_message("The image cannot be pushed (--image-digest to go on).", reasons))
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
