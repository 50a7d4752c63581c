"""`dicom-store-scp preflight` against accounts on a real moto_server over HTTP: a ready account, and one per fault.

Each test builds a fresh moto account (support/accounts.py) the way the deployment guide asks, breaks one thing,
and checks that exactly that check fails (its ✗ line saying what to do) and the command exits 1; the ready accounts
exit 0 with every line ✓.

moto implements neither of two reads the command makes: Service Quotas knows only the "vpc" service (GetServiceQuota
for fargate answers NoSuchResourceException) and Lambda has no GetAccountSettings (404). The command answers ✗
"could not read ..." then (test_moto_lacks_the_quota_and_lambda_reads). Everywhere else those two clients are the real
botocore clients with a Stubber answering that one call, explicitly: the quota and concurrency checks run their real
path on the documented response shapes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import Stubber
from dicom_store_contract import launch
from dicom_store_scp import preflight
from support.accounts import Account
from support.moto import MotoServer

FARGATE_QUOTA = {"ServiceCode": "fargate", "QuotaCode": "L-3032A538"}


@pytest.fixture
def account(moto_server: MotoServer, aws_credentials: None) -> Account:
    return Account.fresh(moto_server)


Run = Callable[..., tuple[int, list[str]]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Iterator[Run]:
    """The command in this process: its own clients for the account, a Stubber on the two calls moto lacks."""
    stubbers: list[Stubber] = []

    def run(
        account: Account,
        *extra: str,
        vcpu_quota: float | None = 16.0,
        unreserved: int | None = 1000,
        region: str | None = None,
    ) -> tuple[int, list[str]]:
        def client(service: str) -> Any:
            real = account.new_client(service)
            if service == "service-quotas":
                stubber = Stubber(real)
                if vcpu_quota is None:
                    stubber.add_client_error("get_service_quota", "AccessDeniedException", "not allowed", 400)
                else:
                    quota = {**FARGATE_QUOTA, "QuotaName": "Fargate On-Demand vCPU resource count", "Value": vcpu_quota}
                    stubber.add_response("get_service_quota", {"Quota": quota}, FARGATE_QUOTA)
            elif service == "lambda":
                stubber = Stubber(real)
                if unreserved is None:
                    stubber.add_client_error("get_account_settings", "AccessDeniedException", "not allowed", 403)
                else:
                    limit = {"ConcurrentExecutions": 1000, "UnreservedConcurrentExecutions": unreserved}
                    stubber.add_response("get_account_settings", {"AccountLimit": limit, "AccountUsage": {}}, {})
            else:
                return real
            stubber.activate()
            stubbers.append(stubber)
            return real

        capsys.readouterr()
        code = preflight.main(account.argv(*extra, region=region), clients=client)
        lines = capsys.readouterr().out.splitlines()
        return code, lines

    yield run
    for stubber in stubbers:
        stubber.assert_no_pending_responses()


def failed(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(preflight.CROSS_MARK)]


def only_failure(code: int, lines: list[str], subject: str) -> str:
    """The one ✗ line, which must be about ``subject``; the command said "not ready" and exited 1."""
    failures = failed(lines)
    assert code == preflight.EXIT_NOT_READY, lines
    assert len(failures) == 1, "\n".join(lines)
    assert failures[0].startswith(f"{preflight.CROSS_MARK} {subject}"), failures[0]
    assert lines[-1] == "not ready: 1 check(s) failed"
    return failures[0]


def ready(code: int, lines: list[str]) -> None:
    assert failed(lines) == [], "\n".join(lines)
    assert code == preflight.EXIT_READY
    assert lines[-1].startswith("ready to launch in ")


# -- ready accounts -------------------------------------------------------------------------------------------------


def test_an_account_built_as_the_guide_says_is_ready(account: Account, run: Run) -> None:
    account.ready()

    code, lines = run(account)

    ready(code, lines)
    shown = "\n".join(lines)
    assert f"NAT gateway {account.vpc.nat_gateway}" in shown
    for private in account.vpc.private:
        assert f"✓ private subnet {private}" in shown
    for service in ("s3", "dynamodb", "sqs", "medical-imaging", "logs"):
        assert f"✓ KMS key for {service}: the key policy admits" in shown
    assert "✓ Fargate vCPU quota: 16 vCPU in us-east-1 >= 3 needed (3 task(s) at most x 1 vCPU = 3" in shown
    assert "✓ Lambda concurrency: 1000 of 1000 concurrent executions unreserved" in shown
    # One line per check, each marked.
    assert all(line[0] in "✓" for line in lines[:-1])


def test_vpc_endpoints_without_a_nat_gateway_are_ready_in_the_images_region(account: Account, run: Run) -> None:
    account.ready(nat=False)
    group = account.security_group("endpoints", https_from_cidr=account.vpc.cidr)
    account.add_endpoints(security_group=group)

    code, lines = run(account)

    ready(code, lines)
    assert any("VPC endpoints for s3, dynamodb, ecr.api, ecr.dkr, logs" in line for line in lines)


def test_an_internal_load_balancer_may_sit_in_the_private_subnets(account: Account, run: Run) -> None:
    account.ready()
    vpc = account.vpc
    argv = ["--load-balancer-subnets", ",".join(vpc.private), "--scheme", "internal"]

    ready(*run(account, *argv))


def test_stow_mode_needs_healthimagings_dicomweb_endpoint_too(account: Account, run: Run) -> None:
    account.ready(nat=False)
    group = account.security_group("endpoints", https_from_cidr=account.vpc.cidr)
    account.add_endpoints(security_group=group)

    import_code, import_lines = run(account)
    stow_code, stow_lines = run(account, "--ingest-mode", "stow")

    # The endpoints import mode needs serve it; stow mode stores into HealthImaging from the task's subnets.
    ready(import_code, import_lines)
    failures = failed(stow_lines)
    assert stow_code == preflight.EXIT_NOT_READY
    assert [line.split(" (")[0] for line in failures] == [f"✗ private subnet {s}" for s in account.vpc.private]
    for line in failures:
        assert (
            "dicom-medical-imaging (StoreDICOM, with IngestMode stow): no interface endpoint "
            "com.amazonaws.us-east-1.dicom-medical-imaging with private DNS" in line
        )
        assert "logs (" not in line and "dynamodb (" not in line  # those are there


def test_stow_mode_with_healthimagings_dicomweb_endpoint_is_ready(account: Account, run: Run) -> None:
    account.ready(nat=False)
    group = account.security_group("endpoints", https_from_cidr=account.vpc.cidr)
    account.add_endpoints(security_group=group, stow=True)

    code, lines = run(account, "--ingest-mode", "stow")

    ready(code, lines)
    assert any(
        "VPC endpoints for s3, dynamodb, ecr.api, ecr.dkr, logs, dicom-medical-imaging" in line for line in lines
    )


def test_the_audit_repositorys_secrets_need_a_route_to_secrets_manager(account: Account, run: Run) -> None:
    account.ready(nat=False)
    group = account.security_group("endpoints", https_from_cidr=account.vpc.cidr)
    account.add_endpoints(security_group=group)

    code, lines = run(account, "--audit-secrets")
    assert code == preflight.EXIT_NOT_READY
    for line in failed(lines):
        assert "secretsmanager (the audit repository's CA and client certificate" in line
        assert "no interface endpoint com.amazonaws.us-east-1.secretsmanager with private DNS" in line

    account.add_endpoints(
        security_group=group, audit_secrets=True, skip=tuple(e.service for e in launch.TASK_ENDPOINTS)
    )
    ready(*run(account, "--audit-secrets"))


def test_stow_mode_through_a_nat_gateway_is_ready(account: Account, run: Run) -> None:
    account.ready()

    code, lines = run(account, "--ingest-mode", "stow")

    ready(code, lines)
    assert any(f"NAT gateway {account.vpc.nat_gateway}" in line and "dicom-medical-imaging" in line for line in lines)


def test_a_route_to_a_transit_gateway_is_assumed_to_reach_aws(account: Account, run: Run) -> None:
    account.ready(nat=False)
    ec2 = account.client("ec2")
    gateway = ec2.create_transit_gateway()["TransitGateway"]["TransitGatewayId"]
    ec2.create_route(RouteTableId=account.vpc.private_table, DestinationCidrBlock="0.0.0.0/0", TransitGatewayId=gateway)

    code, lines = run(account)

    ready(code, lines)
    assert any(f"0.0.0.0/0 -> {gateway}" in line and "cannot verify" in line for line in lines)


def test_a_key_admitting_each_service_through_kms_via_service_is_ready(account: Account, run: Run) -> None:
    account.ready(key=False)
    services = tuple(user.service for user in launch.KEY_USERS if not user.service_principal)
    account.create_key(account.key_policy(root=False, via_services=services))

    ready(*run(account))


# -- one fault each -------------------------------------------------------------------------------------------------


def test_a_region_without_healthimaging(moto_server: MotoServer, aws_credentials: None, run: Run) -> None:
    account = Account.fresh(moto_server, region="ca-central-1").ready()

    line = only_failure(*run(account), "region")

    assert "ca-central-1: AWS HealthImaging does not run here" in line and "us-east-1" in line


def test_a_vpc_that_does_not_exist(account: Account, run: Run) -> None:
    account.ready()
    other = Account.fresh(account.server).ready()  # a VPC id that exists, in another account
    code, lines = run(account, "--vpc-id", other.vpc.vpc_id)

    line = only_failure(code, lines, "VPC")
    assert f"{other.vpc.vpc_id} not found in us-east-1" in line


def test_a_subnet_that_does_not_exist(account: Account, run: Run) -> None:
    account.ready()
    missing = "subnet-0123456789abcdef0"
    argv = ["--private-subnets", f"{account.vpc.private[0]},{missing}"]

    line = only_failure(*run(account, *argv), f"subnet {missing}")

    assert "not found in us-east-1" in line


def test_a_subnet_of_another_vpc(account: Account, run: Run) -> None:
    account.ready()
    ec2 = account.client("ec2")
    elsewhere = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    stray = account.subnet(elsewhere, "10.1.1.0/24", "us-east-1b")
    argv = ["--private-subnets", f"{account.vpc.private[0]},{stray}"]

    line = only_failure(*run(account, *argv), f"subnet {stray}")

    assert f"in {elsewhere}, not in {account.vpc.vpc_id}" in line


def test_two_load_balancer_subnets_in_one_zone(account: Account, run: Run) -> None:
    account.ready()
    vpc = account.vpc
    third = account.subnet(vpc.vpc_id, "10.0.2.0/24", vpc.zones[0])
    account.client("ec2").associate_route_table(RouteTableId=vpc.public_table, SubnetId=third)
    argv = ["--load-balancer-subnets", ",".join([*vpc.public, third])]

    line = only_failure(*run(account, *argv), "load balancer subnets")

    assert f"{vpc.public[0]} and {third} are all in {vpc.zones[0]}" in line


def test_a_task_zone_without_a_load_balancer_subnet(account: Account, run: Run) -> None:
    account.ready()
    vpc = account.vpc
    argv = ["--load-balancer-subnets", vpc.public[0]]

    line = only_failure(*run(account, *argv), "load balancer zones")

    assert f"no load balancer subnet in {vpc.zones[1]}, where private subnet {vpc.private[1]} is" in line
    assert "not enabled in" in line


def test_an_internet_facing_load_balancer_in_private_subnets(account: Account, run: Run) -> None:
    account.ready()
    vpc = account.vpc
    code, lines = run(account, "--load-balancer-subnets", ",".join(vpc.private), "--scheme", "internet-facing")

    failures = failed(lines)
    assert code == preflight.EXIT_NOT_READY
    assert [line.split(":")[0] for line in failures] == [f"✗ load balancer subnet {s}" for s in vpc.private]
    assert f"not public (0.0.0.0/0 -> {vpc.nat_gateway} in {vpc.private_table})" in failures[0]
    assert "--scheme internal" in failures[0]


def test_a_public_subnet_given_for_the_tasks(account: Account, run: Run) -> None:
    account.ready()
    vpc = account.vpc
    argv = ["--private-subnets", f"{vpc.private[0]},{vpc.public[1]}"]

    line = only_failure(*run(account, *argv), f"private subnet {vpc.public[1]}")

    assert f"routes 0.0.0.0/0 to internet gateway {vpc.internet_gateway}" in line
    assert "get no public IP" in line


def test_no_nat_gateway_and_no_endpoints(account: Account, run: Run) -> None:
    account.ready(nat=False)
    vpc = account.vpc

    code, lines = run(account)

    failures = failed(lines)
    assert code == preflight.EXIT_NOT_READY
    assert [line.split(" (")[0] for line in failures] == [f"✗ private subnet {s}" for s in vpc.private]
    for needed in launch.TASK_ENDPOINTS:
        assert f"com.amazonaws.us-east-1.{needed.service}" in failures[0]
    assert f"gateway endpoint com.amazonaws.us-east-1.s3 associated with {vpc.private_table}" in failures[0]
    assert (
        f"interface endpoint com.amazonaws.us-east-1.logs with private DNS and a subnet in {vpc.zones[0]}"
        in (failures[0])
    )


def test_one_endpoint_missing(account: Account, run: Run) -> None:
    account.ready(nat=False)
    account.add_endpoints(skip=("dynamodb",))

    code, lines = run(account)

    failures = failed(lines)
    assert code == preflight.EXIT_NOT_READY and len(failures) == 2, lines
    for line in failures:
        assert "dynamodb (storage commitment's tables): no gateway endpoint com.amazonaws.us-east-1.dynamodb" in line
        assert "ecr" not in line and "logs" not in line.split("dynamodb")[1]


def test_endpoints_cannot_pull_an_image_from_another_region(
    moto_server: MotoServer, aws_credentials: None, run: Run
) -> None:
    account = Account.fresh(moto_server, region="eu-west-1").ready(nat=False)
    account.add_endpoints()

    code, lines = run(account)

    failures = failed(lines)
    assert code == preflight.EXIT_NOT_READY and len(failures) == 2, lines
    assert "ecr.api: the image is in us-east-1's registry" in failures[0]
    assert "the pull needs a NAT gateway" in failures[0]


def test_interface_endpoints_without_private_dns(account: Account, run: Run) -> None:
    account.ready(nat=False)
    made = account.add_endpoints(private_dns=False)

    code, lines = run(account)

    failures = failed(lines)
    assert code == preflight.EXIT_NOT_READY and len(failures) == 2, lines
    assert f"interface endpoint {made['logs']} has private DNS off" in failures[0]


def test_vpc_dns_hostnames_off(account: Account, run: Run) -> None:
    account.ready(nat=False)
    account.add_endpoints()
    account.client("ec2").modify_vpc_attribute(VpcId=account.vpc.vpc_id, EnableDnsHostnames={"Value": False})

    code, lines = run(account)

    failures = failed(lines)
    assert code == preflight.EXIT_NOT_READY and len(failures) == 2, lines
    assert "has enableDnsHostnames off" in failures[0]


def test_endpoints_admitting_only_a_security_group(account: Account, run: Run) -> None:
    account.ready(nat=False)
    admitted = account.security_group("admitted")
    endpoints = account.security_group("endpoints", https_from_group=admitted)
    account.add_endpoints(security_group=endpoints)

    code, lines = run(account)

    failures = failed(lines)
    assert code == preflight.EXIT_NOT_READY and len(failures) == 2, lines
    assert f"admits HTTPS only from security group(s) {admitted}: pass one as --security-group-id" in failures[0]
    # Passing it, as SecurityGroupID will, is what the line asks for: then the account is ready.
    ready(*run(account, "--security-group-id", admitted))


def test_endpoints_admitting_nobody(account: Account, run: Run) -> None:
    account.ready(nat=False)
    closed = account.security_group("closed")
    account.add_endpoints(security_group=closed)

    code, lines = run(account)

    failures = failed(lines)
    assert code == preflight.EXIT_NOT_READY and len(failures) == 2, lines
    assert f"({closed}) do not admit HTTPS (443) from 10.0.10.0/24" in failures[0]


def test_no_ecs_service_linked_role(account: Account, run: Run) -> None:
    account.ready()
    account.client("iam").delete_role(RoleName=launch.ECS_SERVICE_LINKED_ROLE)

    line = only_failure(*run(account), "ECS service-linked role")

    assert "aws iam create-service-linked-role --aws-service-name ecs.amazonaws.com" in line


def test_a_fargate_quota_below_the_most_tasks(account: Account, run: Run) -> None:
    account.ready()

    line = only_failure(*run(account, "--task-cpu", "2048", "--max-capacity", "4", vcpu_quota=6.0), "Fargate")

    assert "6 vCPU in us-east-1, the stack needs 8 (4 task(s) at most x 2 vCPU = 8" in line
    assert "L-3032A538" in line


def test_a_fargate_quota_below_a_deployment(account: Account, run: Run) -> None:
    account.ready()

    line = only_failure(*run(account, "--desired-count", "3", "--max-capacity", "3", vcpu_quota=4.0), "Fargate")

    assert "the stack needs 6" in line and "a deployment at 3 task(s) runs up to 6" in line


def test_a_fargate_quota_that_cannot_be_read(account: Account, run: Run) -> None:
    account.ready()

    line = only_failure(*run(account, vcpu_quota=None), "Fargate")

    assert "could not read Fargate On-Demand vCPU resource count (L-3032A538) (AccessDeniedException" in line
    assert "the stack needs 3" in line


def test_a_key_policy_without_cloudwatch_logs(account: Account, run: Run) -> None:
    account.ready(key=False)
    account.create_key(account.key_policy(logs=False))

    line = only_failure(*run(account), "KMS key for logs")

    assert "service principal logs.us-east-1.amazonaws.com" in line


def test_a_key_policy_admitting_only_cloudwatch_logs(account: Account, run: Run) -> None:
    account.ready(key=False)
    account.create_key(account.key_policy(root=False))

    code, lines = run(account)

    failures = failed(lines)
    assert code == preflight.EXIT_NOT_READY
    assert [line.split(":")[0] for line in failures] == [
        f"✗ KMS key for {user.service}" for user in launch.KEY_USERS if not user.service_principal
    ]
    assert "through s3.us-east-1.amazonaws.com" in failures[0]


def test_a_disabled_key(account: Account, run: Run) -> None:
    account.ready()
    # By key id: moto's DisableKey does not resolve an ARN.
    account.client("kms").disable_key(KeyId=account.key_arn.rsplit("/", 1)[1])

    line = only_failure(*run(account), "KMS key")

    assert "its state is Disabled: enable it" in line


def test_a_key_of_another_region(account: Account, run: Run) -> None:
    account.ready(key=False)
    other = Account(account.server, account.account_id, "us-west-2", account.credentials)
    account.key_arn = other.create_key()

    line = only_failure(*run(account), "KMS key")

    assert "is in us-west-2" in line


def test_too_little_unreserved_lambda_concurrency(account: Account, run: Run) -> None:
    account.ready()

    line = only_failure(*run(account, unreserved=3), "Lambda concurrency")

    assert "3 of 1000 concurrent executions unreserved" in line and f"at least {launch.LAMBDA_FUNCTIONS}" in line
    assert "L-B99A9384" in line


# -- the command as a user runs it ----------------------------------------------------------------------------------


def command(account: Account, *argv: str, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, "-m", "dicom_store_scp", "preflight", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**base, **(account.environment() if environment is None else environment)},
    )


def test_moto_lacks_the_quota_and_lambda_reads(account: Account) -> None:
    """Against moto alone, as a user would run it: the two reads moto lacks say so; everything else is ✓."""
    account.ready()

    result = command(account, *account.argv())

    assert result.returncode == preflight.EXIT_NOT_READY, result.stderr
    lines = result.stdout.splitlines()
    # One line per check, even where the endpoint answers a whole HTML page (moto's Lambda 404).
    assert all(line[0] in "✓✗" for line in lines[:-1]), result.stdout
    failures = failed(lines)
    assert len(failures) == 2, result.stdout
    assert failures[0].startswith("✗ Fargate vCPU quota: could not read") and "NoSuchResourceException" in failures[0]
    assert failures[1].startswith("✗ Lambda concurrency: could not read the account's Lambda settings")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--vpc-id", "vpc-nothex!"), "is not a VPC id"),
        (("--private-subnets", "subnet-0123456789abcdef0,sg-0123456789abcdef0"), "is not a subnet id"),
        (("--scheme", "public"), "invalid choice"),
        (("--task-cpu", "1000"), "invalid choice"),
        (("--kms-key-arn", "alias/mine"), "is not a KMS key ARN"),
        (("--desired-count", "4"), "--max-capacity must be at least --desired-count"),
    ],
)
def test_bad_arguments_exit_2(account: Account, change: tuple[str, str], message: str) -> None:
    account.ready()

    result = command(account, *account.argv(*change))

    assert result.returncode == preflight.EXIT_USAGE
    assert message in result.stderr
    assert result.stdout == ""


def test_a_missing_argument_exits_2(account: Account) -> None:
    result = command(account, "--region", "us-east-1", "--vpc-id", "vpc-0123456789abcdef0")

    assert result.returncode == preflight.EXIT_USAGE
    assert "--private-subnets" in result.stderr


def test_no_credentials_exit_2(account: Account) -> None:
    account.ready()

    result = command(account, *account.argv(), environment={"AWS_EC2_METADATA_DISABLED": "true"})

    assert result.returncode == preflight.EXIT_USAGE
    assert "cannot check" in result.stderr and "NoCredentialsError" in result.stderr
    assert result.stdout == ""


def test_the_command_only_reads(account: Account, run: Run) -> None:
    """Every call the command makes is a Describe, Get or List (the buyer's credentials, nothing changed)."""
    account.ready()
    calls: list[str] = []

    def client(service: str) -> Any:
        real = account.new_client(service)
        real.meta.events.register("before-call", lambda model, **_: calls.append(f"{service}:{model.name}"))
        if service in ("service-quotas", "lambda"):
            stubber = Stubber(real)
            if service == "lambda":
                limit = {"ConcurrentExecutions": 1000, "UnreservedConcurrentExecutions": 1000}
                stubber.add_response("get_account_settings", {"AccountLimit": limit, "AccountUsage": {}}, {})
            else:
                quota = {**FARGATE_QUOTA, "QuotaName": "Fargate On-Demand vCPU resource count", "Value": 16.0}
                stubber.add_response("get_service_quota", {"Quota": quota}, FARGATE_QUOTA)
            stubber.activate()
        return real

    assert preflight.main(account.argv(), clients=client) == preflight.EXIT_READY
    assert calls and all(call.split(":")[1].startswith(("Describe", "Get", "List")) for call in calls), calls


# -- the guide ------------------------------------------------------------------------------------------------------


def test_the_guides_prerequisites_are_what_the_command_checks() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "deployment.md").read_text(encoding="utf-8")
    section = guide.split("\n## Prerequisites\n", 1)[1].split("\n## ", 1)[0]

    assert "dicom-store-scp preflight" in section
    assert re.findall(r"^- \*\*(.+?)\*\*", section, re.M) == [name for name, _ in preflight.CHECKS]
    for endpoint in launch.TASK_ENDPOINTS:
        assert f"`{endpoint.service}`" in section or f".{endpoint.service}`" in section, endpoint.service
    for user in launch.KEY_USERS:
        assert user.what.split(" (")[0].split()[-1] in section, user.service
    assert launch.ECS_SERVICE_LINKED_ROLE in section
    assert "L-3032A538" in section and "L-B99A9384" in section
