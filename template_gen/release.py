"""Where a release's artifacts are: the template's ``ReleaseArtifacts`` mapping, and the names publishing uses.

A buyer never edits these, so they are a Mappings table rather than parameters: the console shows no field for
them, and updating a stack with a new version's template replaces them (a parameter would keep the value the
stack was created with, so an update would go on running the old image). docs/deployment.md says why.

One release template serves every supported region: the function code is read from the stack's own region's
artifact bucket, ``<BucketPrefix>-<region>`` (``Fn::Sub`` on ``AWS::Region``), by the S3 object version the
publish wrote there (``<region>`` -> ``FunctionsVersion``: anything that later writes the same key, by mistake or
not, changes nothing a stack runs), and the image from one ECR repository (AWS Marketplace's, in us-east-1; ECS
pulls across regions).

``make publish`` renders the release template with the image by digest (the digest its push reported); the
committed template carries development values: what a publish from account 111122223333 would name, the image
still by its version tag, and a placeholder for each region's object version (it is for review and tests).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dicom_store_contract.limits import HEALTHIMAGING_REGIONS
from troposphere import FindInMap, Ref, Sub, awslambda

MAPPING = "ReleaseArtifacts"

# The only key prefix of an artifact bucket that other accounts may read (the bucket policy's one grant).
ARTIFACT_PREFIX = "dicom-store-scp"

# Only ECR images: the execution role's pull permission is scoped to the image's repository ARN, which the
# template derives from the URI (account, region, repository path).
_REGISTRY = r"\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com"
_REPOSITORY = rf"{_REGISTRY}/[a-z0-9._/-]+"
_DIGEST = r"@sha256:[a-f0-9]{64}"
_TAG_OR_DIGEST = rf"(:[A-Za-z0-9._-]{{1,128}}|{_DIGEST})"
ECR_REPOSITORY_PATTERN = rf"^{_REPOSITORY}$"
ECR_IMAGE_PATTERN = rf"^{_REPOSITORY}{_TAG_OR_DIGEST}$"
ECR_IMAGE_BY_DIGEST_PATTERN = rf"^{_REPOSITORY}{_DIGEST}$"
# Bucket names are 3-63 characters; the prefix leaves room for "-" and the longest supported region.
BUCKET_PREFIX_MAX = 63 - 1 - max(len(region) for region in HEALTHIMAGING_REGIONS)
BUCKET_PREFIX_PATTERN = rf"^[a-z0-9][a-z0-9-]{{1,{BUCKET_PREFIX_MAX - 1}}}$"
KEY_PATTERN = rf"^{ARTIFACT_PREFIX}/[A-Za-z0-9._-]+/[A-Za-z0-9._-]+\.zip$"
# S3 version ids are opaque (up to 1,024 bytes); "null" is what an object written before versioning has, which
# pins nothing.
VERSION_ID_PATTERN = r"^[A-Za-z0-9._+/=-]{1,1024}$"
UNVERSIONED = "null"
# The rule that refuses a region the release has no function code in (a release to some regions only).
RELEASED_REGION_RULE = "ReleasedForTheRegion"


def artifact_key(version: str, name: str) -> str:
    """Key of one of a version's artifacts: ``dicom-store-scp/<version>/<name>``."""
    return f"{ARTIFACT_PREFIX}/{version}/{name}"


def artifact_bucket(prefix: str, region: str) -> str:
    return f"{prefix}-{region}"


@dataclass(frozen=True)
class Artifacts:
    """What one release template names: the image, and where each region's function code is."""

    image_uri: str
    bucket_prefix: str
    functions_key: str
    # Region -> the S3 version id of the zip in that region's bucket, as its PutObject answered.
    functions_versions: Mapping[str, str]

    def __post_init__(self) -> None:
        for value, pattern, what in (
            (self.image_uri, ECR_IMAGE_PATTERN, "an Amazon ECR image URI"),
            (self.bucket_prefix, BUCKET_PREFIX_PATTERN, f"a bucket name prefix of {BUCKET_PREFIX_MAX} or fewer"),
            (self.functions_key, KEY_PATTERN, f"a zip key under {ARTIFACT_PREFIX}/<version>/"),
        ):
            if not re.fullmatch(pattern.strip("^$"), value):
                raise ValueError(f"{value!r} is not {what}")
        if not self.functions_versions:
            raise ValueError("no region's function code: a release names an object version in each of its regions")
        for region, version_id in self.functions_versions.items():
            if region not in HEALTHIMAGING_REGIONS:
                raise ValueError(f"{region}: AWS HealthImaging does not run there")
            if version_id == UNVERSIONED or not re.fullmatch(VERSION_ID_PATTERN.strip("^$"), version_id):
                raise ValueError(f"{version_id!r} ({region}) is not an S3 object version id")

    @property
    def regions(self) -> tuple[str, ...]:
        """The regions the release serves, in the order of the supported regions' table."""
        return tuple(region for region in HEALTHIMAGING_REGIONS if region in self.functions_versions)

    @property
    def by_digest(self) -> bool:
        return re.fullmatch(ECR_IMAGE_BY_DIGEST_PATTERN.strip("^$"), self.image_uri) is not None

    def mapping(self) -> dict[str, dict[str, str]]:
        return {
            "Image": {"Uri": self.image_uri},
            "Functions": {"BucketPrefix": self.bucket_prefix, "Key": self.functions_key},
            **{region: {"FunctionsVersion": self.functions_versions[region]} for region in self.regions},
        }


DEVELOPMENT_ACCOUNT = "111122223333"
DEVELOPMENT_VERSION = "0.1.0"
DEVELOPMENT = Artifacts(
    image_uri=f"{DEVELOPMENT_ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/dicom-store-scp:{DEVELOPMENT_VERSION}",
    bucket_prefix=f"dicom-store-scp-artifacts-{DEVELOPMENT_ACCOUNT}",
    functions_key=artifact_key(DEVELOPMENT_VERSION, f"dicom-store-scp-functions-{DEVELOPMENT_VERSION}.zip"),
    # No publish wrote these: a stack of the committed template would fail to find its code, as it should.
    functions_versions={region: "development-unpublished" for region in HEALTHIMAGING_REGIONS},
)


def image_uri() -> FindInMap:
    """The task definition's Image."""
    return FindInMap(MAPPING, "Image", "Uri")


def functions_code() -> awslambda.Code:
    """Every function's Code: the object version the publish wrote of the version's zip, in the artifact bucket of
    the stack's region."""
    return awslambda.Code(
        S3Bucket=Sub("${Prefix}-${AWS::Region}", Prefix=FindInMap(MAPPING, "Functions", "BucketPrefix")),
        S3Key=FindInMap(MAPPING, "Functions", "Key"),
        S3ObjectVersion=FindInMap(MAPPING, Ref("AWS::Region"), "FunctionsVersion"),
    )


def set_artifacts(template: Any, artifacts: Artifacts) -> None:
    """Name ``artifacts`` in ``template`` (a troposphere Template), replacing what it named before, and refuse
    the regions they hold no function code for (before anything is created, with a message that says so)."""
    template.mappings[MAPPING] = artifacts.mapping()
    template.rules[RELEASED_REGION_RULE] = {
        "Assertions": [
            {
                "Assert": {"Fn::Contains": [list(artifacts.regions), Ref("AWS::Region")]},
                "AssertDescription": "This release's function code is published only in "
                + ", ".join(artifacts.regions),
            }
        ]
    }
