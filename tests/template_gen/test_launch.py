"""The launch contract (dicom_store_contract.launch) is what the template builds: `dicom-store-scp preflight` checks
an account against those facts, so a template that calls another service from the task, encrypts another resource
with the customer's key or reserves Lambda concurrency must change the contract too (and the preflight with it)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Any

from dicom_store_contract import launch

# Resource types that take the customer's key (KmsKeyArn), and the service that then uses it.
KEY_TAKING_TYPES = {
    "AWS::S3::Bucket": "s3",
    # The SCP's S3_KMS_KEY_ID: its uploads ask S3 for SSE-KMS with the key.
    "AWS::ECS::TaskDefinition": "s3",
    "AWS::DynamoDB::Table": "dynamodb",
    "AWS::Logs::LogGroup": "logs",
    "AWS::SQS::Queue": "sqs",
    "AWS::HealthImaging::Datastore": "medical-imaging",
}


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for inner in value.values():
            yield from _walk(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _walk(inner)


def _statements(role: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every statement of a role's inline policies, including those present only with a condition (Fn::If)."""
    for node in _walk(role["Properties"].get("Policies", [])):
        if isinstance(node, dict) and "PolicyDocument" in node:
            yield from node["PolicyDocument"]["Statement"]


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return action if isinstance(action, list) else [action]


def test_the_task_calls_exactly_the_services_the_preflight_checks_routes_to(template):
    resources = template["Resources"]
    roles = [resources["ScpTaskRole"], resources["ScpExecutionRole"]]
    called = {a.split(":")[0] for role in roles for s in _statements(role) for a in _actions(s)} - {"kms"}

    assert called == {
        endpoint.iam_prefix
        for endpoint in (*launch.TASK_ENDPOINTS, *launch.STOW_ENDPOINTS, *launch.AUDIT_SECRETS_ENDPOINTS)
    }
    network = resources["ScpService"]["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == ("ENABLED" if launch.TASK_ASSIGNS_PUBLIC_IP else "DISABLED")


def test_the_functions_run_outside_the_vpc_and_reserve_what_the_contract_says(template):
    functions = [r for r in template["Resources"].values() if r["Type"] == "AWS::Lambda::Function"]

    assert len(functions) == launch.LAMBDA_FUNCTIONS
    # Outside the VPC: Step Functions and HealthImaging need no route from the buyer's subnets.
    assert not any("VpcConfig" in f["Properties"] for f in functions)
    reserved = [f["Properties"].get("ReservedConcurrentExecutions") for f in functions]
    assert sum(r for r in reserved if isinstance(r, int)) == launch.LAMBDA_RESERVED_CONCURRENCY


def test_the_key_users_are_the_services_that_take_the_key(template):
    key = {"Ref": "KmsKeyArn"}
    taking = set()
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::IAM::Role" or key not in _walk(resource.get("Properties", {})):
            continue
        assert resource["Type"] in KEY_TAKING_TYPES, f"{resource['Type']} takes the key: add it to launch.KEY_USERS"
        taking.add(KEY_TAKING_TYPES[resource["Type"]])

    assert taking == {user.service for user in launch.KEY_USERS}


def test_every_roles_use_of_the_key_is_within_its_key_users_actions(template):
    users = {user.service: user for user in launch.KEY_USERS}
    used = set()
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::IAM::Role":
            continue
        for statement in _statements(resource):
            via = (statement.get("Condition") or {}).get("StringEquals", {}).get("kms:ViaService")
            if via is None or statement["Resource"] != [{"Ref": "KmsKeyArn"}]:
                continue  # not the stack's key (the audit secrets' own key, say)
            service = via["Fn::Sub"].split(".")[0]
            used.add(service)
            for action in _actions(statement):
                assert any(fnmatch.fnmatchcase(action, granted) for granted in users[service].actions), (
                    service,
                    action,
                )

    # Through IAM: every user but the one that is its own principal (CloudWatch Logs).
    assert used == {user.service for user in launch.KEY_USERS if not user.service_principal}


def test_the_scaling_defaults_are_the_contracts(template):
    parameters = template["Parameters"]
    deployment = template["Resources"]["ScpService"]["Properties"]["DeploymentConfiguration"]

    assert parameters["TaskCPU"]["Default"] == launch.TASK_CPU_DEFAULT
    assert parameters["TaskCPU"]["AllowedValues"] == list(launch.FARGATE_CPU_MEMORY)
    assert parameters["TaskDesiredCount"]["Default"] == launch.TASK_DESIRED_COUNT_DEFAULT
    assert parameters["AutoscaleMaxCapacity"]["Default"] == launch.AUTOSCALE_MAX_CAPACITY_DEFAULT
    assert deployment["MaximumPercent"] == launch.DEPLOYMENT_MAXIMUM_PERCENT
