"""Storage commitment in the stack: the commitment table and what the SCP task may do with it.

The SCP records each storage commitment transaction in the commitment table and reads import outcomes from the
instance table (container/dicom_store_scp/commitment.py); keys and indexes are ``dicom_store_contract.tables``.
"""

from __future__ import annotations

from awacs import dynamodb as ddb
from awacs.aws import Allow, PolicyDocument, Statement
from dicom_store_contract import tables
from troposphere import GetAtt, Output, Ref, Sub, Template, dynamodb, iam

from template_gen import common as c
from template_gen import parameters as p
from template_gen.storage import _table

COMMITMENT_TABLE = "CommitmentTable"


def add_commitment(template: Template) -> None:
    table = _table(COMMITMENT_TABLE, tables.RECORD_ID, tables.COMMITMENT_INDEXES)
    # A transaction's item is removed 7 days after its report (the SCP sets expiresAt): the retention.
    table.TimeToLiveSpecification = dynamodb.TimeToLiveSpecification(AttributeName=tables.EXPIRES_AT, Enabled=True)
    template.add_resource(table)
    # The SCP task records transactions and reads outcomes: its grants sit here, next to the table they govern.
    template.resources[c.TASK_ROLE].Policies.append(task_policy())
    template.add_output(
        Output(
            "CommitmentTableName",
            Description="DynamoDB table of storage commitment transactions",
            Value=Ref(COMMITMENT_TABLE),
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
