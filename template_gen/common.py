"""Conditions, logical ids and expressions shared by the resource groups.

The DICOM bucket is referred to by a name computed from the stack, never by ``Ref``: the bucket's
notification needs TriggerImport's invoke permission first, and that permission (and everything TriggerImport
reaches) needs the bucket's ARN, which would be a circular dependency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from awacs import kms
from awacs.aws import Allow, ArnLike, Condition, PolicyDocument, Principal, Statement, StringEquals
from awacs.sts import AssumeRole
from dicom_store_contract import ingest, layout
from troposphere import (
    And,
    AWSHelperFn,
    Equals,
    GetAtt,
    If,
    Join,
    Not,
    NoValue,
    Ref,
    Select,
    Split,
    Sub,
    Template,
    iam,
    logs,
)
from troposphere import Condition as ConditionRef

from template_gen import parameters as p

# Conditions
HAS_PEER_CIDR2 = "HasPeerCIDR2"
HAS_PEER_CIDR3 = "HasPeerCIDR3"
HAS_TLS = "HasTLSCertificate"
HAS_KMS_KEY = "HasKmsKey"
HAS_EXTRA_TASK_SG = "HasAdditionalTaskSecurityGroup"
CREATE_DATASTORE = "CreateDatastore"
HAS_ALARM_TOPIC = "HasAlarmTopic"
ENABLE_FLOW_LOGS = "EnableFlowLogs"
CREATE_ECS_SERVICE_LINKED_ROLE = "CreatesEcsServiceLinkedRole"
INGEST_BY_STOW = "IngestByStow"
INGEST_BY_STOW_BATCHED = "IngestByStowBatched"
# A mode that stores into the data store by StoreDICOM, with KmsKeyArn given (the data store's key when the stack
# creates it): the caller of StoreDICOM uses the key through HealthImaging (DATA_STORE_KEY).
STOWS_WITH_KMS_KEY = "StowsWithKmsKey"
STOWS_BATCHED_WITH_KMS_KEY = "StowsBatchedWithKmsKey"

# Logical ids referred to across groups.
ACCESS_LOG_BUCKET = "AccessLogBucket"
DICOM_BUCKET = "DicomBucket"
RESULTS_BUCKET = "ImportResultsBucket"
DATASTORE = "Datastore"
DATA_ACCESS_ROLE = "HealthImagingDataAccessRole"
JOB_TABLE = "DicomImportJobTable"
INSTANCE_TABLE = "DicomInstanceTable"
TRIGGER_IMPORT_FUNCTION = "TriggerImportFunction"
TRIGGER_IMPORT_S3_PERMISSION = "TriggerImportS3Permission"
STATE_MACHINE = "ImportWorkflow"
LOAD_BALANCER = "NetworkLoadBalancer"
LOAD_BALANCER_SECURITY_GROUP = "LoadBalancerSecurityGroup"
LISTENER = "DicomListener"
TASK_SECURITY_GROUP = "ScpTaskSecurityGroup"
TARGET_GROUP = "ScpTargetGroup"
CLUSTER = "ScpCluster"
SERVICE = "ScpService"
SCP_LOG_GROUP = "ScpLogGroup"
TASK_ROLE = "ScpTaskRole"
SCALABLE_TARGET = "ScpScalableTarget"
DEAD_LETTER_QUEUE = "ImportEventDeadLetterQueue"

# Kept on stack deletion and replacement: medical images, the record of what was imported, audit logs. Not when the
# stack's first creation fails and rolls back: nothing was stored in them yet, and each retry would leave another
# set of buckets, tables and a data store behind. (UpdateReplacePolicy has no such value.)
RETAIN = {"DeletionPolicy": "RetainExceptOnCreate", "UpdateReplacePolicy": "Retain"}

# ECS stops a task with SIGTERM, then SIGKILL after this many seconds (Fargate's maximum).
# ShutdownGraceSeconds is capped below it so open associations can finish and their batches be sealed.
STOP_TIMEOUT_SECONDS = 120
# The load balancer drains a stopping task this long before ECS sends SIGTERM; at most the stop timeout.
DEREGISTRATION_DELAY_SECONDS = 110


def add_conditions(template: Template) -> None:
    template.add_condition(HAS_PEER_CIDR2, Not(Equals(Ref(p.PEER_CIDR2), "")))
    template.add_condition(HAS_PEER_CIDR3, Not(Equals(Ref(p.PEER_CIDR3), "")))
    template.add_condition(HAS_TLS, Not(Equals(Ref(p.TLS_CERTIFICATE_ARN), "")))
    template.add_condition(HAS_KMS_KEY, Not(Equals(Ref(p.KMS_KEY_ARN), "")))
    template.add_condition(HAS_EXTRA_TASK_SG, Not(Equals(Ref(p.SECURITY_GROUP_ID), "")))
    template.add_condition(CREATE_DATASTORE, Equals(Ref(p.EXISTING_DATASTORE_ID), ""))
    template.add_condition(INGEST_BY_STOW, Equals(Ref(p.INGEST_MODE), ingest.STOW))
    template.add_condition(INGEST_BY_STOW_BATCHED, Equals(Ref(p.INGEST_MODE), ingest.STOW_BATCHED))
    template.add_condition(STOWS_WITH_KMS_KEY, And(ConditionRef(HAS_KMS_KEY), ConditionRef(INGEST_BY_STOW)))
    template.add_condition(
        STOWS_BATCHED_WITH_KMS_KEY, And(ConditionRef(HAS_KMS_KEY), ConditionRef(INGEST_BY_STOW_BATCHED))
    )
    template.add_condition(HAS_ALARM_TOPIC, Not(Equals(Ref(p.ALARM_TOPIC_ARN), "")))
    template.add_condition(ENABLE_FLOW_LOGS, Equals(Ref(p.ENABLE_VPC_FLOW_LOGS), "true"))
    template.add_condition(CREATE_ECS_SERVICE_LINKED_ROLE, Equals(Ref(p.CREATE_ECS_SERVICE_LINKED_ROLE), "true"))


def stack_suffix() -> Select:
    """The first group of the stack id's uuid: lowercase hex, unique per stack, valid in a bucket name."""
    return Select(0, Split("-", Select(2, Split("/", Ref("AWS::StackId")))))


def dicom_bucket_name() -> Sub:
    return Sub("dicom-scp-${AWS::AccountId}-${AWS::Region}-${Suffix}", Suffix=stack_suffix())


def dicom_bucket_arn(key_pattern: str | None = None) -> Sub:
    """The bucket's ARN, or the ARN of ``key_pattern`` below ``DICOMPrefix`` (e.g. ``incoming/*``)."""
    path = "" if key_pattern is None else "/" + p.in_sub(p.DICOM_PREFIX) + key_pattern
    return Sub(
        "arn:${AWS::Partition}:s3:::dicom-scp-${AWS::AccountId}-${AWS::Region}-${Suffix}" + path,
        Suffix=stack_suffix(),
    )


def datastore_id() -> If:
    return If(CREATE_DATASTORE, GetAtt(DATASTORE, "DatastoreId"), Ref(p.EXISTING_DATASTORE_ID))


def datastore_arn() -> Sub:
    return Sub(
        "arn:${AWS::Partition}:medical-imaging:${AWS::Region}:${AWS::AccountId}:datastore/${Id}",
        Id=datastore_id(),
    )


def stow_base_url() -> Sub:
    """The data store's DICOMweb base URL (AHI_STOW_URL: the SCP's in stow mode, StoreBatch's in stow-batched)."""
    return Sub(
        ingest.dicomweb_base_url("${AWS::Region}", "${Id}", "${AWS::URLSuffix}"),
        Id=datastore_id(),
    )


def stowed_copy_arn() -> Sub:
    """Where the stow mode's S3 copy goes (layout.STOWED below DICOMPrefix)."""
    return dicom_bucket_arn(layout.STOWED + "*")


def kms_key_or_none() -> If:
    return If(HAS_KMS_KEY, Ref(p.KMS_KEY_ARN), NoValue)


def skip_checks(*skips: tuple[str, str]) -> dict[str, Any]:
    """Resource Metadata telling checkov which checks do not apply here, each with the reason."""
    return {"checkov": {"skip": [{"id": check_id, "comment": reason} for check_id, reason in skips]}}


def join_nonempty_cidrs() -> Join:
    """PeerCIDR1 plus PeerCIDR2/3 when given, comma-separated (the SCP's PEER_CIDRS)."""
    return Join(
        "",
        [
            Ref(p.PEER_CIDR1),
            If(HAS_PEER_CIDR2, Sub("," + p.in_sub(p.PEER_CIDR2)), ""),
            If(HAS_PEER_CIDR3, Sub("," + p.in_sub(p.PEER_CIDR3)), ""),
        ],
    )


Expr = AWSHelperFn | str | int


def service_trust(service: str, source_arn: Any) -> PolicyDocument:
    """A role only ``service`` may assume, and only on behalf of this account and ``source_arn`` (confused deputy)."""
    return PolicyDocument(
        Version="2012-10-17",
        Statement=[
            Statement(
                Effect=Allow,
                Principal=Principal("Service", service),
                Action=[AssumeRole],
                Condition=Condition(
                    [
                        StringEquals("aws:SourceAccount", Ref("AWS::AccountId")),
                        ArnLike("aws:SourceArn", source_arn),
                    ]
                ),
            )
        ],
    )


@dataclass(frozen=True)
class KeyUse:
    """KMS actions a role's calls make AWS ``service`` perform with the stack's key: granted only through that
    service (kms:ViaService), never for direct use of the key."""

    service: str  # endpoint prefix: s3, dynamodb, sqs, medical-imaging
    actions: tuple[Any, ...]


# HealthImaging's use of the data store's key for a caller that stores into it (StartDICOMImportJob, StoreDICOM). The
# developer guide (Data encryption) lists what a data store under a customer managed key needs of the key:
# kms:DescribeKey for all operations, kms:GenerateDataKey for all write operations, kms:Decrypt for reads (the stored
# data key); its CloudTrail examples show HealthImaging making those calls as the calling role (invokedBy
# medical-imaging.amazonaws.com), so the caller's role must allow them. Not kms:ReEncrypt* nor the grants, which are
# for re-encrypting and for creating the data store.
DATA_STORE_KEY = KeyUse("medical-imaging", (kms.DescribeKey, kms.Decrypt, kms.GenerateDataKey))


def key_statements(uses: Sequence[KeyUse]) -> list[Statement]:
    """One statement per use of the stack's key, each through its service only (kms:ViaService)."""
    return [
        Statement(
            Effect=Allow,
            Action=list(use.actions),
            Resource=[Ref(p.KMS_KEY_ARN)],
            Condition=Condition(StringEquals("kms:ViaService", Sub(use.service + ".${AWS::Region}.amazonaws.com"))),
        )
        for use in uses
    ]


def kms_key_policy(name: str, uses: Sequence[KeyUse], condition: str = HAS_KMS_KEY) -> If:
    """An inline policy allowing each use of the stack's KMS key, present only when a key is given (``condition``:
    one that implies HAS_KMS_KEY)."""
    return If(
        condition,
        iam.Policy(
            PolicyName=name,
            PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=key_statements(uses)),
        ),
        NoValue,
    )


def log_group(logical_id: str, vended_by: str = "") -> logs.LogGroup:
    """A log group of the stack: retention from LogRetentionDays, the stack's key, kept when the stack goes.

    ``vended_by``: the service that delivers to it as vended logs ("states" for Step Functions). Its name then
    starts with /aws/vendedlogs/, so CloudWatch Logs grants the delivery without adding to the account's logs
    resource policy (whose size limit, when other stacks have filled it, fails the state machine's creation). The
    stack's id makes the name unique: a retained group of a deleted stack of the same name does not collide.
    """
    name = (
        {"LogGroupName": Sub(f"/aws/vendedlogs/{vended_by}/${{AWS::StackName}}-${{Id}}", Id=_stack_uuid())}
        if vended_by
        else {}
    )
    return logs.LogGroup(
        logical_id,
        **RETAIN,
        **name,
        RetentionInDays=Ref(p.LOG_RETENTION_DAYS),
        KmsKeyId=kms_key_or_none(),
    )


def _stack_uuid() -> AWSHelperFn:
    # arn:aws:cloudformation:<region>:<account>:stack/<name>/<uuid>
    return Select(2, Split("/", Ref("AWS::StackId")))
