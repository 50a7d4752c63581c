"""The launch test plan for a real account (.taskcat.yml), checked here against the template it launches: every
region AWS HealthImaging runs in, the parameter sets that matter, every name a parameter of the template, every
required one given, every value within the parameter's constraints, and every test passing the template's Rules.

The account's own resources (VPC, subnets, certificate, key, data store, test PACS) are SSM parameters TaskCat
reads at run time; each stands here for a value of the shape that account would hold.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.cfn import Deployment

from release import project, publish
from template_gen import build_template
from template_gen.parameters import HEALTHIMAGING_REGIONS

PLAN_PATH = project.ROOT / ".taskcat.yml"
GUIDE = project.ROOT / "docs" / "deployment.md"
SSM = re.compile(r"^\$\[taskcat_ssm_(/[^\]]+)\]$")

VPC = "vpc-0123456789abcdef0"
PRIVATE = {"subnet-0aaaaaaaaaaaaaaa1": "a", "subnet-0aaaaaaaaaaaaaaa2": "b"}
PUBLIC = {"subnet-0bbbbbbbbbbbbbbb1": "a", "subnet-0bbbbbbbbbbbbbbb2": "b"}
# What each SSM parameter of the plan holds in a test account, by its shape.
ACCOUNT_VALUES = {
    "/dicom-store-scp/launch-test/vpc-id": VPC,
    "/dicom-store-scp/launch-test/private-subnet-ids": ",".join(PRIVATE),
    "/dicom-store-scp/launch-test/public-subnet-ids": ",".join(PUBLIC),
    "/dicom-store-scp/launch-test/sender-cidr": "10.20.0.0/24",
    "/dicom-store-scp/launch-test/alarm-topic-arn": "arn:aws:sns:us-east-1:111122223333:dicom-launch-test",
    "/dicom-store-scp/launch-test/certificate-arn": (
        "arn:aws:acm:us-east-1:111122223333:certificate/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"
    ),
    "/dicom-store-scp/launch-test/datastore-id": "0123456789abcdef0123456789abcdef",
    "/dicom-store-scp/launch-test/kms-key-arn": (
        "arn:aws:kms:us-east-1:111122223333:key/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"
    ),
    "/dicom-store-scp/launch-test/commitment-peers": "ORTHANC=10.20.1.15:4242",
    "/dicom-store-scp/launch-test/commitment-peers-cidr": "10.20.1.15/32",
}


@pytest.fixture(scope="module")
def plan() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(PLAN_PATH.read_text(encoding="utf-8"))
    return loaded


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    asl = (project.ROOT / "statemachine" / "import_workflow.asl.json").read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(build_template(asl).to_json())
    return loaded


def given(plan: dict[str, Any], test: str) -> dict[str, str]:
    """A test's parameters as TaskCat passes them: the project's, then the test's own."""
    return {**plan["project"].get("parameters", {}), **plan["tests"][test].get("parameters", {})}


def resolved(value: Any) -> str:
    text = str(value)
    found = SSM.match(text)
    if found:
        return ACCOUNT_VALUES[found.group(1)]
    assert "$[" not in text, f"{text}: only taskcat_ssm_ placeholders stand for the account's resources"
    return text


def constraint_failures(parameter: dict[str, Any], value: str) -> list[str]:
    """What CloudFormation would refuse of ``value`` before the Rules: type, pattern, values, lengths, bounds."""
    failures = []
    if parameter["Type"] == "Number" and not re.fullmatch(r"-?\d+(\.\d+)?", value):
        failures.append("not a number")
    if parameter["Type"] == "AWS::EC2::VPC::Id" and not re.fullmatch(r"vpc-[0-9a-f]{8,17}", value):
        failures.append("not a VPC id")
    if parameter["Type"] == "List<AWS::EC2::Subnet::Id>" and not all(
        re.fullmatch(r"subnet-[0-9a-f]{8,17}", s) for s in value.split(",")
    ):
        failures.append("not subnet ids")
    if "AllowedPattern" in parameter and not re.fullmatch(parameter["AllowedPattern"].strip("^$"), value):
        failures.append(f"does not match {parameter['AllowedPattern']}")
    if "AllowedValues" in parameter and value not in [str(v) for v in parameter["AllowedValues"]]:
        failures.append(f"not one of {parameter['AllowedValues']}")
    if not parameter.get("MinLength", 0) <= len(value) <= parameter.get("MaxLength", 4096):
        failures.append("length")
    if parameter["Type"] == "Number" and not failures:
        number = float(value)
        if number < parameter.get("MinValue", number) or number > parameter.get("MaxValue", number):
            failures.append("out of bounds")
    return failures


def test_the_plan_covers_every_healthimaging_region(plan: dict[str, Any]) -> None:
    assert plan["project"]["regions"] == list(HEALTHIMAGING_REGIONS)
    for name, test in plan["tests"].items():
        assert set(test.get("regions", HEALTHIMAGING_REGIONS)) == set(HEALTHIMAGING_REGIONS), name


def test_the_plan_launches_the_release_template_of_this_version(plan: dict[str, Any], tmp_path: Path) -> None:
    # What make publish writes: the template naming published artifacts, not the committed development one.
    release = publish.Release(
        version=project.version(),
        regions=("us-east-1",),
        account_id="111122223333",
        image_repository=publish.development_repository("111122223333"),
        artifact_bucket_prefix=publish.development_bucket_prefix("111122223333"),
        zip_path=tmp_path / "f.zip",
        zip_sha256="0" * 64,
    )
    assert project.ROOT / plan["project"]["template"] == release.template_path
    assert plan["project"]["package_lambda"] is False


def test_the_plan_has_the_parameter_sets_that_matter(plan: dict[str, Any]) -> None:
    tests = {name: {k: resolved(v) for k, v in given(plan, name).items()} for name in plan["tests"]}

    def having(**wanted: Any) -> list[str]:
        return [n for n, p in tests.items() if all(w(p) if callable(w) else p.get(k) == w for k, w in wanted.items())]

    assert having(LoadBalancerScheme="internal", TLSCertificateARN=lambda p: not p.get("TLSCertificateARN"))
    assert having(LoadBalancerScheme="internet-facing", TLSCertificateARN=lambda p: bool(p.get("TLSCertificateARN")))
    assert having(ExistingDatastoreID=lambda p: bool(p.get("ExistingDatastoreID")))
    assert having(KmsKeyArn=lambda p: bool(p.get("KmsKeyArn")))
    assert having(CommitmentPeers=lambda p: bool(p.get("CommitmentPeers")))
    # No test sends patient data in clear text across the internet.
    assert not having(AllowClearTextDicomFromTheInternet="true")


@pytest.mark.parametrize("test", ["internal-tcp", "internet-facing-tls", "existing-datastore", "customer-kms-key",
                                  "commitment-peers"])  # fmt: skip
def test_each_test_is_a_stack_cloudformation_would_create(
    plan: dict[str, Any], template: dict[str, Any], test: str
) -> None:
    parameters = template["Parameters"]
    values = {name: resolved(value) for name, value in given(plan, test).items()}
    assert set(values) <= set(parameters), f"not parameters of the template: {set(values) - set(parameters)}"
    required = {name for name, p in parameters.items() if "Default" not in p}
    assert required <= set(values), f"required parameters not given: {required - set(values)}"
    for name, value in values.items():
        assert constraint_failures(parameters[name], value) == [], (name, value)

    def described(subnets: dict[str, str]) -> dict[str, list[str]]:
        return {"VpcId": [VPC] * len(subnets), "AvailabilityZone": list(subnets.values())}

    subnets = {**PRIVATE, **PUBLIC}
    for region in HEALTHIMAGING_REGIONS:
        stack = Deployment(
            template,
            values,
            aws_values={
                name: described({s: region + subnets[s] for s in values[name].split(",")})
                for name in ("PrivateSubnetIDs", "LoadBalancerSubnetIDs")
            },
        )
        stack.pseudo["AWS::Region"] = region
        assert stack.rule_failures() == [], (test, region)


def test_the_checks_catch_what_cloudformation_refuses(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert constraint_failures(parameters["TaskCPU"], "1000")
    assert constraint_failures(parameters["PeerCIDR1"], "10.20.0.0/33")
    assert constraint_failures(parameters["ListenerPort"], "70000")
    assert constraint_failures(parameters["VpcID"], "vpc-1")
    assert constraint_failures(parameters["CommitmentPeers"], "A=h:1,B=h:2,C=h:3,D=h:4")
    assert not constraint_failures(parameters["ListenerPort"], "104")


def test_the_guide_has_the_checklist_with_every_test_and_the_open_questions(plan: dict[str, Any]) -> None:
    guide = GUIDE.read_text(encoding="utf-8")
    checklist = guide[guide.index("## Launch test in a real account") :]
    checklist = checklist[: checklist.index("\n## ", 1)]
    for name in plan["tests"]:
        assert f"`{name}`" in checklist
    for path in ACCOUNT_VALUES:
        assert path in checklist
    for item in ("IMPORTED", "N-EVENT-REPORT", "alarm", "update", "delete"):
        assert item in checklist
    # What only a real account answers (issue 22): asked there, not guessed in the template.
    for question in ("aws:SourceArn", "kms:CreateGrant", "medical-imaging.<region>.amazonaws.com", "kms:Decrypt",
                     "incoming/*"):  # fmt: skip
        assert question in checklist
