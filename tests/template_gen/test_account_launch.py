"""What only a real account used to show (issue 22): storage commitment reports must be able to leave the task,
and the first ECS cluster of an account must not race the ECS service-linked role."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from dicom_store_scp.config import ConfigError, _peers
from support.cfn import Deployment

from template_gen.intrinsics import references

ROOT = Path(__file__).resolve().parents[2]
PEERS_NETWORK = "10.0.1.0/24"


SUBNETS = {"VpcId": ["vpc-0a1b2c3d"], "AvailabilityZone": ["us-east-1a"]}


def Stack(template: dict[str, Any], **overrides: str) -> Deployment:
    """One deployment: an internal load balancer in the tasks' one subnet (the Rules look the subnet up)."""
    parameters = {"VpcID": "vpc-0a1b2c3d", "PrivateSubnetIDs": "subnet-p1", "LoadBalancerSubnetIDs": "subnet-p1"}
    return Deployment(
        template,
        {**parameters, "PeerCIDR1": "192.0.2.0/24", **overrides},
        aws_values={"PrivateSubnetIDs": SUBNETS, "LoadBalancerSubnetIDs": SUBNETS},
    )


def task_egress(stack: Deployment) -> list[tuple[str, int, int, str]]:
    """Every rule that lets the SCP tasks open a connection: (protocol, from port, to port, destination)."""
    rules = [
        stack.value(r["Properties"])
        for r in stack.decided("AWS::EC2::SecurityGroupEgress").values()
        if r["Properties"]["GroupId"] == {"Fn::GetAtt": ["ScpTaskSecurityGroup", "GroupId"]}
    ]
    rules += stack.value(stack.decided()["ScpTaskSecurityGroup"]["Properties"]["SecurityGroupEgress"])
    return sorted(
        (r["IpProtocol"], int(r["FromPort"]), int(r["ToPort"]), r.get("CidrIp") or r["DestinationSecurityGroupId"])
        for r in rules
    )


HTTPS = ("tcp", 443, 443, "0.0.0.0/0")


@pytest.mark.parametrize(
    ("peers", "ports"),
    [
        ("PACS1=10.0.1.23:104", [104]),
        ("PACS1=10.0.1.23:104,PACS2=pacs2.hospital.example:11112", [104, 11112]),
        # The same port twice: one rule (EC2 refuses a security group's same rule twice, failing the stack).
        ("PACS1=10.0.1.23:104,PACS2=10.0.1.24:104", [104]),
        ("A=10.0.1.1:104,B=10.0.1.2:4242,C=10.0.1.3:104", [104, 4242]),
        ("A=10.0.1.1:104,B=10.0.1.2:104,C=10.0.1.3:2762", [104, 2762]),
        ("A=10.0.1.1:11112,B=10.0.1.2:104,C=10.0.1.3:104", [104, 11112]),
    ],
)
def test_commitment_reports_may_reach_the_peers_ports_in_their_network(
    template: dict[str, Any], peers: str, ports: list[int]
) -> None:
    stack = Stack(template, CommitmentPeers=peers, CommitmentPeersCIDR=PEERS_NETWORK)
    assert task_egress(stack) == sorted([HTTPS, *(("tcp", port, port, PEERS_NETWORK) for port in ports)])
    # What the SCP itself makes of the same setting: the ports it will connect to are exactly those opened.
    assert sorted({port for _, _, port in _peers(peers)}) == ports
    assert stack.rule_failures() == []


def test_without_commitment_peers_the_tasks_send_only_https(template: dict[str, Any]) -> None:
    assert task_egress(Stack(template)) == [HTTPS]
    # A network alone opens nothing: reports go out only to CommitmentPeers.
    assert task_egress(Stack(template, CommitmentPeersCIDR=PEERS_NETWORK)) == [HTTPS]


def test_commitment_peers_without_their_network_are_refused(template: dict[str, Any]) -> None:
    (failure,) = Stack(template, CommitmentPeers="PACS1=10.0.1.23:104").rule_failures()
    assert "CommitmentPeersCIDR" in failure


@pytest.mark.parametrize(
    ("value", "admitted"),
    [
        ("", True),
        ("PACS1=10.0.1.23:104", True),
        ("A=h1:1,B=h2:2,C=h3:3", True),
        ("A=h1:1,B=h2:2,C=h3:3,D=h4:4", False),  # one egress rule per peer at most: three
        ("PACS1=[fe80::1]:104", False),  # the template reads the port after the host's only colon
        ("PACS1=10.0.1.23", False),
    ],
)
def test_commitment_peers_parameter_admits_what_the_template_can_open(
    template: dict[str, Any], value: str, admitted: bool
) -> None:
    pattern = template["Parameters"]["CommitmentPeers"]["AllowedPattern"]
    assert (re.fullmatch(pattern.strip("^$"), value) is not None) is admitted
    if admitted and value:
        _peers(value)  # and the SCP takes it


def test_the_scp_refuses_what_the_parameter_refuses_for_want_of_a_port() -> None:
    with pytest.raises(ConfigError):
        _peers("PACS1=10.0.1.23")


def test_the_guide_says_what_route_commitment_reports_need() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    section = guide[guide.index("### Storage commitment") :]
    section = section[: section.index("\n## ")]
    assert "CommitmentPeersCIDR" in section
    for words in ("VPN", "Direct Connect", "route"):
        assert words in section
    egress = guide[guide.index("## Network egress") :]
    egress = egress[: egress.index("\n## ", 1)]
    assert "CommitmentPeersCIDR" in egress and "nothing else" not in egress


# --- The ECS service-linked role -------------------------------------------------------------------------------


def depends_on(stack: Deployment, logical_id: str) -> set[str]:
    """The resources ``logical_id`` waits for, directly or not: DependsOn, Ref, GetAtt and ${} in Sub, anywhere in
    the resource (Metadata included), with its Fn::If decided for this deployment."""
    created = stack.decided()
    seen: set[str] = set()
    todo = [logical_id]
    while todo:
        resource = created[todo.pop()]
        direct = set(resource.get("DependsOn", [])) | references(resource)
        for name in (direct & set(created)) - seen:
            seen.add(name)
            todo.append(name)
    return seen


def test_the_cluster_is_created_after_a_service_linked_role_the_stack_makes(template: dict[str, Any]) -> None:
    stack = Stack(template, CreateECSServiceLinkedRole="true")
    role = stack.decided("AWS::IAM::ServiceLinkedRole")
    assert [r["Properties"]["AWSServiceName"] for r in role.values()] == ["ecs.amazonaws.com"]
    (name,) = role
    # The account's role, not the stack's: kept when the stack goes.
    assert role[name]["DeletionPolicy"] == "Retain"
    for waiting in ("ScpCluster", "ScpService"):
        assert name in depends_on(stack, waiting)
    # With IAM roles made in between, which give the new role time to propagate before ECS assumes it.
    assert {"ScpExecutionRole", "ScpTaskRole"} <= depends_on(stack, "ScpCluster")
    assert name in depends_on(stack, "ScpExecutionRole")


def test_by_default_the_stack_makes_no_service_linked_role(template: dict[str, Any]) -> None:
    # Where the role exists (most accounts), creating it again fails the stack.
    stack = Stack(template)
    assert template["Parameters"]["CreateECSServiceLinkedRole"]["Default"] == "false"
    assert stack.decided("AWS::IAM::ServiceLinkedRole") == {}
    assert "ScpExecutionRole" in depends_on(stack, "ScpCluster")


def test_the_guide_says_how_to_check_and_create_the_service_linked_role() -> None:
    guide = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "aws iam create-service-linked-role --aws-service-name ecs.amazonaws.com" in guide
    assert "aws iam get-role --role-name AWSServiceRoleForECS" in guide
    assert "CreateECSServiceLinkedRole" in guide


# --- Where troubleshooting starts (issue 24) -------------------------------------------------------------------


def test_outputs_name_the_scp_log_group_and_the_dashboard(template: dict[str, Any]) -> None:
    stack = Stack(template)
    assert template["Outputs"]["ScpLogGroupName"]["Value"] == {"Ref": "ScpLogGroup"}
    assert stack.output("DashboardURL") == (
        "https://us-east-1.console.aws.amazon.com/cloudwatch/home?region=us-east-1#dashboards:name=dicom-scp-ScpDashboard"
    )
    guide = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert "`ScpLogGroupName`" in guide and "`DashboardURL`" in guide
    assert "## Deleting the stack" in guide
