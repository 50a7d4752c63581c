"""The audit log group (template_gen/audit.py): its own retention, the stack's key, retained, named to the task."""

from __future__ import annotations

import re
from typing import Any

import pytest
from dicom_store_scp.audit.syslog import parse_url
from support.cfn import Deployment

from template_gen import parameters as p

# The values CloudWatch Logs accepts for a log group's RetentionInDays (PutRetentionPolicy).
CLOUDWATCH_RETENTION_DAYS = {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                             2922, 3288, 3653}  # fmt: skip
KMS = "arn:aws:kms:us-east-1:111122223333:key/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"


def test_retention_is_its_own_parameter_six_years_by_default(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["AuditLogRetentionDays"]
    assert parameter["Default"] == 2192  # six years, HIPAA's retention for security documentation
    assert set(parameter["AllowedValues"]) <= CLOUDWATCH_RETENTION_DAYS
    group = template["Resources"]["AuditLogGroup"]
    assert group["Properties"]["RetentionInDays"] == {"Ref": "AuditLogRetentionDays"}
    assert (group["DeletionPolicy"], group["UpdateReplacePolicy"]) == ("RetainExceptOnCreate", "Retain")


def test_encrypted_with_the_stacks_key_exactly_when_one_is_given(template: dict[str, Any]) -> None:
    with_key = Deployment(template, {"KmsKeyArn": KMS}).decided()["AuditLogGroup"]["Properties"]
    without = Deployment(template, {}).decided()["AuditLogGroup"]["Properties"]
    assert with_key["KmsKeyId"] == {"Ref": "KmsKeyArn"}
    assert "KmsKeyId" not in without


def _policy_name(policy: dict[str, Any]) -> str:
    """An inline policy's name, and the condition it exists under (an Fn::If's)."""
    if "Fn::If" in policy:
        condition, present, _ = policy["Fn::If"]
        return f"{present['PolicyName']} (if {condition})"
    return str(policy["PolicyName"])


def test_the_task_and_the_steps_that_record_an_ingest_outcome_are_told_the_group_and_may_only_write_to_it(
    template: dict[str, Any],
) -> None:
    (container,) = template["Resources"]["ScpTaskDefinition"]["Properties"]["ContainerDefinitions"]
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert environment["AUDIT_LOG_GROUP"] == {"Ref": "AuditLogGroup"}
    told = {
        name
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
        and resource["Properties"]["Environment"]["Variables"].get("AUDIT_LOG_GROUP") == {"Ref": "AuditLogGroup"}
    }
    # StoreBatch: a batch stored by STOW-RS (stow-batched), CheckStatus: an import job, RecordFailure: a batch given up.
    assert told == {"CheckStatusFunction", "StoreBatchFunction", "RecordFailureFunction"}
    writers = [
        (role, _policy_name(policy))
        for role, resource in template["Resources"].items()
        if resource["Type"] == "AWS::IAM::Role"
        for policy in resource["Properties"].get("Policies", [])
        if isinstance(policy, dict) and "GetAtt" in str(policy) and "'AuditLogGroup'" in str(policy)
    ]
    assert sorted(writers) == [
        ("CheckStatusRole", "check-status"),
        ("RecordFailureRole", "record-failure"),
        ("ScpTaskRole", "write-audit-messages"),
        ("StoreBatchRole", "write-ingest-audit-messages (if IngestByStowBatched)"),
    ]
    for role in ("CheckStatusRole", "RecordFailureRole"):
        (grant,) = [
            statement
            for statement in template["Resources"][role]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
            if statement["Resource"] == [{"Fn::GetAtt": ["AuditLogGroup", "Arn"]}]
        ]
        assert grant == {
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [{"Fn::GetAtt": ["AuditLogGroup", "Arn"]}],
        }


# --- the audit repository (AuditSyslogURL) --------------------------------------------------------------------

REPOSITORY = "tls://audit.hospital.example:6514"
REPOSITORY_NETWORK = "10.20.0.0/24"
SECRET = "arn:aws:secretsmanager:us-east-1:111122223333:secret:audit/{}-AbC123"
SECRETS_KEY = "arn:aws:kms:us-east-1:111122223333:key/1a2b3c4d-0000-4000-8000-00112233aabb"
HTTPS = ("tcp", 443, 443, "0.0.0.0/0")


def _stack(template: dict[str, Any], **overrides: str) -> Deployment:
    parameters = {"VpcID": "vpc-0a1b2c3d", "PrivateSubnetIDs": "subnet-p1", "LoadBalancerSubnetIDs": "subnet-p1"}
    subnets = {"VpcId": ["vpc-0a1b2c3d"], "AvailabilityZone": ["us-east-1a"]}
    return Deployment(
        template,
        {**parameters, "PeerCIDR1": "192.0.2.0/24", **overrides},
        aws_values={"PrivateSubnetIDs": subnets, "LoadBalancerSubnetIDs": subnets},
    )


def _task_egress(stack: Deployment) -> list[tuple[str, int, int, str]]:
    rules = [
        stack.value(r["Properties"])
        for r in stack.decided("AWS::EC2::SecurityGroupEgress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": ["ScpTaskSecurityGroup", "GroupId"]}
    ]
    rules += stack.value(stack.decided()["ScpTaskSecurityGroup"]["Properties"]["SecurityGroupEgress"])
    return sorted((r["IpProtocol"], int(r["FromPort"]), int(r["ToPort"]), r["CidrIp"]) for r in rules)


def _secrets(stack: Deployment) -> dict[str, str]:
    (container,) = stack.decided()["ScpTaskDefinition"]["Properties"]["ContainerDefinitions"]
    return {s["Name"]: stack.value(s["ValueFrom"]) for s in stack.value(container.get("Secrets", []))}


def _execution_grants(stack: Deployment) -> dict[str, list[str]]:
    return {
        action: statement["Resource"]
        for statement in stack.role_statements("ScpExecutionRole")
        for action in statement["Action"]
        if action.startswith(("secretsmanager:", "kms:"))
    }


def test_the_repository_is_reached_on_its_port_in_its_network_and_nowhere_else(template: dict[str, Any]) -> None:
    stack = _stack(template, AuditSyslogURL=REPOSITORY, AuditSyslogCIDR=REPOSITORY_NETWORK)
    assert stack.rule_failures() == []
    assert _task_egress(stack) == sorted([HTTPS, ("tcp", 6514, 6514, REPOSITORY_NETWORK)])
    assert stack.container_environment("ScpTaskDefinition")["AUDIT_SYSLOG_URL"] == REPOSITORY
    # Without a repository: HTTPS only, and the SCP is told none.
    assert _task_egress(_stack(template)) == [HTTPS]
    assert _task_egress(_stack(template, AuditSyslogCIDR=REPOSITORY_NETWORK)) == [HTTPS]
    assert _stack(template).container_environment("ScpTaskDefinition")["AUDIT_SYSLOG_URL"] == ""


def test_a_repository_without_its_network_is_refused(template: dict[str, Any]) -> None:
    (failure,) = _stack(template, AuditSyslogURL=REPOSITORY).rule_failures()
    assert "AuditSyslogCIDR" in failure


@pytest.mark.parametrize(
    ("value", "admitted"),
    [
        ("", True),
        (REPOSITORY, True),
        ("tls://10.20.0.5:6514", True),
        ("tcp://audit.example:514", False),  # ATNA's syslog is over TLS (the SCP refuses anything else too)
        ("tls://audit.example", False),
        ("tls://[fe80::1]:6514", False),  # the template reads the port after the second colon
    ],
)
def test_the_url_parameter_admits_what_the_template_and_the_scp_take(value: str, admitted: bool) -> None:
    pattern = p.AUDIT_SYSLOG_URL_PATTERN
    assert (re.fullmatch(pattern.strip("^$"), value) is not None) is admitted
    if admitted and value:
        assert parse_url(value)[1] == int(value.rsplit(":", 1)[1])


def test_each_secret_given_reaches_the_task_and_only_those_may_be_read(template: dict[str, Any]) -> None:
    ca, cert, key = (SECRET.format(name) for name in ("ca", "cert", "key"))
    base = {"AuditSyslogURL": REPOSITORY, "AuditSyslogCIDR": REPOSITORY_NETWORK}

    everything = _stack(
        template, **base, AuditSyslogCASecretArn=ca, AuditSyslogCertSecretArn=cert, AuditSyslogKeySecretArn=key,
        AuditSyslogSecretsKmsKeyArn=SECRETS_KEY,
    )  # fmt: skip
    assert everything.rule_failures() == []
    assert _secrets(everything) == {
        "AUDIT_SYSLOG_CA_PEM": ca,
        "AUDIT_SYSLOG_CERT_PEM": cert,
        "AUDIT_SYSLOG_KEY_PEM": key,
    }
    assert _execution_grants(everything) == {
        "secretsmanager:GetSecretValue": [ca, cert, key],
        "kms:Decrypt": [SECRETS_KEY],
    }
    (decrypt,) = [s for s in everything.role_statements("ScpExecutionRole") if s["Action"] == ["kms:Decrypt"]]
    assert decrypt["Condition"] == {"StringEquals": {"kms:ViaService": "secretsmanager.us-east-1.amazonaws.com"}}
    # The task role reads no secret: ECS injects them with the execution role before the SCP starts.
    assert not [s for s in everything.role_statements("ScpTaskRole") if "secretsmanager:GetSecretValue" in s["Action"]]

    ca_only = _stack(template, **base, AuditSyslogCASecretArn=ca)
    assert _secrets(ca_only) == {"AUDIT_SYSLOG_CA_PEM": ca}
    assert _execution_grants(ca_only) == {"secretsmanager:GetSecretValue": [ca]}

    none = _stack(template, **base)
    assert _secrets(none) == {} and _execution_grants(none) == {}
    # A key without secrets grants nothing.
    assert _execution_grants(_stack(template, **base, AuditSyslogSecretsKmsKeyArn=SECRETS_KEY)) == {}


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"AuditSyslogCertSecretArn": SECRET.format("cert")}, "AuditSyslogKeySecretArn"),
        ({"AuditSyslogKeySecretArn": SECRET.format("key")}, "AuditSyslogCertSecretArn"),
    ],
)
def test_a_client_certificate_needs_its_key(template: dict[str, Any], given: dict[str, str], named: str) -> None:
    base = {"AuditSyslogURL": REPOSITORY, "AuditSyslogCIDR": REPOSITORY_NETWORK}
    (failure,) = _stack(template, **base, **given).rule_failures()
    assert named in failure


def test_secrets_without_a_repository_are_refused(template: dict[str, Any]) -> None:
    (failure,) = _stack(template, AuditSyslogCASecretArn=SECRET.format("ca")).rule_failures()
    assert "AuditSyslogURL" in failure
