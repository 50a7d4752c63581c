"""The audit trail's log group: DICOM audit messages (PS3.15 A.5), one per log event, kept for years.

Separate from the SCP's operational log group: its own retention (six years by default, HIPAA's documentation
retention), the stack's KMS key when one is given, retained when the stack is deleted. The SCP writes to it itself
(dicom_store_scp/audit/sinks.py), with the task role's permission on this group alone, and so does CheckStatus, the
ingest outcome of each import job (pipeline.write_audit); reading it is a separate grant the deployer gives to
whoever audits (docs/security.md).
"""

from __future__ import annotations

from awacs import logs as logs_actions
from awacs.aws import Allow, PolicyDocument, Statement
from troposphere import GetAtt, Ref, Template, iam, logs

from template_gen import common as c
from template_gen import parameters as p

AUDIT_LOG_GROUP = "AuditLogGroup"


def container_environment() -> dict[str, Ref]:
    """What the SCP's task and CheckStatus are told (AUDIT_LOG_GROUP in dicom_store_scp.config, functions.settings)."""
    return {"AUDIT_LOG_GROUP": Ref(AUDIT_LOG_GROUP)}


def add_audit(template: Template) -> None:
    template.add_resource(audit_log_group())


def audit_log_group() -> logs.LogGroup:
    return logs.LogGroup(
        AUDIT_LOG_GROUP,
        **c.RETAIN,
        RetentionInDays=Ref(p.AUDIT_LOG_RETENTION_DAYS),
        KmsKeyId=c.kms_key_or_none(),
    )


def task_policy() -> iam.Policy:
    """The task role's grant: create its stream and put events in the audit group; nothing else, no reading."""
    return iam.Policy(
        PolicyName="write-audit-messages",
        PolicyDocument=PolicyDocument(
            Version="2012-10-17",
            Statement=[
                Statement(
                    Effect=Allow,
                    Action=[logs_actions.CreateLogStream, logs_actions.PutLogEvents],
                    Resource=[GetAtt(AUDIT_LOG_GROUP, "Arn")],
                )
            ],
        ),
    )
