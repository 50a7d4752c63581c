"""Storage commitment in the stack: the commitment table and what the SCP task may do with it.

The SCP records each storage commitment transaction in the commitment table and reads import outcomes from the
instance table (container/dicom_store_scp/commitment.py); keys and indexes are ``dicom_store_contract.tables``.
"""

from __future__ import annotations

from awacs import dynamodb as ddb
from awacs.aws import Allow, PolicyDocument, Statement
from dicom_store_contract import tables
from troposphere import And, Equals, GetAtt, Join, Not, Output, Ref, Select, Split, Sub, Template, dynamodb, ec2, iam

from template_gen import common as c
from template_gen import parameters as p
from template_gen.storage import _table

COMMITMENT_TABLE = "CommitmentTable"


def reports_to_peer_port(n: int) -> str:
    """Condition: CommitmentPeers has an n-th peer whose port no earlier peer has (one egress rule per port:
    EC2 refuses the same rule twice in a security group)."""
    return f"CommitmentPeer{n}HasANewPort"


def egress_to_peer(n: int) -> str:
    return f"ScpTaskEgressToCommitmentPeer{n}"


def add_commitment(template: Template) -> None:
    table = _table(COMMITMENT_TABLE, tables.RECORD_ID, tables.COMMITMENT_INDEXES)
    # A transaction's item is removed 7 days after its report (the SCP sets expiresAt): the retention.
    table.TimeToLiveSpecification = dynamodb.TimeToLiveSpecification(AttributeName=tables.EXPIRES_AT, Enabled=True)
    template.add_resource(table)
    _add_egress_to_peers(template)
    # The SCP task records transactions and reads outcomes: its grants sit here, next to the table they govern.
    template.resources[c.TASK_ROLE].Policies.append(task_policy())
    template.add_output(
        Output(
            "CommitmentTableName",
            Description="DynamoDB table of storage commitment transactions",
            Value=Ref(COMMITMENT_TABLE),
        )
    )


def _peer(n: int) -> Select:
    """The n-th AE=host:port of CommitmentPeers, or "" (the list padded with empty items so that Select never
    runs past its end: conditions are evaluated whether or not the peer exists)."""
    padded = Join(",", [Ref(p.COMMITMENT_PEERS), *([""] * (p.MAX_COMMITMENT_PEERS - 1))])
    return Select(n - 1, Split(",", padded))


def _peer_port(n: int) -> Select:
    """The n-th peer's port, or "" (hosts have no colon: the parameter's pattern)."""
    return Select(1, Split(":", Join("", [_peer(n), ":"])))


def _add_egress_to_peers(template: Template) -> None:
    """Reports to CommitmentPeers go out on new associations: TCP to each peer's port, only towards
    CommitmentPeersCIDR (the task's only other egress is HTTPS), and only when peers are given."""
    for n in range(1, p.MAX_COMMITMENT_PEERS + 1):
        new_port = [Not(Equals(_peer_port(n), _peer_port(earlier))) for earlier in range(1, n)]
        has_peer = Not(Equals(_peer(n), ""))
        template.add_condition(reports_to_peer_port(n), And(has_peer, *new_port) if new_port else has_peer)
        template.add_resource(
            ec2.SecurityGroupEgress(
                egress_to_peer(n),
                Condition=reports_to_peer_port(n),
                GroupId=GetAtt(c.TASK_SECURITY_GROUP, "GroupId"),
                Description="Storage commitment reports (N-EVENT-REPORT) to CommitmentPeers",
                IpProtocol="tcp",
                FromPort=_peer_port(n),
                ToPort=_peer_port(n),
                CidrIp=Ref(p.COMMITMENT_PEERS_CIDR),
            )
        )


def container_environment() -> dict[str, object]:
    """What the SCP container needs to offer storage commitment."""
    return {
        "INSTANCE_TABLE_NAME": Ref(c.INSTANCE_TABLE),
        "COMMITMENT_TABLE_NAME": Ref(COMMITMENT_TABLE),
        "COMMITMENT_PEERS": Ref(p.COMMITMENT_PEERS),
    }


def task_policy() -> iam.Policy:
    """Record and report transactions; read import outcomes by key (BatchGetItem), never scan."""
    commitment_arn = GetAtt(COMMITMENT_TABLE, "Arn")
    return iam.Policy(
        PolicyName="storage-commitment",
        PolicyDocument=PolicyDocument(
            Version="2012-10-17",
            Statement=[
                Statement(
                    Effect=Allow,
                    Action=[ddb.PutItem, ddb.UpdateItem, ddb.GetItem],
                    Resource=[commitment_arn],
                ),
                Statement(
                    Effect=Allow,
                    Action=[ddb.Query],
                    Resource=[Sub("${Arn}/index/" + tables.PENDING_COMMITMENTS.name, Arn=commitment_arn)],
                ),
                Statement(
                    Effect=Allow,
                    Action=[ddb.BatchGetItem],
                    Resource=[GetAtt(c.INSTANCE_TABLE, "Arn")],
                ),
            ],
        ),
    )
