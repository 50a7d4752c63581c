"""The audit log group (template_gen/audit.py): its own retention, the stack's key, retained, named to the task."""

from __future__ import annotations

from typing import Any

from support.cfn import Deployment

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


def test_the_task_and_check_status_are_told_the_group_and_may_only_write_to_it(template: dict[str, Any]) -> None:
    (container,) = template["Resources"]["ScpTaskDefinition"]["Properties"]["ContainerDefinitions"]
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert environment["AUDIT_LOG_GROUP"] == {"Ref": "AuditLogGroup"}
    told = {
        name
        for name, resource in template["Resources"].items()
        if resource["Type"] == "AWS::Lambda::Function"
        and resource["Properties"]["Environment"]["Variables"].get("AUDIT_LOG_GROUP") == {"Ref": "AuditLogGroup"}
    }
    assert told == {"CheckStatusFunction"}
    writers = [
        (role, policy["PolicyName"])
        for role, resource in template["Resources"].items()
        if resource["Type"] == "AWS::IAM::Role"
        for policy in resource["Properties"].get("Policies", [])
        if isinstance(policy, dict) and "GetAtt" in str(policy) and "'AuditLogGroup'" in str(policy)
    ]
    assert writers == [("CheckStatusRole", "check-status"), ("ScpTaskRole", "write-audit-messages")]
    (grant,) = [
        statement
        for statement in template["Resources"]["CheckStatusRole"]["Properties"]["Policies"][0]["PolicyDocument"][
            "Statement"
        ]
        if statement["Resource"] == [{"Fn::GetAtt": ["AuditLogGroup", "Arn"]}]
    ]
    assert grant == {
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": [{"Fn::GetAtt": ["AuditLogGroup", "Arn"]}],
    }
