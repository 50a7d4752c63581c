"""Where the template finds its artifacts: a Mappings table no buyer edits, one template for every region."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.cfn import Deployment

from template_gen import build_template, release
from template_gen.parameters import HEALTHIMAGING_REGIONS, PARAMETERS
from template_gen.pipeline import FUNCTIONS

MARKETPLACE_IMAGE = "709825985650.dkr.ecr.us-east-1.amazonaws.com/acme/dicom-store-scp@sha256:" + "a" * 64
# S3 version ids as S3 writes them: opaque, one per region's object.
VERSIONS = {region: f"3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY+{n}MTRCxf3vjVBH40Nr8X8gdRQBpUMLUo" for n, region in
            enumerate(HEALTHIMAGING_REGIONS)}  # fmt: skip


def released(asl_text: str, artifacts: release.Artifacts) -> dict[str, Any]:
    template = build_template(asl_text)
    release.set_artifacts(template, artifacts)
    result: dict[str, Any] = json.loads(template.to_json())
    return result


def test_no_artifact_location_is_a_parameter_or_in_the_console(template: dict[str, Any]) -> None:
    words = ("image", "artifact", "bucketprefix", "lambdacode", "functioncode")
    assert not [p for p in template["Parameters"] if any(w in p.lower() for w in words)]
    groups = template["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
    assert {name for group in groups for name in group["Parameters"]} == {p.name for p in PARAMETERS}
    assert template["Mappings"][release.MAPPING] == release.DEVELOPMENT.mapping()


@pytest.mark.parametrize("region", HEALTHIMAGING_REGIONS)
def test_one_template_reads_the_code_from_the_stacks_own_regions_bucket(asl_text: str, region: str) -> None:
    artifacts = release.Artifacts(
        MARKETPLACE_IMAGE, "acme-dicom-store-scp", "dicom-store-scp/1.2.3/f-1.2.3.zip", VERSIONS
    )
    deployment = Deployment(released(asl_text, artifacts))
    deployment.pseudo["AWS::Region"] = region
    functions = deployment.of_type("AWS::Lambda::Function")
    assert len(functions) == len(FUNCTIONS)
    for function in functions.values():
        code = deployment.value(function["Properties"]["Code"])
        # By the object version that region's publish wrote: a later write to the key changes nothing.
        assert code == {
            "S3Bucket": f"acme-dicom-store-scp-{region}",
            "S3Key": "dicom-store-scp/1.2.3/f-1.2.3.zip",
            "S3ObjectVersion": VERSIONS[region],
        }
    [task] = deployment.of_type("AWS::ECS::TaskDefinition").values()
    [container] = task["Properties"]["ContainerDefinitions"]
    assert deployment.value(container["Image"]) == MARKETPLACE_IMAGE  # the same image everywhere


def test_execution_role_pulls_from_exactly_the_images_repository(asl_text: str) -> None:
    for image, repository in (
        (MARKETPLACE_IMAGE, "arn:aws:ecr:us-east-1:709825985650:repository/acme/dicom-store-scp"),
        (release.DEVELOPMENT.image_uri, "arn:aws:ecr:us-east-1:111122223333:repository/dicom-store-scp"),
    ):
        artifacts = release.Artifacts(image, "acme-dicom-store-scp", release.DEVELOPMENT.functions_key, VERSIONS)
        deployment = Deployment(released(asl_text, artifacts))
        role = deployment.resource("ScpExecutionRole")
        statements = [
            s
            for policy in deployment.value(role["Properties"]["Policies"])
            for s in policy["PolicyDocument"]["Statement"]
        ]
        pulls = [s for s in statements if "ecr:BatchGetImage" in s["Action"]]
        assert [s["Resource"] for s in pulls] in ([repository], [[repository]])


def test_artifacts_are_checked_when_named() -> None:
    key = release.DEVELOPMENT.functions_key
    for image, prefix, zip_key in (
        ("docker.io/library/python:3.11", "acme", key),
        (MARKETPLACE_IMAGE, "Acme", key),
        (MARKETPLACE_IMAGE, "a" * (release.BUCKET_PREFIX_MAX + 1), key),
        (MARKETPLACE_IMAGE, "acme", "functions/f.zip"),
    ):
        with pytest.raises(ValueError):
            release.Artifacts(image, prefix, zip_key, VERSIONS)
    for versions in ({}, {"us-east-1": "null"}, {"us-east-1": ""}, {"eu-central-1": VERSIONS["us-east-1"]}):
        with pytest.raises(ValueError):
            release.Artifacts(MARKETPLACE_IMAGE, "acme", key, versions)
    longest = release.Artifacts(MARKETPLACE_IMAGE, "a" * release.BUCKET_PREFIX_MAX, key, VERSIONS)
    assert max(len(release.artifact_bucket(longest.bucket_prefix, r)) for r in HEALTHIMAGING_REGIONS) == 63
    assert longest.by_digest and not release.DEVELOPMENT.by_digest


def test_a_release_to_some_regions_is_refused_elsewhere_before_anything_is_made(asl_text: str) -> None:
    some = {region: VERSIONS[region] for region in ("eu-west-2", "us-east-1")}
    artifacts = release.Artifacts(MARKETPLACE_IMAGE, "acme", release.DEVELOPMENT.functions_key, some)
    template = released(asl_text, artifacts)
    assert set(template["Mappings"][release.MAPPING]) == {"Image", "Functions", "us-east-1", "eu-west-2"}
    (assertion,) = template["Rules"][release.RELEASED_REGION_RULE]["Assertions"]
    assert assertion["AssertDescription"] == "This release's function code is published only in us-east-1, eu-west-2"
    for region in HEALTHIMAGING_REGIONS:
        deployment = Deployment(template)
        deployment.pseudo["AWS::Region"] = region
        assert deployment.value(assertion["Assert"]) is (region in some)
