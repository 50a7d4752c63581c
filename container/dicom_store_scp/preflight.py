"""``dicom-store-scp preflight``: is this account, region and VPC ready for the stack?

What the template cannot check before it creates anything, read with the buyer's own credentials (Describe, Get and
List calls only; nothing is created or changed): the region, the VPC and its subnets, the private subnets' way to
the services the task calls, the ECS service-linked role, the Fargate vCPU quota, a customer KMS key's policy and the
account's Lambda concurrency. One line per check, ✓ or ✗ with what to do. The facts it checks against (what the task
calls, who uses the key, the template's scaling defaults) are ``dicom_store_contract.launch``'s, which the template
is built from.
"""

from __future__ import annotations

import argparse
import fnmatch
import ipaddress
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dicom_store_contract import ingest, launch, limits

# Exit statuses.
EXIT_READY = 0  # every check passed
EXIT_NOT_READY = 1  # at least one check failed: its line says what to do
EXIT_USAGE = 2  # bad arguments, or no credentials the checks could use

CHECK_MARK = "✓"  # ready
CROSS_MARK = "✗"  # not ready: the line says what to do

EVERYWHERE = "0.0.0.0/0"
HTTPS = 443

_VPC_ID = re.compile(r"vpc-[0-9a-f]{8,17}")
_SUBNET_ID = re.compile(r"subnet-[0-9a-f]{8,17}")
_SECURITY_GROUP_ID = re.compile(r"sg-[0-9a-f]{8,17}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")
_KEY_ARN = re.compile(r"arn:(aws[a-z-]*):kms:([a-z0-9-]+):(\d{12}):key/[a-f0-9-]{36}")

# A client of one AWS service, by its boto3 name ("ec2", "iam", ...).
ClientFactory = Callable[[str], Any]


@dataclass(frozen=True)
class Check:
    """One line of the answer."""

    ok: bool
    subject: str
    text: str

    def line(self) -> str:
        return f"{CHECK_MARK if self.ok else CROSS_MARK} {self.subject}: {self.text}"


@dataclass(frozen=True)
class Plan:
    """What the buyer is about to launch: the stack's parameters this command checks."""

    region: str
    vpc_id: str
    private_subnets: tuple[str, ...]
    load_balancer_subnets: tuple[str, ...]
    scheme: str = launch.LOAD_BALANCER_SCHEME_DEFAULT
    kms_key_arn: str = ""
    security_group_id: str = ""
    task_cpu: str = launch.TASK_CPU_DEFAULT
    desired_count: int = launch.TASK_DESIRED_COUNT_DEFAULT
    max_capacity: int = launch.AUTOSCALE_MAX_CAPACITY_DEFAULT
    image_region: str = launch.IMAGE_REGION
    ingest_mode: str = ingest.DEFAULT
    audit_secrets: bool = False

    @property
    def endpoints(self) -> tuple[launch.TaskEndpoint, ...]:
        """What the task calls from its subnets: in stow mode, HealthImaging's DICOMweb endpoint too; with the
        audit repository's secrets, Secrets Manager (ECS reads them there when a task starts)."""
        return (
            launch.TASK_ENDPOINTS
            + (launch.STOW_ENDPOINTS if self.ingest_mode == ingest.STOW else ())
            + (launch.AUDIT_SECRETS_ENDPOINTS if self.audit_secrets else ())
        )


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None)
    if isinstance(response, Mapping):
        return str(response.get("Error", {}).get("Code", "")) or type(error).__name__
    return type(error).__name__


def _could_not_read(what: str, error: Exception) -> str:
    # One line, whatever the error carries (an endpoint without the API answers a whole HTML page).
    message = " ".join(str(error).split())
    return f"could not read {what} ({_error_code(error)}: {message[:200]})"


# -- region ---------------------------------------------------------------------------------------------------------


def check_region(plan: Plan) -> list[Check]:
    if plan.region in limits.HEALTHIMAGING_REGIONS:
        return [Check(True, "region", f"{plan.region}: AWS HealthImaging runs here")]
    return [
        Check(
            False,
            "region",
            f"{plan.region}: AWS HealthImaging does not run here (the template refuses it); launch in one of "
            + ", ".join(limits.HEALTHIMAGING_REGIONS),
        )
    ]


# -- network --------------------------------------------------------------------------------------------------------


class Network:
    """The VPC as EC2 describes it: subnets, route tables, endpoints, security groups (read once each)."""

    def __init__(self, ec2: Any, plan: Plan) -> None:
        self.ec2 = ec2
        self.plan = plan
        self.subnets: dict[str, dict[str, Any]] = {}
        self._tables: list[dict[str, Any]] | None = None
        self._endpoints: list[dict[str, Any]] | None = None
        self._groups: dict[str, dict[str, Any]] = {}

    def route_tables(self) -> list[dict[str, Any]]:
        if self._tables is None:
            pages = self.ec2.get_paginator("describe_route_tables").paginate(
                Filters=[{"Name": "vpc-id", "Values": [self.plan.vpc_id]}]
            )
            self._tables = [table for page in pages for table in page["RouteTables"]]
        return self._tables

    def route_table(self, subnet_id: str) -> dict[str, Any] | None:
        """The subnet's route table: its explicit association, else the VPC's main table."""
        tables = self.route_tables()
        for table in tables:
            if any(a.get("SubnetId") == subnet_id for a in table.get("Associations", [])):
                return table
        return next((t for t in tables if any(a.get("Main") for a in t.get("Associations", []))), None)

    def endpoints(self) -> list[dict[str, Any]]:
        if self._endpoints is None:
            pages = self.ec2.get_paginator("describe_vpc_endpoints").paginate(
                Filters=[{"Name": "vpc-id", "Values": [self.plan.vpc_id]}]
            )
            self._endpoints = [e for page in pages for e in page["VpcEndpoints"] if e.get("State") == "available"]
        return self._endpoints

    def security_group(self, group_id: str) -> dict[str, Any] | None:
        if group_id not in self._groups:
            try:
                found = self.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"]
            except Exception:  # gone, or not ours to read: the caller says it could not verify
                found = []
            self._groups[group_id] = found[0] if found else {}
        return self._groups[group_id] or None

    def dns_attribute(self, attribute: str) -> bool:
        answer = self.ec2.describe_vpc_attribute(VpcId=self.plan.vpc_id, Attribute=attribute)
        key = attribute[0].upper() + attribute[1:]
        return bool(answer.get(key, {}).get("Value"))


def _default_route(table: Mapping[str, Any] | None) -> dict[str, Any] | None:
    for route in (table or {}).get("Routes", []):
        if route.get("DestinationCidrBlock") == EVERYWHERE:
            return dict(route)
    return None


def _route_target(route: Mapping[str, Any]) -> str:
    for key in (
        "NatGatewayId",
        "GatewayId",
        "TransitGatewayId",
        "InstanceId",
        "NetworkInterfaceId",
        "VpcPeeringConnectionId",
        "CoreNetworkArn",
        "LocalGatewayId",
        "CarrierGatewayId",
    ):
        if route.get(key):
            return str(route[key])
    return "an unknown target"


def check_network(plan: Plan, ec2: Any) -> list[Check]:
    network = Network(ec2, plan)
    try:
        ec2.describe_vpcs(VpcIds=[plan.vpc_id])
    except Exception as error:
        if _error_code(error).startswith("InvalidVpcID"):
            return [Check(False, "VPC", f"{plan.vpc_id} not found in {plan.region}: give a VPC of this region")]
        return [Check(False, "VPC", _could_not_read(plan.vpc_id, error))]
    checks = _subnets_exist(plan, network)
    if not all(check.ok for check in checks):
        return checks
    checks += _load_balancer_zones(plan, network)
    try:
        if plan.scheme == "internet-facing":
            checks += _load_balancer_subnets_public(plan, network)
        for subnet_id in plan.private_subnets:
            checks += _private_subnet_reaches_services(plan, network, subnet_id)
    except Exception as error:  # route tables or endpoints unreadable
        checks.append(Check(False, "routes", _could_not_read(f"the route tables or endpoints of {plan.vpc_id}", error)))
    return checks


def _subnets_exist(plan: Plan, network: Network) -> list[Check]:
    checks = []
    for subnet_id in dict.fromkeys((*plan.private_subnets, *plan.load_balancer_subnets)):
        try:
            (subnet,) = network.ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
        except Exception as error:
            if _error_code(error).startswith("InvalidSubnetID"):
                checks.append(Check(False, f"subnet {subnet_id}", f"not found in {plan.region}"))
            else:
                checks.append(Check(False, f"subnet {subnet_id}", _could_not_read("it", error)))
            continue
        network.subnets[subnet_id] = subnet
        if subnet["VpcId"] != plan.vpc_id:
            checks.append(
                Check(False, f"subnet {subnet_id}", f"in {subnet['VpcId']}, not in {plan.vpc_id}: give the VPC's")
            )
    if not checks:
        checks.append(
            Check(
                True,
                "subnets",
                f"{len(plan.private_subnets)} private and {len(plan.load_balancer_subnets)} load balancer subnet(s), "
                f"all in {plan.vpc_id}",
            )
        )
    return checks


def _zone(network: Network, subnet_id: str) -> str:
    return str(network.subnets[subnet_id]["AvailabilityZone"])


def _load_balancer_zones(plan: Plan, network: Network) -> list[Check]:
    checks = []
    by_zone: dict[str, list[str]] = {}
    for subnet_id in plan.load_balancer_subnets:
        by_zone.setdefault(_zone(network, subnet_id), []).append(subnet_id)
    for zone, subnet_ids in sorted(by_zone.items()):
        if len(subnet_ids) > 1:
            checks.append(
                Check(
                    False,
                    "load balancer subnets",
                    f"{' and '.join(subnet_ids)} are all in {zone}: a load balancer takes one subnet per Availability "
                    "Zone; give one of them",
                )
            )
    for subnet_id in plan.private_subnets:
        zone = _zone(network, subnet_id)
        if zone not in by_zone:
            checks.append(
                Check(
                    False,
                    "load balancer zones",
                    f"no load balancer subnet in {zone}, where private subnet {subnet_id} is: a load balancer sends "
                    "nothing to targets in an Availability Zone it is not enabled in (cross-zone load balancing, which "
                    f"the stack turns on, spreads connections only over enabled zones); add a load balancer subnet in "
                    f"{zone}, or leave {subnet_id} out",
                )
            )
    if not checks:
        zones = ", ".join(sorted(by_zone))
        checks.append(Check(True, "load balancer zones", f"one subnet in each of {zones}, covering every task subnet"))
    return checks


def _load_balancer_subnets_public(plan: Plan, network: Network) -> list[Check]:
    checks = []
    for subnet_id in plan.load_balancer_subnets:
        table = network.route_table(subnet_id)
        route = _default_route(table)
        target = _route_target(route) if route else ""
        if route and target.startswith("igw-") and route.get("State", "active") == "active":
            checks.append(Check(True, f"load balancer subnet {subnet_id}", f"public: {EVERYWHERE} -> {target}"))
            continue
        found = f"{EVERYWHERE} -> {target}" if route else f"no {EVERYWHERE} route"
        checks.append(
            Check(
                False,
                f"load balancer subnet {subnet_id}",
                f"not public ({found} in {(table or {}).get('RouteTableId', 'no route table')}): an internet-facing "
                "load balancer needs subnets that route 0.0.0.0/0 to an internet gateway; give public subnets, or "
                "--scheme internal (LoadBalancerScheme) when senders reach the VPC privately",
            )
        )
    return checks


def _private_subnet_reaches_services(plan: Plan, network: Network, subnet_id: str) -> list[Check]:
    subject = f"private subnet {subnet_id} ({_zone(network, subnet_id)})"
    table = network.route_table(subnet_id)
    table_id = (table or {}).get("RouteTableId", "no route table")
    route = _default_route(table)
    services = ", ".join(e.service for e in plan.endpoints)
    if route and route.get("State", "active") == "active":
        target = _route_target(route)
        if target.startswith("nat-"):
            return [_nat_gateway(network, subject, target, table_id, services)]
        if target.startswith("igw-"):
            return [
                Check(
                    False,
                    subject,
                    f"routes {EVERYWHERE} to internet gateway {target} ({table_id}): a public subnet. The tasks get no "
                    "public IP (the stack does not assign one), so nothing reaches the internet through it: give "
                    "private subnets whose 0.0.0.0/0 goes to a NAT gateway, or add the VPC endpoints",
                )
            ]
        return [
            Check(
                True,
                subject,
                f"{EVERYWHERE} -> {target} ({table_id}): cannot verify what lies beyond it, assumed to reach "
                f"{services} over HTTPS",
            )
        ]
    if route:
        return [
            Check(
                False,
                subject,
                f"{EVERYWHERE} -> {_route_target(route)} is {route.get('State')} in {table_id}: fix the route or "
                "its NAT gateway",
            )
        ]
    return [_endpoints_serve(plan, network, subject, subnet_id, table)]


def _nat_gateway(network: Network, subject: str, nat_id: str, table_id: str, services: str) -> Check:
    try:
        gateways = network.ec2.describe_nat_gateways(NatGatewayIds=[nat_id])["NatGateways"]
    except Exception as error:
        return Check(False, subject, f"{EVERYWHERE} -> {nat_id} ({table_id}); " + _could_not_read(nat_id, error))
    state = gateways[0].get("State") if gateways else "missing"
    if state != "available":
        return Check(False, subject, f"{EVERYWHERE} -> {nat_id} ({table_id}), which is {state}: fix the NAT gateway")
    return Check(True, subject, f"{EVERYWHERE} -> NAT gateway {nat_id} ({table_id}): reaches {services}")


def _endpoints_serve(
    plan: Plan, network: Network, subject: str, subnet_id: str, table: Mapping[str, Any] | None
) -> Check:
    """Without a default route, every service the task calls needs a VPC endpoint usable from this subnet."""
    table_id = (table or {}).get("RouteTableId", "")
    zone = _zone(network, subnet_id)
    missing: list[str] = []
    notes: list[str] = []
    for needed in plan.endpoints:
        if needed.image and plan.image_region != plan.region:
            missing.append(
                f"{needed.service}: the image is in {plan.image_region}'s registry and VPC endpoints reach only their "
                f"own region: the pull needs a NAT gateway"
            )
            continue
        found, note = _endpoint_for(plan, network, needed, subnet_id, zone, table_id)
        if found:
            notes += [note] if note else []
            continue
        kind = (
            f"gateway endpoint {needed.service_name(plan.region)} associated with {table_id or 'its route table'}"
            if needed.gateway
            else f"interface endpoint {needed.service_name(plan.region)} with private DNS and a subnet in {zone}"
        )
        missing.append(f"{needed.service} ({needed.why}): {note or 'no ' + kind}")
    if not missing and any(not e.gateway for e in plan.endpoints):
        for attribute in ("enableDnsSupport", "enableDnsHostnames"):
            if not network.dns_attribute(attribute):
                missing.append(f"{plan.vpc_id} has {attribute} off: interface endpoints' private DNS names need it on")
    if missing:
        return Check(
            False,
            subject,
            f"no {EVERYWHERE} route in {table_id or 'its route table'} and not every service has a VPC endpoint: "
            + "; ".join(missing)
            + ". Route 0.0.0.0/0 to a NAT gateway, or add the endpoints",
        )
    text = f"no {EVERYWHERE} route; VPC endpoints for " + ", ".join(e.service for e in plan.endpoints)
    return Check(True, subject, text + ("; " + "; ".join(notes) if notes else ""))


def _endpoint_for(
    plan: Plan, network: Network, needed: launch.TaskEndpoint, subnet_id: str, zone: str, table_id: str
) -> tuple[bool, str]:
    """(usable, note): whether an endpoint of the VPC serves ``needed`` from this subnet, and what to know."""
    name = needed.service_name(plan.region)
    candidates = [e for e in network.endpoints() if e.get("ServiceName") == name]
    if needed.gateway:
        for endpoint in candidates:
            if endpoint.get("VpcEndpointType") == "Gateway" and table_id in endpoint.get("RouteTableIds", []):
                return True, ""
    problems = []
    for endpoint in candidates:
        if endpoint.get("VpcEndpointType") != "Interface":
            if needed.gateway:
                problems.append(f"gateway endpoint {endpoint['VpcEndpointId']} is not associated with {table_id}")
            continue
        if not endpoint.get("PrivateDnsEnabled"):
            problems.append(f"interface endpoint {endpoint['VpcEndpointId']} has private DNS off")
            continue
        zones = {_zone_of(network, s) for s in endpoint.get("SubnetIds", [])}
        if zone not in zones:
            problems.append(f"interface endpoint {endpoint['VpcEndpointId']} has no subnet in {zone}")
            continue
        admitted, note = _admits_https(plan, network, endpoint, subnet_id)
        if admitted:
            return True, note
        problems.append(note)
    return False, "; ".join(problems)


def _zone_of(network: Network, subnet_id: str) -> str:
    if subnet_id not in network.subnets:
        try:
            (network.subnets[subnet_id],) = network.ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
        except Exception:
            return ""
    return _zone(network, subnet_id)


def _admits_https(plan: Plan, network: Network, endpoint: Mapping[str, Any], subnet_id: str) -> tuple[bool, str]:
    """Whether the interface endpoint's security groups let the tasks (in ``subnet_id``) in on 443."""
    groups = [g["GroupId"] for g in endpoint.get("Groups", [])]
    if not groups:
        return True, ""
    subnet_cidr = ipaddress.ip_network(network.subnets[subnet_id]["CidrBlock"])
    from_groups: set[str] = set()
    for group_id in groups:
        group = network.security_group(group_id)
        if group is None:
            endpoint_id = endpoint["VpcEndpointId"]
            return True, f"could not read {group_id} of {endpoint_id}: verify it admits HTTPS from {subnet_cidr}"
        for permission in group.get("IpPermissions", []):
            protocol = permission.get("IpProtocol")
            if protocol not in ("-1", "tcp", "6"):
                continue
            if protocol != "-1" and not permission.get("FromPort", 0) <= HTTPS <= permission.get("ToPort", -1):
                continue
            for address in permission.get("IpRanges", []):
                if subnet_cidr.subnet_of(ipaddress.ip_network(address["CidrIp"], strict=False)):  # type: ignore[arg-type]
                    return True, ""
            from_groups |= {pair["GroupId"] for pair in permission.get("UserIdGroupPairs", []) if pair.get("GroupId")}
    if plan.security_group_id and plan.security_group_id in from_groups:
        return True, ""
    if from_groups:
        return False, (
            f"interface endpoint {endpoint['VpcEndpointId']} admits HTTPS only from security group(s) "
            f"{', '.join(sorted(from_groups))}: pass one as --security-group-id (SecurityGroupID), which the tasks "
            "then carry"
        )
    return False, (
        f"the security groups of interface endpoint {endpoint['VpcEndpointId']} ({', '.join(groups)}) do not admit "
        f"HTTPS (443) from {subnet_cidr}: add an inbound rule"
    )


# -- ECS service-linked role ----------------------------------------------------------------------------------------


def check_ecs_role(iam: Any) -> list[Check]:
    subject = "ECS service-linked role"
    try:
        iam.get_role(RoleName=launch.ECS_SERVICE_LINKED_ROLE)
    except Exception as error:
        if _error_code(error) == "NoSuchEntity":
            return [
                Check(
                    False,
                    subject,
                    f"{launch.ECS_SERVICE_LINKED_ROLE} does not exist; ECS creates it on first use only when the "
                    "stack's creator may, and the service fails to start without it: run `aws iam "
                    f"create-service-linked-role --aws-service-name {launch.ECS_SERVICE_PRINCIPAL}`",
                )
            ]
        return [Check(False, subject, _could_not_read(launch.ECS_SERVICE_LINKED_ROLE, error))]
    return [Check(True, subject, f"{launch.ECS_SERVICE_LINKED_ROLE} exists")]


# -- Fargate vCPU quota ---------------------------------------------------------------------------------------------


def vcpus_needed(plan: Plan) -> tuple[float, float]:
    """(vCPUs to run the most tasks autoscaling may run, vCPUs for a deployment at the minimum: new beside old)."""
    per_task = int(plan.task_cpu) / launch.CPU_UNITS_PER_VCPU
    running = max(plan.desired_count, plan.max_capacity) * per_task
    deploying = plan.desired_count * launch.DEPLOYMENT_MAXIMUM_PERCENT / 100 * per_task
    return running, deploying


def _number(value: float) -> str:
    return f"{value:g}"


def check_fargate_quota(plan: Plan, quotas: Any) -> list[Check]:
    subject = "Fargate vCPU quota"
    service, code = launch.FARGATE_VCPU_QUOTA
    running, deploying = vcpus_needed(plan)
    needed = max(running, deploying)
    what = (
        f"{plan.max_capacity} task(s) at most x {_number(int(plan.task_cpu) / launch.CPU_UNITS_PER_VCPU)} vCPU = "
        f"{_number(running)}; a deployment at {plan.desired_count} task(s) runs up to {_number(deploying)}"
    )
    try:
        quota = float(quotas.get_service_quota(ServiceCode=service, QuotaCode=code)["Quota"]["Value"])
    except Exception as error:
        return [
            Check(
                False,
                subject,
                _could_not_read(f"Fargate On-Demand vCPU resource count ({code})", error)
                + f": check it in the Service Quotas console for {plan.region}; the stack needs {_number(needed)} "
                f"({what})",
            )
        ]
    if quota < needed:
        return [
            Check(
                False,
                subject,
                f"{_number(quota)} vCPU in {plan.region}, the stack needs {_number(needed)} ({what}): request an "
                f"increase of Fargate On-Demand vCPU resource count ({code}) in Service Quotas, or lower "
                "AutoscaleMaxCapacity or TaskCPU",
            )
        ]
    return [
        Check(
            True,
            subject,
            f"{_number(quota)} vCPU in {plan.region} >= {_number(needed)} needed ({what}); other Fargate tasks of the "
            "account in this region share it",
        )
    ]


# -- customer KMS key -----------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _allows(statement: Mapping[str, Any], actions: Iterable[str]) -> bool:
    granted = [a.lower() for a in _as_list(statement.get("Action"))]
    return all(any(fnmatch.fnmatchcase(action.lower(), pattern) for pattern in granted) for action in actions)


def _principals(statement: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(AWS principals, service principals) of a statement; "*" counts as an AWS principal."""
    principal = statement.get("Principal")
    if principal == "*":
        return ["*"], []
    if not isinstance(principal, Mapping):
        return [], []
    return [str(p) for p in _as_list(principal.get("AWS"))], [str(p) for p in _as_list(principal.get("Service"))]


def _is_account(principal: str, account: str) -> bool:
    return principal in (account, "*") or re.fullmatch(rf"arn:aws[a-z-]*:iam::{account}:root", principal) is not None


def _condition_values(statement: Mapping[str, Any], key: str) -> list[str] | None:
    """Values the statement's condition allows for ``key`` (None: no condition on it)."""
    values: list[str] | None = None
    for operator, entries in (statement.get("Condition") or {}).items():
        for name, value in entries.items():
            if name.lower() == key.lower() and operator.startswith("String"):
                values = (values or []) + [str(v) for v in _as_list(value)]
    return values


def _other_conditions(statement: Mapping[str, Any], known: set[str]) -> list[str]:
    return sorted(
        name for entries in (statement.get("Condition") or {}).values() for name in entries if name.lower() not in known
    )


def key_policy_admits(policy: Mapping[str, Any], account: str, region: str) -> list[tuple[launch.KeyUser, bool, str]]:
    """For each of the key's users: whether the policy admits it, and what to verify or do."""
    statements = [s for s in _as_list(policy.get("Statement")) if isinstance(s, Mapping)]
    allows = [s for s in statements if s.get("Effect") == "Allow"]
    answers = []
    for user in launch.KEY_USERS:
        via = f"{user.service}.{region}.amazonaws.com"
        if user.service_principal:
            admitted = [
                s
                for s in allows
                if any(p in (via, f"{user.service}.amazonaws.com") for p in _principals(s)[1])
                and _allows(s, user.actions)
            ]
            if admitted:
                answers.append((user, True, ""))
            else:
                answers.append(
                    (
                        user,
                        False,
                        f"a statement must allow the service principal {via} "
                        + ", ".join(user.actions)
                        + f" (condition ArnLike kms:EncryptionContext:aws:logs:arn arn:aws:logs:{region}:{account}:"
                        "log-group:*)",
                    )
                )
            continue
        verify = ""
        admitted_by = None
        for statement in allows:
            aws, _ = _principals(statement)
            if not any(_is_account(p, account) for p in aws) or not _allows(statement, user.actions):
                continue
            services = _condition_values(statement, "kms:ViaService")
            callers = _condition_values(statement, "kms:CallerAccount")
            if services is not None and not any(fnmatch.fnmatchcase(via, v) for v in services):
                continue
            if callers is not None and account not in callers:
                continue
            if "*" in aws and callers is None:
                continue  # anyone anywhere through the service: not ours to rely on
            admitted_by = statement
            others = _other_conditions(statement, {"kms:viaservice", "kms:calleraccount"})
            if others:
                verify = f"verify that its conditions ({', '.join(others)}) hold for the stack's roles"
            break
        if admitted_by is None:
            answers.append(
                (
                    user,
                    False,
                    "no statement lets this account's IAM policies grant "
                    + ", ".join(user.actions)
                    + f" through {via} (the usual one: Principal arn:aws:iam::{account}:root, Action kms:*)",
                )
            )
        else:
            answers.append((user, True, verify))
    return answers


def check_kms_key(plan: Plan, kms: Any, account: str) -> list[Check]:
    if not plan.kms_key_arn:
        return [Check(True, "KMS key", "none given: the stack encrypts with AWS owned keys")]
    subject = "KMS key"
    match = _KEY_ARN.fullmatch(plan.kms_key_arn)
    assert match, "the arguments were checked"
    if match.group(2) != plan.region:
        return [
            Check(
                False,
                subject,
                f"{plan.kms_key_arn} is in {match.group(2)}: the stack's buckets, tables and logs in {plan.region} "
                f"can use only a key of {plan.region}",
            )
        ]
    try:
        metadata = kms.describe_key(KeyId=plan.kms_key_arn)["KeyMetadata"]
        policy = json.loads(kms.get_key_policy(KeyId=plan.kms_key_arn, PolicyName="default")["Policy"])
    except Exception as error:
        return [Check(False, subject, _could_not_read(f"{plan.kms_key_arn} or its key policy", error))]
    problems = []
    if metadata.get("KeyState") != "Enabled":
        problems.append(f"its state is {metadata.get('KeyState')}: enable it")
    if metadata.get("KeyUsage", "ENCRYPT_DECRYPT") != "ENCRYPT_DECRYPT" or metadata.get(
        "KeySpec", "SYMMETRIC_DEFAULT"
    ) != ("SYMMETRIC_DEFAULT"):
        problems.append("it is not a symmetric encryption key (S3, DynamoDB and CloudWatch Logs need one)")
    if problems:
        return [Check(False, subject, f"{plan.kms_key_arn}: " + "; ".join(problems))]
    checks = []
    denies = [s for s in _as_list(policy.get("Statement")) if isinstance(s, Mapping) and s.get("Effect") == "Deny"]
    caveat = (
        f"; the policy has {len(denies)} Deny statement(s): verify they spare the stack's roles and services"
        if denies
        else ""
    )
    owner = match.group(3)
    for user, admitted, note in key_policy_admits(policy, owner, plan.region):
        if admitted:
            checks.append(
                Check(
                    True,
                    f"KMS key for {user.service}",
                    f"the key policy admits {user.what}" + (f"; {note}" if note else "") + caveat,
                )
            )
        else:
            checks.append(
                Check(False, f"KMS key for {user.service}", f"the key policy does not admit {user.what}: {note}")
            )
    if owner != account:
        checks.append(
            Check(
                False,
                subject,
                f"{plan.kms_key_arn} belongs to account {owner}, the stack's is {account}: use a key of this account",
            )
        )
    return checks


# -- Lambda concurrency ---------------------------------------------------------------------------------------------


def check_lambda(plan: Plan, lambda_: Any) -> list[Check]:
    subject = "Lambda concurrency"
    needed = launch.LAMBDA_RESERVED_CONCURRENCY + launch.LAMBDA_FUNCTIONS
    _, code = launch.LAMBDA_CONCURRENCY_QUOTA
    try:
        limit = lambda_.get_account_settings()["AccountLimit"]
    except Exception as error:
        return [
            Check(
                False,
                subject,
                _could_not_read("the account's Lambda settings", error)
                + f": check Concurrent executions ({code}) in the Service Quotas console; the stack's "
                f"{launch.LAMBDA_FUNCTIONS} functions need at least {needed} unreserved",
            )
        ]
    total = int(limit.get("ConcurrentExecutions", 0))
    unreserved = int(limit.get("UnreservedConcurrentExecutions", 0))
    if unreserved < needed:
        return [
            Check(
                False,
                subject,
                f"{unreserved} of {total} concurrent executions unreserved in {plan.region}: the stack's "
                f"{launch.LAMBDA_FUNCTIONS} import functions share that pool, so they need at least "
                f"{needed}; lower other functions' reserved concurrency or request an increase of Concurrent "
                f"executions ({code})",
            )
        ]
    return [
        Check(
            True,
            subject,
            f"{unreserved} of {total} concurrent executions unreserved in {plan.region}; the stack reserves "
            f"{launch.LAMBDA_RESERVED_CONCURRENCY} (its {launch.LAMBDA_FUNCTIONS} functions share the unreserved "
            "pool; throttled invocations are retried)",
        )
    ]


# -- command --------------------------------------------------------------------------------------------------------


def _comma_list(pattern: re.Pattern[str], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(value: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in value.split(",") if item.strip())
        if not items:
            raise argparse.ArgumentTypeError(f"no {what} given")
        for item in items:
            if not pattern.fullmatch(item):
                raise argparse.ArgumentTypeError(f"{item!r} is not {what}")
        return items

    return parse


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if not pattern.fullmatch(value.strip()):
            raise argparse.ArgumentTypeError(f"{value!r} is not {what}")
        return value.strip()

    return parse


def _tasks(value: str) -> int:
    count = int(value)
    if not 1 <= count <= 100:
        raise argparse.ArgumentTypeError("between 1 and 100 (the template's bounds)")
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-store-scp preflight",
        description="Is this account ready for the stack? Read-only checks, with your credentials, of what the "
        "template cannot check: the region, the VPC's subnets and their routes or VPC endpoints, the ECS "
        "service-linked role, the Fargate vCPU quota, a customer KMS key's policy and Lambda concurrency. One "
        "line per check: ✓, or ✗ with what to do.",
        epilog="Exit status: 0 ready, 1 not ready (see the ✗ lines), 2 bad arguments or no usable credentials.",
    )
    parser.add_argument("--region", required=True, type=_matching(_REGION, "an AWS region"), help="the stack's region")
    parser.add_argument("--vpc-id", required=True, type=_matching(_VPC_ID, "a VPC id"), help="VpcID")
    parser.add_argument(
        "--private-subnets",
        required=True,
        metavar="SUBNET,...",
        type=_comma_list(_SUBNET_ID, "a subnet id"),
        help="PrivateSubnetIDs, comma-separated",
    )
    parser.add_argument(
        "--load-balancer-subnets",
        required=True,
        metavar="SUBNET,...",
        type=_comma_list(_SUBNET_ID, "a subnet id"),
        help="LoadBalancerSubnetIDs, comma-separated",
    )
    parser.add_argument(
        "--scheme",
        choices=("internet-facing", "internal"),
        default=launch.LOAD_BALANCER_SCHEME_DEFAULT,
        help="LoadBalancerScheme",
    )
    parser.add_argument(
        "--kms-key-arn", default=None, type=_matching(_KEY_ARN, "a KMS key ARN (arn:...:key/<uuid>)"), help="KmsKeyArn"
    )
    parser.add_argument(
        "--security-group-id",
        default=None,
        type=_matching(_SECURITY_GROUP_ID, "a security group id"),
        help="SecurityGroupID (the additional task security group), if you will give one",
    )
    parser.add_argument(
        "--task-cpu",
        choices=tuple(launch.FARGATE_CPU_MEMORY),
        default=launch.TASK_CPU_DEFAULT,
        help=f"TaskCPU (default {launch.TASK_CPU_DEFAULT})",
    )
    parser.add_argument(
        "--desired-count",
        type=_tasks,
        default=launch.TASK_DESIRED_COUNT_DEFAULT,
        help=f"TaskDesiredCount (default {launch.TASK_DESIRED_COUNT_DEFAULT})",
    )
    parser.add_argument(
        "--max-capacity",
        type=_tasks,
        default=launch.AUTOSCALE_MAX_CAPACITY_DEFAULT,
        help=f"AutoscaleMaxCapacity (default {launch.AUTOSCALE_MAX_CAPACITY_DEFAULT})",
    )
    parser.add_argument(
        "--image-region",
        type=_matching(_REGION, "an AWS region"),
        default=launch.IMAGE_REGION,
        help=f"the region of the image's ECR registry (default {launch.IMAGE_REGION}, AWS Marketplace's)",
    )
    parser.add_argument(
        "--ingest-mode",
        choices=ingest.MODES,
        default=ingest.DEFAULT,
        help=f"IngestMode (default {ingest.DEFAULT}); stow: the tasks must reach HealthImaging's DICOMweb endpoint too",
    )
    parser.add_argument(
        "--audit-secrets",
        action="store_true",
        help="AuditSyslog*SecretArn given: the tasks must reach Secrets Manager too",
    )
    parser.add_argument("--endpoint-url", metavar="URL", default=None, help="AWS endpoint [AWS_ENDPOINT_URL]")
    return parser


def _plan(args: argparse.Namespace) -> Plan:
    return Plan(
        region=args.region,
        vpc_id=args.vpc_id,
        private_subnets=args.private_subnets,
        load_balancer_subnets=args.load_balancer_subnets,
        scheme=args.scheme,
        kms_key_arn=args.kms_key_arn or "",
        security_group_id=args.security_group_id or "",
        task_cpu=args.task_cpu,
        desired_count=args.desired_count,
        max_capacity=args.max_capacity,
        image_region=args.image_region,
        ingest_mode=args.ingest_mode,
        audit_secrets=args.audit_secrets,
    )


def boto3_clients(region: str, endpoint_url: str | None) -> ClientFactory:
    import boto3

    session: Any = boto3.session.Session(region_name=region)
    return lambda service: session.client(service, endpoint_url=endpoint_url)


# The prerequisites, in the order they are checked: docs/deployment.md's Prerequisites list names exactly these.
CHECKS: tuple[tuple[str, Callable[[Plan, ClientFactory, str], list[Check]]], ...] = (
    ("Region", lambda plan, client, account: check_region(plan)),
    ("Network", lambda plan, client, account: check_network(plan, client("ec2"))),
    ("ECS service-linked role", lambda plan, client, account: check_ecs_role(client("iam"))),
    ("Fargate vCPU quota", lambda plan, client, account: check_fargate_quota(plan, client("service-quotas"))),
    ("KMS key", lambda plan, client, account: check_kms_key(plan, client("kms"), account)),
    ("Lambda concurrency", lambda plan, client, account: check_lambda(plan, client("lambda"))),
)


def run_checks(plan: Plan, client: ClientFactory, account: str) -> list[Check]:
    return [check for _, run in CHECKS for check in run(plan, client, account)]


def main(argv: Sequence[str] | None = None, clients: ClientFactory | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    plan = _plan(args)
    if args.max_capacity < args.desired_count:
        parser.error("--max-capacity must be at least --desired-count (AutoscaleMaxCapacity >= TaskDesiredCount)")
    client = clients or boto3_clients(plan.region, args.endpoint_url)
    try:
        account = str(client("sts").get_caller_identity()["Account"])
    except Exception as error:  # botocore: no credentials, no such endpoint
        print(f"dicom-store-scp preflight: cannot check: {_error_code(error)}: {error}", file=sys.stderr)
        return EXIT_USAGE
    checks = run_checks(plan, client, account)
    for check in checks:
        print(check.line())
    ready = all(check.ok for check in checks)
    failed = sum(not check.ok for check in checks)
    print(f"ready to launch in {plan.region}" if ready else f"not ready: {failed} check(s) failed")
    return EXIT_READY if ready else EXIT_NOT_READY
