"""AWS accounts built on a real ``moto_server`` for ``dicom-store-scp preflight``: one fresh account per test.

Each account is its own moto account (STS AssumeRole into a new account id: moto keys every resource by the
account of the caller's access key), so a test's VPC, roles and keys are invisible to the others. ``Account.ready``
builds what the deployment guide asks for; a test then breaks one thing.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import boto3
from dicom_store_contract import launch

from .moto import MotoServer


@dataclass
class Vpc:
    """A VPC as a buyer would have it: two public and two private subnets in two zones, one NAT gateway."""

    vpc_id: str
    public: list[str]
    private: list[str]
    public_table: str
    private_table: str
    internet_gateway: str
    nat_gateway: str
    zones: list[str]
    cidr: str = "10.0.0.0/16"


@dataclass
class Account:
    server: MotoServer
    account_id: str
    region: str
    credentials: dict[str, str]
    vpc: Vpc | None = None
    key_arn: str = ""
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def fresh(cls, server: MotoServer, region: str = "us-east-1") -> Account:
        account_id = str(random.randrange(10**11, 10**12))
        sts = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=region
        ).client("sts", endpoint_url=server.endpoint)
        answer = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/buyer", RoleSessionName="preflight")
        credentials = {
            "aws_access_key_id": answer["Credentials"]["AccessKeyId"],
            "aws_secret_access_key": answer["Credentials"]["SecretAccessKey"],
            "aws_session_token": answer["Credentials"]["SessionToken"],
        }
        return cls(server, account_id, region, credentials)

    def client(self, service: str) -> Any:
        """A client of this account (one per service: building a client costs more than a call to moto)."""
        if service not in self._clients:
            self._clients[service] = self.new_client(service)
        return self._clients[service]

    def new_client(self, service: str) -> Any:
        """A client of its own (for a Stubber, which stays on the client it is activated on)."""
        session = boto3.session.Session(region_name=self.region, **self.credentials)
        return session.client(service, endpoint_url=self.server.endpoint)

    def environment(self) -> dict[str, str]:
        """The account's credentials as a process's environment (nothing else of the caller's AWS settings)."""
        return {
            "AWS_ACCESS_KEY_ID": self.credentials["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": self.credentials["aws_secret_access_key"],
            "AWS_SESSION_TOKEN": self.credentials["aws_session_token"],
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    # -- what the deployment guide asks for ---------------------------------------------------------------------

    def ready(self, *, nat: bool = True, key: bool = True) -> Account:
        self.build_vpc(nat=nat)
        self.create_ecs_service_linked_role()
        if key:
            self.create_key()
        return self

    def build_vpc(self, *, nat: bool = True) -> Vpc:
        ec2 = self.client("ec2")
        vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        for attribute in ("EnableDnsSupport", "EnableDnsHostnames"):
            ec2.modify_vpc_attribute(VpcId=vpc_id, **{attribute: {"Value": True}})
        zones = [f"{self.region}a", f"{self.region}b"]
        public = [self.subnet(vpc_id, f"10.0.{n}.0/24", zone) for n, zone in enumerate(zones)]
        private = [self.subnet(vpc_id, f"10.0.{10 + n}.0/24", zone) for n, zone in enumerate(zones)]
        internet_gateway = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
        ec2.attach_internet_gateway(InternetGatewayId=internet_gateway, VpcId=vpc_id)
        public_table = self.route_table(vpc_id, public)
        ec2.create_route(RouteTableId=public_table, DestinationCidrBlock="0.0.0.0/0", GatewayId=internet_gateway)
        private_table = self.route_table(vpc_id, private)
        nat_gateway = ""
        if nat:
            allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
            nat_gateway = ec2.create_nat_gateway(SubnetId=public[0], AllocationId=allocation)["NatGateway"][
                "NatGatewayId"
            ]
            ec2.create_route(RouteTableId=private_table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat_gateway)
        self.vpc = Vpc(vpc_id, public, private, public_table, private_table, internet_gateway, nat_gateway, zones)
        return self.vpc

    def subnet(self, vpc_id: str, cidr: str, zone: str) -> str:
        return str(
            self.client("ec2").create_subnet(VpcId=vpc_id, CidrBlock=cidr, AvailabilityZone=zone)["Subnet"]["SubnetId"]
        )

    def route_table(self, vpc_id: str, subnets: list[str]) -> str:
        ec2 = self.client("ec2")
        table = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
        for subnet_id in subnets:
            ec2.associate_route_table(RouteTableId=table, SubnetId=subnet_id)
        return str(table)

    def add_endpoints(
        self,
        *,
        private_dns: bool = True,
        security_group: str | None = None,
        skip: tuple[str, ...] = (),
        stow: bool = False,
        audit_secrets: bool = False,
    ) -> dict[str, str]:
        """Every endpoint the task needs, as the guide describes them: gateways for S3 and DynamoDB on the private
        route table, interface endpoints with private DNS in both private subnets (``stow``: HealthImaging's
        DICOMweb endpoint too, which IngestMode stow calls; ``audit_secrets``: Secrets Manager too)."""
        assert self.vpc is not None
        ec2 = self.client("ec2")
        made = {}
        extra = (launch.STOW_ENDPOINTS if stow else ()) + (launch.AUDIT_SECRETS_ENDPOINTS if audit_secrets else ())
        for needed in launch.TASK_ENDPOINTS + extra:
            if needed.service in skip:
                continue
            name = needed.service_name(self.region)
            if needed.gateway:
                endpoint = ec2.create_vpc_endpoint(
                    VpcId=self.vpc.vpc_id,
                    ServiceName=name,
                    VpcEndpointType="Gateway",
                    RouteTableIds=[self.vpc.private_table],
                )
            else:
                groups = {"SecurityGroupIds": [security_group]} if security_group else {}
                endpoint = ec2.create_vpc_endpoint(
                    VpcId=self.vpc.vpc_id,
                    ServiceName=name,
                    VpcEndpointType="Interface",
                    SubnetIds=self.vpc.private,
                    PrivateDnsEnabled=private_dns,
                    **groups,
                )
            made[needed.service] = endpoint["VpcEndpoint"]["VpcEndpointId"]
        return made

    def security_group(self, name: str, *, https_from_cidr: str = "", https_from_group: str = "") -> str:
        assert self.vpc is not None
        ec2 = self.client("ec2")
        group = ec2.create_security_group(GroupName=name, Description=name, VpcId=self.vpc.vpc_id)["GroupId"]
        # moto, like EC2, gives a new group an allow-all egress rule and no ingress.
        permission: dict[str, Any] = {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443}
        if https_from_cidr:
            ec2.authorize_security_group_ingress(
                GroupId=group, IpPermissions=[{**permission, "IpRanges": [{"CidrIp": https_from_cidr}]}]
            )
        if https_from_group:
            ec2.authorize_security_group_ingress(
                GroupId=group, IpPermissions=[{**permission, "UserIdGroupPairs": [{"GroupId": https_from_group}]}]
            )
        return str(group)

    def create_ecs_service_linked_role(self) -> None:
        # As IAM names it (moto's CreateServiceLinkedRole spells the service part in lower case).
        self.client("iam").create_role(
            RoleName=launch.ECS_SERVICE_LINKED_ROLE,
            Path=f"/aws-service-role/{launch.ECS_SERVICE_PRINCIPAL}/",
            AssumeRolePolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Service": launch.ECS_SERVICE_PRINCIPAL},
                            "Action": "sts:AssumeRole",
                        }
                    ],
                }
            ),
        )

    def key_policy(self, *, root: bool = True, logs: bool = True, via_services: tuple[str, ...] = ()) -> str:
        statements: list[dict[str, Any]] = []
        if root:
            statements.append(
                {
                    "Sid": "Enable IAM User Permissions",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{self.account_id}:root"},
                    "Action": "kms:*",
                    "Resource": "*",
                }
            )
        if logs:
            statements.append(
                {
                    "Sid": "CloudWatch Logs",
                    "Effect": "Allow",
                    "Principal": {"Service": f"logs.{self.region}.amazonaws.com"},
                    "Action": [
                        "kms:Encrypt*",
                        "kms:Decrypt*",
                        "kms:ReEncrypt*",
                        "kms:GenerateDataKey*",
                        "kms:Describe*",
                    ],
                    "Resource": "*",
                    "Condition": {
                        "ArnLike": {
                            "kms:EncryptionContext:aws:logs:arn": f"arn:aws:logs:{self.region}:{self.account_id}:*"
                        }
                    },
                }
            )
        for service in via_services:
            statements.append(
                {
                    "Sid": f"Through {service}",
                    "Effect": "Allow",
                    "Principal": {"AWS": "*"},
                    "Action": ["kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey", "kms:CreateGrant"],
                    "Resource": "*",
                    "Condition": {
                        "StringEquals": {
                            "kms:ViaService": f"{service}.{self.region}.amazonaws.com",
                            "kms:CallerAccount": self.account_id,
                        }
                    },
                }
            )
        return json.dumps({"Version": "2012-10-17", "Statement": statements})

    def create_key(self, policy: str | None = None) -> str:
        kms = self.client("kms")
        self.key_arn = kms.create_key(Policy=policy or self.key_policy())["KeyMetadata"]["Arn"]
        return self.key_arn

    def argv(self, *extra: str, region: str | None = None) -> list[str]:
        """The preflight command line for this account's VPC."""
        assert self.vpc is not None
        argv = [
            "--region",
            region or self.region,
            "--vpc-id",
            self.vpc.vpc_id,
            "--private-subnets",
            ",".join(self.vpc.private),
            "--load-balancer-subnets",
            ",".join(self.vpc.public),
            "--endpoint-url",
            self.server.endpoint,
        ]
        if self.key_arn:
            argv += ["--kms-key-arn", self.key_arn]
        return argv + list(extra)
