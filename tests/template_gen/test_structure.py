"""What the template does for a deployer, read from the rendered template with its Conditions evaluated."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from template_gen.common import DEREGISTRATION_DELAY_SECONDS, STOP_TIMEOUT_SECONDS
from template_gen.parameters import FARGATE_CPU_MEMORY, HEALTHIMAGING_REGIONS

NO_VALUE = object()

# The SCP's configuration contract (DESIGN.md, issue 5); STORAGE_DIR is the local store, unused in AWS.
CONTAINER_CONTRACT = {
    # Storage commitment (container/dicom_store_scp/commitment.py, template_gen/commitment.py).
    "INSTANCE_TABLE_NAME",
    "COMMITMENT_TABLE_NAME",
    "COMMITMENT_PEERS",
    "SCP_PORT",
    "AE_TITLE",
    "REQUIRE_CALLED_AE_TITLE",
    "REQUIRE_CALLING_AE_TITLE",
    "DIMSE_TIMEOUT",
    "NETWORK_TIMEOUT",
    "ACSE_TIMEOUT",
    "MAXIMUM_ASSOCIATIONS",
    "MAXIMUM_PDU_SIZE",
    "SUPPORTED_SOP_CLASS_UIDS",
    "LOG_LEVEL",
    "DICOM_BUCKET",
    "DICOM_PREFIX",
    "PEER_CIDRS",
    "SHUTDOWN_GRACE_SECONDS",
    "BATCH_MAX_INSTANCES",
    "BATCH_MAX_BYTES",
    "MAX_POOL_CONNECTIONS",
    "S3_SSE",
    "S3_KMS_KEY_ID",
    "WORKERS",
}
# docs/contracts.md
LAMBDA_CONTRACT = {
    "JOB_TABLE_NAME",
    "INSTANCE_TABLE_NAME",
    "STATE_MACHINE_ARN",
    "DATASTORE_ID",
    "DATA_ACCESS_ROLE_ARN",
    "DICOM_BUCKET",
    "DICOM_PREFIX",
    "RESULTS_BUCKET",
    "SWEEP_MIN_AGE_MINUTES",
    "LOG_LEVEL",
    "POWERTOOLS_SERVICE_NAME",
}
HANDLERS = {
    "TriggerImportFunction": "functions.trigger_import.handler",
    "StartImportJobFunction": "functions.start_import_job.handler",
    "CheckStatusFunction": "functions.check_status.handler",
    "RecordFailureFunction": "functions.record_failure.handler",
    "SweeperFunction": "functions.sweeper.handler",
}
# Actions that have no resource type, so IAM accepts only "*" for them.
STAR_ONLY_ACTIONS = {
    "ecr:GetAuthorizationToken",
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}


class Stack:
    """The template as CloudFormation would see it for one set of parameter values (Conditions evaluated)."""

    def __init__(self, template: dict[str, Any], **overrides: str) -> None:
        self.template = template
        self.params = {name: str(p.get("Default", "")) for name, p in template["Parameters"].items()}
        self.params.update(PeerCIDR1="192.0.2.0/24", VpcCIDR="10.0.0.0/16")
        self.params.update(overrides)

    def condition(self, name: str) -> bool:
        return bool(self._eval(self.template["Conditions"][name]))

    def _eval(self, node: Any) -> Any:
        if isinstance(node, dict) and len(node) == 1:
            ((key, value),) = node.items()
            if key == "Ref":
                return self.params.get(value, f"<{value}>")
            if key == "Fn::Equals":
                return self._eval(value[0]) == self._eval(value[1])
            if key == "Fn::Not":
                return not self._eval(value[0])
            if key == "Fn::And":
                return all(self._eval(v) for v in value)
            if key == "Fn::Or":
                return any(self._eval(v) for v in value)
            if key == "Condition":
                return self.condition(value)
        return node

    def resolve(self, node: Any) -> Any:
        """``node`` with every Fn::If decided and AWS::NoValue removed; other intrinsics left as they are."""
        if isinstance(node, dict):
            if node == {"Ref": "AWS::NoValue"}:
                return NO_VALUE
            if set(node) == {"Fn::If"}:
                cond, if_true, if_false = node["Fn::If"]
                return self.resolve(if_true if self.condition(cond) else if_false)
            resolved = {k: self.resolve(v) for k, v in node.items()}
            return {k: v for k, v in resolved.items() if v is not NO_VALUE}
        if isinstance(node, list):
            return [v for v in (self.resolve(item) for item in node) if v is not NO_VALUE]
        return node

    def resources(self, type_: str | None = None) -> dict[str, dict[str, Any]]:
        return {
            name: self.resolve(r)
            for name, r in self.template["Resources"].items()
            if (type_ is None or r["Type"] == type_) and ("Condition" not in r or self.condition(r["Condition"]))
        }


def refs(node: Any) -> set[str]:
    """Names a value refers to, by Ref, GetAtt or ${...} in Sub."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref":
                found.add(value)
            elif key == "Fn::GetAtt":
                found.add(value[0])
            elif key == "Fn::Sub":
                text = value if isinstance(value, str) else value[0]
                found |= {v.split(".")[0] for v in re.findall(r"\$\{([A-Za-z0-9:.]+)\}", text)}
                found |= refs(value)
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def listener(stack: Stack) -> dict[str, Any]:
    (only,) = stack.resources("AWS::ElasticLoadBalancingV2::Listener").values()
    return only["Properties"]


def test_tls_listener_exactly_when_a_certificate_is_given(template: dict[str, Any]) -> None:
    cert = "arn:aws:acm:us-east-1:111122223333:certificate/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"
    tls = listener(Stack(template, TLSCertificateARN=cert))
    assert tls["Protocol"] == "TLS"
    assert tls["Certificates"] == [{"CertificateArn": {"Ref": "TLSCertificateARN"}}]
    assert tls["SslPolicy"].startswith("ELBSecurityPolicy-TLS13-1-2")

    tcp = listener(Stack(template))
    assert tcp["Protocol"] == "TCP"
    assert "Certificates" not in tcp
    assert "SslPolicy" not in tcp
    assert tcp["Port"] == {"Ref": "SCPPort"}


def _peer_ingress(stack: Stack) -> list[dict[str, Any]]:
    rules = [r["Properties"] for r in stack.resources("AWS::EC2::SecurityGroupIngress").values()]
    for sg in stack.resources("AWS::EC2::SecurityGroup").values():
        rules += sg["Properties"].get("SecurityGroupIngress", [])
    return [r for r in rules if "CidrIp" in r]


@pytest.mark.parametrize(
    ("peer2", "peer3", "expected"),
    [
        ("", "", ["PeerCIDR1"]),
        ("198.51.100.0/24", "", ["PeerCIDR1", "PeerCIDR2"]),
        ("", "203.0.113.7/32", ["PeerCIDR1", "PeerCIDR3"]),
        ("198.51.100.0/24", "203.0.113.7/32", ["PeerCIDR1", "PeerCIDR2", "PeerCIDR3"]),
    ],
)
def test_only_given_peer_cidrs_are_admitted(
    template: dict[str, Any], peer2: str, peer3: str, expected: list[str]
) -> None:
    stack = Stack(template, PeerCIDR2=peer2, PeerCIDR3=peer3)
    rules = _peer_ingress(stack)
    assert sorted(r["CidrIp"]["Ref"] for r in rules) == expected
    assert all(r["FromPort"] == r["ToPort"] == {"Ref": "SCPPort"} and r["IpProtocol"] == "tcp" for r in rules)


def test_tasks_admit_only_the_load_balancer(template: dict[str, Any]) -> None:
    task_sg = Stack(template).resources()["ScpTaskSecurityGroup"]["Properties"]
    (ingress,) = task_sg["SecurityGroupIngress"]
    assert ingress["SourceSecurityGroupId"] == {"Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"]}
    assert ingress["FromPort"] == {"Ref": "SCPPort"}


def _container(stack: Stack) -> dict[str, Any]:
    task = stack.resources()["ScpTaskDefinition"]["Properties"]
    (container,) = task["ContainerDefinitions"]
    return container


# The stack's own resources, named as its outputs name them.
CONTAINER_RESOURCE_VARIABLES = {
    "DICOM_BUCKET": "DICOMBucketName",
    "INSTANCE_TABLE_NAME": "InstanceTableName",
    "COMMITMENT_TABLE_NAME": "CommitmentTableName",
}


def test_every_container_variable_of_the_contract_comes_from_a_parameter(template: dict[str, Any]) -> None:
    (container,) = template["Resources"]["ScpTaskDefinition"]["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert set(env) == CONTAINER_CONTRACT
    parameters = set(template["Parameters"])
    for name, value in env.items():
        if name in CONTAINER_RESOURCE_VARIABLES:
            # The stack's own bucket and tables, named the same way everywhere (see test_dicom_bucket_is_never_ref_d).
            assert value == template["Outputs"][CONTAINER_RESOURCE_VARIABLES[name]]["Value"], name
            continue
        used = refs(value)
        if "Fn::If" in value:
            used |= refs(template["Conditions"][value["Fn::If"][0]])
        assert used & parameters, name


def test_peer_cidrs_joins_the_given_ones(template: dict[str, Any]) -> None:
    def peer_cidrs(**params: str) -> str:
        value = next(
            e["Value"] for e in _container(Stack(template, **params))["Environment"] if e["Name"] == "PEER_CIDRS"
        )
        stack = Stack(template, **params)
        parts = value["Fn::Join"][1]
        text = ""
        for part in parts:
            if isinstance(part, dict) and "Ref" in part:
                text += stack.params[part["Ref"]]
            elif isinstance(part, dict) and "Fn::Sub" in part:
                text += re.sub(r"\$\{(\w+)\}", lambda m: stack.params[m.group(1)], part["Fn::Sub"])
            else:
                text += part
        return text

    assert peer_cidrs() == "192.0.2.0/24"
    assert peer_cidrs(PeerCIDR3="203.0.113.7/32") == "192.0.2.0/24,203.0.113.7/32"
    assert peer_cidrs(PeerCIDR2="198.51.100.0/24", PeerCIDR3="203.0.113.7/32") == (
        "192.0.2.0/24,198.51.100.0/24,203.0.113.7/32"
    )


def test_container_runs_non_root_read_only_and_stops_gracefully(template: dict[str, Any]) -> None:
    container = _container(Stack(template))
    assert not container["User"].startswith(("0", "root"))
    assert container["ReadonlyRootFilesystem"] is True
    assert container["StopTimeout"] == STOP_TIMEOUT_SECONDS
    assert {m["ContainerPath"] for m in container["MountPoints"]} == {"/tmp"}
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"
    grace = template["Parameters"]["ShutdownGraceSeconds"]
    assert grace["MaxValue"] < STOP_TIMEOUT_SECONDS
    assert grace["Default"] <= grace["MaxValue"]


def test_draining_is_no_longer_than_the_stop_timeout(template: dict[str, Any]) -> None:
    tg = Stack(template).resources()["ScpTargetGroup"]["Properties"]
    attributes = {a["Key"]: a["Value"] for a in tg["TargetGroupAttributes"]}
    assert int(attributes["deregistration_delay.timeout_seconds"]) <= STOP_TIMEOUT_SECONDS
    assert int(attributes["deregistration_delay.timeout_seconds"]) == DEREGISTRATION_DELAY_SECONDS
    assert attributes["preserve_client_ip.enabled"] == "true"
    assert tg["TargetType"] == "ip"
    assert tg["HealthCheckProtocol"] == "TCP"


def test_service_runs_in_private_subnets_without_public_ip(template: dict[str, Any]) -> None:
    service = Stack(template).resources()["ScpService"]["Properties"]
    vpc = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert vpc["AssignPublicIp"] == "DISABLED"
    assert vpc["Subnets"] == {"Ref": "PrivateSubnetIDs"}
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
        "Enable": True,
        "Rollback": True,
    }
    policy = Stack(template).resources()["ScpCpuScalingPolicy"]["Properties"]
    tracking = policy["TargetTrackingScalingPolicyConfiguration"]
    assert (tracking["TargetValue"], tracking["ScaleInCooldown"], tracking["ScaleOutCooldown"]) == (
        50.0,
        60,
        60,
    )


def _statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for p in role["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _sub_text(arn: Any) -> str:
    return arn["Fn::Sub"] if isinstance(arn["Fn::Sub"], str) else arn["Fn::Sub"][0]


def test_task_role_writes_only_incoming_and_manifests(template: dict[str, Any]) -> None:
    kms = "arn:aws:kms:us-east-1:111122223333:key/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"
    role = Stack(template, KmsKeyArn=kms).resources()["ScpTaskRole"]
    s3_statements = [s for s in _statements(role) if any(a.startswith("s3:") for a in _as_list(s["Action"]))]
    assert s3_statements
    for statement in s3_statements:
        assert statement["Effect"] == "Allow"
        assert set(_as_list(statement["Action"])) <= {"s3:PutObject", "s3:AbortMultipartUpload"}
        for resource in statement["Resource"]:
            assert _sub_text(resource).endswith(("/${DICOMPrefix}incoming/*", "/${DICOMPrefix}manifests/*"))
    other = {a for s in _statements(role) for a in _as_list(s["Action"]) if not a.startswith(("s3:", "dynamodb:"))}
    assert other == {"kms:GenerateDataKey", "kms:Decrypt"}


def test_task_role_reads_instances_by_key_and_writes_only_commitments(template: dict[str, Any]) -> None:
    role = Stack(template).resources()["ScpTaskRole"]
    granted = {
        (action, json.dumps(resource, sort_keys=True))
        for s in _statements(role)
        for action in _as_list(s["Action"])
        if action.startswith("dynamodb:")
        for resource in s["Resource"]
    }
    commitments = json.dumps({"Fn::GetAtt": ["CommitmentTable", "Arn"]}, sort_keys=True)
    pending_index = json.dumps(
        {"Fn::Sub": ["${Arn}/index/pending-index", {"Arn": {"Fn::GetAtt": ["CommitmentTable", "Arn"]}}]},
        sort_keys=True,
    )
    instances = json.dumps({"Fn::GetAtt": ["DicomInstanceTable", "Arn"]}, sort_keys=True)
    assert granted == {
        ("dynamodb:PutItem", commitments),
        ("dynamodb:UpdateItem", commitments),
        ("dynamodb:GetItem", commitments),
        ("dynamodb:Query", pending_index),
        ("dynamodb:BatchGetItem", instances),
    }
    table = Stack(template).resources()["CommitmentTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert table["KeySchema"] == [{"AttributeName": "recordId", "KeyType": "HASH"}]


def test_data_access_role_reads_only_incoming_and_trusts_only_this_datastore(
    template: dict[str, Any],
) -> None:
    role = Stack(template).resources()["HealthImagingDataAccessRole"]
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "medical-imaging.amazonaws.com"}
    assert trust["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert ":datastore/${Id}" in _sub_text(trust["Condition"]["ArnLike"]["aws:SourceArn"])
    for statement in _statements(role):
        if statement["Action"] == ["s3:GetObject"]:
            assert [_sub_text(r) for r in statement["Resource"]] == [
                "arn:${AWS::Partition}:s3:::dicom-scp-${AWS::AccountId}-${AWS::Region}-${Suffix}"
                "/${DICOMPrefix}incoming/*"
            ]
        if statement["Action"] == ["s3:PutObject"]:
            assert "ImportResultsBucket" in refs(statement["Resource"])
            assert "DicomBucket" not in str(statement["Resource"])


def test_no_wildcard_resource_where_an_arn_is_accepted(template: dict[str, Any]) -> None:
    kms = "arn:aws:kms:us-east-1:111122223333:key/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"
    roles = Stack(template, KmsKeyArn=kms).resources("AWS::IAM::Role")
    assert len(roles) == 9  # one per component
    for name, role in roles.items():
        for statement in _statements(role):
            if "*" in _as_list(statement.get("Resource", [])):
                assert statement["Resource"] == ["*"]
                assert set(_as_list(statement["Action"])) <= STAR_ONLY_ACTIONS, name
            for action in _as_list(statement["Action"]):
                assert "*" not in action, (name, action)


def test_start_import_job_is_scoped_to_the_datastore_and_passes_only_the_data_access_role(
    template: dict[str, Any],
) -> None:
    stack = Stack(template)
    statements = _statements(stack.resources()["StartImportJobRole"])
    start = next(s for s in statements if s["Action"] == ["medical-imaging:StartDICOMImportJob"])
    assert "medical-imaging:${AWS::Region}:${AWS::AccountId}:datastore/${Id}" in _sub_text(start["Resource"][0])
    pass_role = next(s for s in statements if s["Action"] == ["iam:PassRole"])
    assert pass_role["Resource"] == [{"Fn::GetAtt": ["HealthImagingDataAccessRole", "Arn"]}]
    function = stack.resources()["StartImportJobFunction"]["Properties"]
    assert function["ReservedConcurrentExecutions"] == 1


def test_dicom_bucket_is_never_ref_d(template: dict[str, Any]) -> None:
    # Anything referring to the bucket itself would close the bucket -> permission -> TriggerImport cycle.
    for name, resource in template["Resources"].items():
        if name != "DicomBucketPolicy":
            assert "DicomBucket" not in refs(resource), name
    bucket = template["Resources"]["DicomBucket"]
    assert bucket["DependsOn"] == ["TriggerImportS3Permission"]
    (notification,) = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    assert notification["Function"] == {"Fn::GetAtt": ["TriggerImportFunction", "Arn"]}
    rules = {r["Name"]: r["Value"] for r in notification["Filter"]["S3Key"]["Rules"]}
    assert rules == {"prefix": {"Fn::Sub": "${DICOMPrefix}manifests/"}, "suffix": ".json"}
    permission = template["Resources"]["TriggerImportS3Permission"]["Properties"]
    assert permission["SourceAccount"] == {"Ref": "AWS::AccountId"}
    assert permission["SourceArn"]["Fn::Sub"][0] == (
        "arn:${AWS::Partition}:s3:::" + bucket["Properties"]["BucketName"]["Fn::Sub"][0]
    )


def test_functions_follow_the_contract(template: dict[str, Any]) -> None:
    functions = Stack(template).resources("AWS::Lambda::Function")
    assert {name: f["Properties"]["Handler"] for name, f in functions.items()} == HANDLERS
    seen: set[str] = set()
    for f in functions.values():
        props = f["Properties"]
        assert props["Runtime"] == "python3.12"
        assert props["Code"] == {
            "S3Bucket": {"Ref": "LambdaArtifactBucket"},
            "S3Key": {"Ref": "LambdaArtifactKey"},
        }
        seen |= set(props["Environment"]["Variables"])
    assert seen == LAMBDA_CONTRACT


def test_tables_have_the_contract_keys(template: dict[str, Any]) -> None:
    tables = Stack(template).resources("AWS::DynamoDB::Table")
    jobs = tables["DicomImportJobTable"]["Properties"]
    assert jobs["KeySchema"] == [{"AttributeName": "jobId", "KeyType": "HASH"}]
    assert [(i["IndexName"], i["KeySchema"]) for i in jobs["GlobalSecondaryIndexes"]] == [
        ("batchId-index", [{"AttributeName": "batchId", "KeyType": "HASH"}])
    ]
    instances = tables["DicomInstanceTable"]["Properties"]
    assert instances["KeySchema"] == [{"AttributeName": "sopInstanceUID", "KeyType": "HASH"}]
    assert [(i["IndexName"], i["KeySchema"]) for i in instances["GlobalSecondaryIndexes"]] == [
        (
            "studyInstanceUID-index",
            [
                {"AttributeName": "studyInstanceUID", "KeyType": "HASH"},
                {"AttributeName": "sopInstanceUID", "KeyType": "RANGE"},
            ],
        ),
        # `dicom-store-scp status --series / --batch` query these.
        (
            "seriesInstanceUID-index",
            [
                {"AttributeName": "seriesInstanceUID", "KeyType": "HASH"},
                {"AttributeName": "sopInstanceUID", "KeyType": "RANGE"},
            ],
        ),
        (
            "batchId-index",
            [
                {"AttributeName": "batchId", "KeyType": "HASH"},
                {"AttributeName": "sopInstanceUID", "KeyType": "RANGE"},
            ],
        ),
    ]
    for table in (jobs, instances):
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert table["SSESpecification"]["SSEEnabled"] is True
        assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_asl_placeholders_are_exactly_the_definition_substitutions(template: dict[str, Any], asl_text: str) -> None:
    machine = template["Resources"]["ImportWorkflow"]["Properties"]
    assert machine["DefinitionString"] == asl_text
    placeholders = set(re.findall(r"\$\{([^}]+)\}", asl_text))
    assert placeholders == set(machine["DefinitionSubstitutions"])
    assert placeholders == {
        "StartImportJobFunctionArn",
        "CheckStatusFunctionArn",
        "RecordFailureFunctionArn",
        "WaitSeconds",
        "MaxPolls",
    }


def test_datastore_is_created_unless_one_is_given(template: dict[str, Any]) -> None:
    assert "Datastore" in Stack(template).resources("AWS::HealthImaging::Datastore")
    existing = Stack(template, ExistingDatastoreID="0" * 32)
    assert existing.resources("AWS::HealthImaging::Datastore") == {}
    variables = existing.resources()["StartImportJobFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["DATASTORE_ID"] == {"Ref": "ExistingDatastoreID"}


def test_flow_logs_and_alarm_actions_are_optional(template: dict[str, Any]) -> None:
    assert Stack(template).resources("AWS::EC2::FlowLog") == {}
    assert len(Stack(template, EnableVPCFlowLogs="true").resources("AWS::EC2::FlowLog")) == 1
    alarms = Stack(template).resources("AWS::CloudWatch::Alarm")
    assert alarms and all("AlarmActions" not in a["Properties"] for a in alarms.values())
    topic = "arn:aws:sns:us-east-1:111122223333:dicom-alarms"
    alarms = Stack(template, AlarmTopicARN=topic).resources("AWS::CloudWatch::Alarm")
    assert all(a["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopicARN"}] for a in alarms.values())


def test_rules_admit_only_fargate_pairs_and_healthimaging_regions(template: dict[str, Any]) -> None:
    rules = template["Rules"]
    region_assert = rules["HealthImagingRegion"]["Assertions"][0]["Assert"]["Fn::Contains"]
    assert set(region_assert[0]) == set(HEALTHIMAGING_REGIONS) and region_assert[1] == {"Ref": "AWS::Region"}
    for cpu, memories in FARGATE_CPU_MEMORY.items():
        rule = rules[f"FargateMemoryFor{cpu}Cpu"]
        assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "TaskCPU"}, cpu]}
        allowed = rule["Assertions"][0]["Assert"]["Fn::Contains"][0]
        assert allowed == [str(m) for m in memories]
    assert set(template["Parameters"]["TaskCPU"]["AllowedValues"]) == set(FARGATE_CPU_MEMORY)
    default_cpu = template["Parameters"]["TaskCPU"]["Default"]
    assert int(template["Parameters"]["TaskMemoryLimit"]["Default"]) in FARGATE_CPU_MEMORY[default_cpu]
