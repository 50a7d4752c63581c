"""The audit trail's log group and the way to the hospital's audit repository.

The log group holds DICOM audit messages (PS3.15 A.5), one per log event, kept for years. Separate from the SCP's
operational log group: its own retention (six years by default, HIPAA's documentation retention), the stack's KMS
key when one is given, retained when the stack is deleted. The SCP writes to it itself
(dicom_store_scp/audit/sinks.py), with the task role's permission on this group alone, and so does CheckStatus, the
ingest outcome of each import job (pipeline.write_audit); reading it is a separate grant the deployer gives to
whoever audits (docs/security.md).

The audit repository (AuditSyslogURL, IHE ATNA syslog over TLS): the task may reach it on its port, towards
AuditSyslogCIDR only (the task's only other egress is HTTPS); its CA and the SCP's client certificate and key come
from Secrets Manager as ECS task secrets (AUDIT_SYSLOG_*_PEM), which the execution role may read, those secrets
alone (and decrypt with their key, through Secrets Manager, when one is given).
"""

from __future__ import annotations

from awacs import kms, secretsmanager
from awacs import logs as logs_actions
from awacs.aws import Allow, Condition, PolicyDocument, Statement, StringEquals
from troposphere import (
    And,
    AWSHelperFn,
    Equals,
    GetAtt,
    If,
    Not,
    NoValue,
    Or,
    Ref,
    Select,
    Split,
    Sub,
    Template,
    ec2,
    ecs,
    iam,
    logs,
)
from troposphere import Condition as Condition_

from template_gen import common as c
from template_gen import parameters as p

AUDIT_LOG_GROUP = "AuditLogGroup"
AUDIT_SYSLOG_EGRESS = "ScpTaskEgressToAuditRepository"
# Conditions.
SENDS_TO_AUDIT_REPOSITORY = "SendsToAuditRepository"
HAS_AUDIT_SYSLOG_SECRETS = "HasAuditSyslogSecrets"
DECRYPTS_AUDIT_SYSLOG_SECRETS = "DecryptsAuditSyslogSecrets"
# Each secret: its parameter, the condition that it is given, the variable the task receives it in.
SECRETS = (
    (p.AUDIT_SYSLOG_CA_SECRET_ARN, "HasAuditSyslogCASecret", "AUDIT_SYSLOG_CA_PEM"),
    (p.AUDIT_SYSLOG_CERT_SECRET_ARN, "HasAuditSyslogCertSecret", "AUDIT_SYSLOG_CERT_PEM"),
    (p.AUDIT_SYSLOG_KEY_SECRET_ARN, "HasAuditSyslogKeySecret", "AUDIT_SYSLOG_KEY_PEM"),
)


def _given(parameter: str) -> Not:
    return Not(Equals(Ref(parameter), ""))


def container_environment() -> dict[str, Ref]:
    """What the SCP's task and CheckStatus are told (AUDIT_LOG_GROUP in dicom_store_scp.config, functions.settings)."""
    return {"AUDIT_LOG_GROUP": Ref(AUDIT_LOG_GROUP)}


def syslog_environment() -> dict[str, Ref]:
    """The SCP's only: where the audit repository is (empty: none)."""
    return {"AUDIT_SYSLOG_URL": Ref(p.AUDIT_SYSLOG_URL)}


def add_audit(template: Template) -> None:
    # With its network too (the rule AuditRepositoryHasANetwork refuses a URL without one): the egress rule's
    # CidrIp is never the empty default.
    template.add_condition(SENDS_TO_AUDIT_REPOSITORY, And(_given(p.AUDIT_SYSLOG_URL), _given(p.AUDIT_SYSLOG_CIDR)))
    for parameter, condition, _ in SECRETS:
        template.add_condition(condition, _given(parameter))
    template.add_condition(HAS_AUDIT_SYSLOG_SECRETS, Or(*(_given(parameter) for parameter, _, _ in SECRETS)))
    template.add_condition(
        DECRYPTS_AUDIT_SYSLOG_SECRETS,
        And(Condition_(HAS_AUDIT_SYSLOG_SECRETS), _given(p.AUDIT_SYSLOG_SECRETS_KMS_KEY_ARN)),
    )
    template.add_resource(audit_log_group())
    template.add_resource(egress_to_audit_repository())


def audit_log_group() -> logs.LogGroup:
    return logs.LogGroup(
        AUDIT_LOG_GROUP,
        **c.RETAIN,
        RetentionInDays=Ref(p.AUDIT_LOG_RETENTION_DAYS),
        KmsKeyId=c.kms_key_or_none(),
    )


def syslog_port() -> Select:
    """The port of AuditSyslogURL (tls://host:port: after its second colon; "" when the URL is empty)."""
    return Select(2, Split(":", Sub(p.in_sub(p.AUDIT_SYSLOG_URL) + "::")))


def egress_to_audit_repository() -> ec2.SecurityGroupEgress:
    return ec2.SecurityGroupEgress(
        AUDIT_SYSLOG_EGRESS,
        Condition=SENDS_TO_AUDIT_REPOSITORY,
        GroupId=GetAtt(c.TASK_SECURITY_GROUP, "GroupId"),
        Description="DICOM audit messages (syslog over TLS) to the audit repository, AuditSyslogURL",
        IpProtocol="tcp",
        FromPort=syslog_port(),
        ToPort=syslog_port(),
        CidrIp=Ref(p.AUDIT_SYSLOG_CIDR),
    )


def container_secrets() -> list[AWSHelperFn]:
    """ECS injects each given secret's text into the container's environment when the task starts."""
    return [
        If(condition, ecs.Secret(Name=variable, ValueFrom=Ref(parameter)), NoValue)
        for parameter, condition, variable in SECRETS
    ]


def execution_policies() -> list[If]:
    """The execution role's grants (ECS reads task secrets with it): those secrets only, and their key's Decrypt
    through Secrets Manager when one is given."""
    read = iam.Policy(
        PolicyName="read-audit-repository-secrets",
        PolicyDocument=PolicyDocument(
            Version="2012-10-17",
            Statement=[
                Statement(
                    Effect=Allow,
                    Action=[secretsmanager.GetSecretValue],
                    Resource=[If(condition, Ref(parameter), NoValue) for parameter, condition, _ in SECRETS],
                )
            ],
        ),
    )
    decrypt = iam.Policy(
        PolicyName="decrypt-audit-repository-secrets",
        PolicyDocument=PolicyDocument(
            Version="2012-10-17",
            Statement=[
                Statement(
                    Effect=Allow,
                    Action=[kms.Decrypt],
                    Resource=[Ref(p.AUDIT_SYSLOG_SECRETS_KMS_KEY_ARN)],
                    Condition=Condition(
                        StringEquals("kms:ViaService", Sub("secretsmanager.${AWS::Region}.amazonaws.com"))
                    ),
                )
            ],
        ),
    )
    return [If(HAS_AUDIT_SYSLOG_SECRETS, read, NoValue), If(DECRYPTS_AUDIT_SYSLOG_SECRETS, decrypt, NoValue)]


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
