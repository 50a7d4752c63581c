"""Pipeline: the import functions, the import workflow (state machine) and the sweeper's schedule.

manifest ObjectCreated -> TriggerImport -> ImportWorkflow (StartImportJob, CheckStatus, RecordFailure; with
IngestMode stow-batched, StoreBatch instead of the import job);
Sweeper, on a schedule, seals batches whose task died (its manifest fires TriggerImport like any other).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from awacs import (
    awslambda,
    kms,
    logs,
    medical_imaging,
    sqs,
    states,
    xray,
)
from awacs import (
    dynamodb as ddb,
)
from awacs import (
    iam as iam_actions,
)
from awacs import (
    s3 as s3_actions,
)
from awacs.aws import (
    Action,
    Allow,
    Bool,
    Condition,
    Deny,
    PolicyDocument,
    Principal,
    Statement,
    StringEquals,
    StringLike,
)
from awacs.sts import AssumeRole
from dicom_store_contract import job_events
from troposphere import (
    AWSHelperFn,
    GetAtt,
    If,
    NoValue,
    Ref,
    Sub,
    Template,
    events,
    iam,
    stepfunctions,
)
from troposphere import (
    awslambda as lambda_,
)
from troposphere import sqs as sqs_

from template_gen import audit, release
from template_gen import common as c
from template_gen import parameters as p

RUNTIME = "python3.12"


class Invoker(Enum):
    """Who invokes a function: S3 and EventBridge asynchronously (failed events go to the dead-letter queue), the
    workflow synchronously (its states are the ASL's ``${<Name>FunctionArn}`` placeholders)."""

    S3 = "s3"
    SCHEDULE = "schedule"
    WORKFLOW = "workflow"


@dataclass(frozen=True)
class TableAccess:
    """DynamoDB actions a function calls on one table (``index``: on that global secondary index)."""

    table: str  # logical id
    actions: tuple[Action, ...]
    index: str | None = None

    def arn(self) -> AWSHelperFn:
        if self.index is None:
            return GetAtt(self.table, "Arn")
        return Sub("${Arn}/index/" + self.index, Arn=GetAtt(self.table, "Arn"))


@dataclass(frozen=True)
class Function:
    name: str  # logical id stem (<name>Function, <name>Role, <name>LogGroup)
    handler: str
    service_name: str  # POWERTOOLS_SERVICE_NAME, the role's policy name
    timeout: int
    memory: int
    env: tuple[str, ...]
    invoker: Invoker
    permissions: tuple[Callable[[], list[Statement]], ...]  # named statement sets, below
    tables: tuple[TableAccess, ...] = ()  # exactly the DynamoDB calls it makes (tests/integration checks)
    key_uses: tuple[c.KeyUse, ...] = ()
    # None: no reservation. A reservation fails stack creation where the account's unreserved concurrency would
    # drop below Lambda's minimum (new accounts); the workflow's Retry paces StartDICOMImportJob instead.
    reserved_concurrency: int | None = None
    # Statement sets granted only where a condition holds: (condition, policy name, statements).
    conditional: tuple[tuple[str, str, Callable[[], list[Statement]]], ...] = ()
    # Also receives AHI's job-ending events (dicom_store_contract.job_events) from the stack's EventBridge rule.
    # A lost event costs one poll interval, so none goes to the dead-letter queue (which pages a person).
    job_events: bool = False

    @property
    def logical_id(self) -> str:
        return f"{self.name}Function"

    @property
    def invoked_async(self) -> bool:
        return self.invoker is not Invoker.WORKFLOW

    @property
    def placeholder(self) -> str:
        """The ASL's placeholder of the function's ARN."""
        return f"{self.name}FunctionArn"


# --- named statement sets --------------------------------------------------------------------------------


def read_manifests() -> list[Statement]:
    return [Statement(Effect=Allow, Action=[s3_actions.GetObject], Resource=[c.dicom_bucket_arn("manifests/*")])]


def list_incoming() -> list[Statement]:
    # TriggerImport checks every listed object is stored: it lists the batch prefix, nothing else.
    return [
        Statement(
            Effect=Allow,
            Action=[s3_actions.ListBucket],
            Resource=[c.dicom_bucket_arn()],
            Condition=Condition(StringLike("s3:prefix", [Sub(p.in_sub(p.DICOM_PREFIX) + "incoming/*")])),
        )
    ]


def start_execution() -> list[Statement]:
    return [
        Statement(Effect=Allow, Action=[states.StartExecution], Resource=[Ref(c.STATE_MACHINE)]),
        # Re-driven events find the execution of their batch already there and read its state.
        Statement(
            Effect=Allow,
            Action=[states.DescribeExecution],
            Resource=[
                Sub(
                    "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:${Name}:*",
                    Name=GetAtt(c.STATE_MACHINE, "Name"),
                )
            ],
        ),
    ]


def start_import() -> list[Statement]:
    return [
        Statement(Effect=Allow, Action=[medical_imaging.StartDICOMImportJob], Resource=[c.datastore_arn()]),
        Statement(
            Effect=Allow,
            Action=[iam_actions.PassRole],
            Resource=[GetAtt(c.DATA_ACCESS_ROLE, "Arn")],
            Condition=Condition(StringEquals("iam:PassedToService", "medical-imaging.amazonaws.com")),
        ),
    ]


def get_import() -> list[Statement]:
    return [Statement(Effect=Allow, Action=[medical_imaging.GetDICOMImportJob], Resource=[c.datastore_arn()])]


def store_batches() -> list[Statement]:
    # stow-batched: StoreBatch reads the batch's objects and stores them by StoreDICOM (POST .../studies) into the
    # data store, and no other.
    # It lists an object's own key (incoming/ only) when GetObject answers 403: S3 answers a missing key so to a
    # role without s3:ListBucket on the whole bucket, and a missing object fails its instance alone.
    return [
        Statement(Effect=Allow, Action=[s3_actions.GetObject], Resource=[c.dicom_bucket_arn("incoming/*")]),
        *list_incoming(),
        Statement(Effect=Allow, Action=[medical_imaging.StoreDICOM], Resource=[c.datastore_arn()]),
    ]


def use_data_store_key() -> list[Statement]:
    # StoreDICOM into a data store under the stack's key (common.DATA_STORE_KEY), through HealthImaging only.
    return c.key_statements([c.DATA_STORE_KEY])


def wake_workflow() -> list[Statement]:
    # SendTaskSuccess has no resource type (the task token names the execution): it can only be granted on "*".
    return [Statement(Effect=Allow, Action=[states.SendTaskSuccess], Resource=["*"])]


def read_results() -> list[Statement]:
    results_arn = GetAtt(c.RESULTS_BUCKET, "Arn")
    return [
        Statement(Effect=Allow, Action=[s3_actions.ListBucket], Resource=[results_arn]),
        Statement(Effect=Allow, Action=[s3_actions.GetObject], Resource=[Sub("${Arn}/*", Arn=results_arn)]),
    ]


def write_audit() -> list[Statement]:
    # The ingest outcome in HealthImaging (dicom_store_contract.audit_ingest): a stream of its own in the audit group.
    return [
        Statement(
            Effect=Allow,
            Action=[logs.CreateLogStream, logs.PutLogEvents],
            Resource=[GetAtt(audit.AUDIT_LOG_GROUP, "Arn")],
        )
    ]


def seal_batches() -> list[Statement]:
    return [
        Statement(
            Effect=Allow,
            Action=[s3_actions.ListBucket],
            Resource=[c.dicom_bucket_arn()],
            Condition=Condition(
                StringLike(
                    "s3:prefix",
                    [Sub(p.in_sub(p.DICOM_PREFIX) + "incoming/*"), Sub(p.in_sub(p.DICOM_PREFIX) + "manifests/*")],
                )
            ),
        ),
        Statement(
            Effect=Allow,
            Action=[s3_actions.GetObject],
            Resource=[c.dicom_bucket_arn("incoming/*"), c.dicom_bucket_arn("manifests/*")],
        ),
        Statement(Effect=Allow, Action=[s3_actions.PutObject], Resource=[c.dicom_bucket_arn("manifests/*")]),
    ]


# --- the function table ----------------------------------------------------------------------------------

_COMMON_ENV = ("JOB_TABLE_NAME", "INSTANCE_TABLE_NAME", "DICOM_BUCKET", "DICOM_PREFIX", "LOG_LEVEL")

# With the stack's key: reading an SSE-KMS object, a DynamoDB table's key refresh, Lambda's delivery of a failed
# event to the encrypted dead-letter queue (with the function's role), HealthImaging's use of the data store key.
_READ_OBJECTS = c.KeyUse("s3", (kms.Decrypt,))
_WRITE_OBJECTS = c.KeyUse("s3", (kms.Decrypt, kms.GenerateDataKey))
_TABLES = c.KeyUse("dynamodb", (kms.Decrypt,))
_DEAD_LETTERS = c.KeyUse("sqs", (kms.Decrypt, kms.GenerateDataKey))
_START_IMPORT = c.DATA_STORE_KEY
_READ_IMPORT = c.KeyUse("medical-imaging", (kms.DescribeKey, kms.Decrypt))

# Environment per function: what each reads. STATE_MACHINE_ARN only where no cycle arises (the state machine
# depends on the functions it invokes).
FUNCTIONS = (
    Function("TriggerImport", "functions.trigger_import.handler", "trigger-import", 300, 512,
             (*_COMMON_ENV, "STATE_MACHINE_ARN"), Invoker.S3,
             (read_manifests, list_incoming, start_execution),
             (TableAccess(c.INSTANCE_TABLE, (ddb.PutItem,)),),
             (_READ_OBJECTS, _TABLES, _DEAD_LETTERS)),
    Function("StartImportJob", "functions.start_import_job.handler", "start-import-job", 60, 256,
             (*_COMMON_ENV, "DATASTORE_ID", "DATA_ACCESS_ROLE_ARN", "RESULTS_BUCKET"), Invoker.WORKFLOW,
             # get_import: a re-drive's execution names the job to follow (dicom_store_contract.executions).
             (read_manifests, start_import, get_import),
             (TableAccess(c.JOB_TABLE, (ddb.PutItem,)), TableAccess(c.INSTANCE_TABLE, (ddb.UpdateItem,))),
             (_READ_OBJECTS, _TABLES, _START_IMPORT)),
    Function("CheckStatus", "functions.check_status.handler", "check-status", 300, 512,
             (*_COMMON_ENV, "DATASTORE_ID", "RESULTS_BUCKET", "AUDIT_LOG_GROUP"), Invoker.WORKFLOW,
             (read_manifests, get_import, read_results, wake_workflow, write_audit),
             (TableAccess(c.JOB_TABLE, (ddb.GetItem, ddb.UpdateItem)),
              TableAccess(c.INSTANCE_TABLE, (ddb.UpdateItem,))),
             (_READ_OBJECTS, _TABLES, _READ_IMPORT), job_events=True),
    # 900 s (Lambda's most): it stops itself before the end and the workflow calls it again (a cursor). 1 GB of
    # memory for the network and CPU share that hashes and sends up to 1 GB per request, streamed.
    # In stow-batched mode: the batch's ingest outcome in the audit log group (as CheckStatus writes an import job's),
    # and, with KmsKeyArn, HealthImaging's use of the data store's key on its StoreDICOM calls.
    Function("StoreBatch", "functions.store_batch.handler", "store-batch", 900, 1024,
             (*_COMMON_ENV, "DATASTORE_ID", "INGEST_MODE", "AHI_STOW_URL", "AUDIT_LOG_GROUP"), Invoker.WORKFLOW,
             (read_manifests,),
             (TableAccess(c.JOB_TABLE, (ddb.PutItem, ddb.UpdateItem)),
              TableAccess(c.INSTANCE_TABLE, (ddb.BatchGetItem, ddb.UpdateItem))),
             (_READ_OBJECTS, _TABLES),
             conditional=((c.INGEST_BY_STOW_BATCHED, "store-batches-in-healthimaging", store_batches),
                          (c.INGEST_BY_STOW_BATCHED, "write-ingest-audit-messages", write_audit),
                          (c.STOWS_BATCHED_WITH_KMS_KEY, "use-data-store-key", use_data_store_key))),
    # The batch's ingest outcome in the audit log group (its instances never reached HealthImaging), read back from
    # the instance table; DATASTORE_ID and AHI_STOW_URL name the destination, as CheckStatus and StoreBatch do.
    Function("RecordFailure", "functions.record_failure.handler", "record-failure", 300, 256,
             (*_COMMON_ENV, "DATASTORE_ID", "AHI_STOW_URL", "AUDIT_LOG_GROUP"), Invoker.WORKFLOW,
             (read_manifests, write_audit),
             (TableAccess(c.JOB_TABLE, (ddb.GetItem, ddb.UpdateItem)),
              TableAccess(c.INSTANCE_TABLE, (ddb.BatchGetItem, ddb.UpdateItem))),
             (_READ_OBJECTS, _TABLES)),
    Function("Sweeper", "functions.sweeper.handler", "sweeper", 300, 256,
             (*_COMMON_ENV, "SWEEP_MIN_AGE_MINUTES"), Invoker.SCHEDULE,
             (seal_batches,),
             (),
             (_WRITE_OBJECTS, _DEAD_LETTERS)),
)  # fmt: skip

WORKFLOW_FUNCTIONS = tuple(fn for fn in FUNCTIONS if fn.invoker is Invoker.WORKFLOW)
JOB_EVENT_FUNCTIONS = tuple(fn for fn in FUNCTIONS if fn.job_events)
BY_NAME = {fn.name: fn for fn in FUNCTIONS}


# DefinitionSubstitutions of statemachine/import_workflow.asl.json (docs/contracts.md): exactly the ASL's.
def definition_substitutions() -> dict[str, AWSHelperFn]:
    return {
        **{fn.placeholder: GetAtt(fn.logical_id, "Arn") for fn in WORKFLOW_FUNCTIONS},
        "WaitSeconds": Ref(p.IMPORT_POLL_SECONDS),
        "MaxPolls": Ref(p.IMPORT_MAX_POLLS),
        "StackIngestMode": Ref(p.INGEST_MODE),
    }


def function_environment() -> dict[str, object]:
    """Every Lambda environment variable of the contract, with its value."""
    return {
        "JOB_TABLE_NAME": Ref(c.JOB_TABLE),
        "INSTANCE_TABLE_NAME": Ref(c.INSTANCE_TABLE),
        "STATE_MACHINE_ARN": Ref(c.STATE_MACHINE),
        "DATASTORE_ID": c.datastore_id(),
        "DATA_ACCESS_ROLE_ARN": GetAtt(c.DATA_ACCESS_ROLE, "Arn"),
        "DICOM_BUCKET": c.dicom_bucket_name(),
        "DICOM_PREFIX": Ref(p.DICOM_PREFIX),
        "RESULTS_BUCKET": Ref(c.RESULTS_BUCKET),
        "SWEEP_MIN_AGE_MINUTES": Ref(p.SWEEP_MIN_AGE_MINUTES),
        "LOG_LEVEL": Ref(p.LOG_LEVEL),
        **audit.container_environment(),
        "INGEST_MODE": Ref(p.INGEST_MODE),
        "AHI_STOW_URL": c.stow_base_url(),
    }


def powertools_service(fn: Function) -> str:
    """POWERTOOLS_SERVICE_NAME in Sub's syntax: the ``service`` of the function's logs and the dimension of its
    metrics, unique to the stack so that two stacks in one account and region keep their figures apart."""
    return "${AWS::StackName}-" + fn.service_name


def table_statements(fn: Function) -> list[Statement]:
    return [Statement(Effect=Allow, Action=list(t.actions), Resource=[t.arn()]) for t in fn.tables]


def _lambda_trust() -> PolicyDocument:
    # No aws:SourceAccount condition: Lambda does not document setting it when it assumes an execution role,
    # and a condition on a missing key would deny the role to the function.
    return PolicyDocument(
        Version="2012-10-17",
        Statement=[
            Statement(Effect=Allow, Principal=Principal("Service", "lambda.amazonaws.com"), Action=[AssumeRole])
        ],
    )


def _states_trust() -> PolicyDocument:
    # Step Functions sets aws:SourceAccount and aws:SourceArn (the state machine) when it assumes its role.
    return c.service_trust(
        "states.amazonaws.com", Sub("arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:*")
    )


# X-Ray trace submission has no resource type: it can only be granted on "*".
_XRAY = Statement(Effect=Allow, Action=[xray.PutTraceSegments, xray.PutTelemetryRecords], Resource=["*"])


WORKFLOW_LOG_GROUP = "ImportWorkflowLogGroup"
WORKFLOW_ROLE = "ImportWorkflowRole"
SWEEPER_SCHEDULE = "SweeperSchedule"
JOB_EVENT_RULE = "ImportJobEventRule"


def add_pipeline(template: Template, asl_definition: str) -> None:
    resources: list[object] = [dead_letter_queue(), dead_letter_queue_policy()]
    env = function_environment()
    for fn in FUNCTIONS:
        resources += [c.log_group(f"{fn.name}LogGroup"), function_role(fn), lambda_function(fn, env)]
    resources += [
        trigger_import_s3_permission(),
        c.log_group(WORKFLOW_LOG_GROUP, vended_by="states"),
        workflow_role(),
        state_machine(asl_definition),
        sweeper_schedule(),
        sweeper_schedule_permission(),
    ]
    if JOB_EVENT_FUNCTIONS:
        resources += [job_event_rule(), *(job_event_permission(fn) for fn in JOB_EVENT_FUNCTIONS)]
    for resource in resources:
        template.add_resource(resource)


def trigger_import_s3_permission() -> lambda_.Permission:
    return lambda_.Permission(
        c.TRIGGER_IMPORT_S3_PERMISSION,
        FunctionName=GetAtt(c.TRIGGER_IMPORT_FUNCTION, "Arn"),
        Action="lambda:InvokeFunction",
        Principal="s3.amazonaws.com",
        SourceAccount=Ref("AWS::AccountId"),
        SourceArn=c.dicom_bucket_arn(),
    )


def sweeper_schedule() -> events.Rule:
    return events.Rule(
        SWEEPER_SCHEDULE,
        Description="Seal DICOM batches left without a manifest by a stopped task",
        ScheduleExpression=Sub("rate(" + p.in_sub(p.SWEEP_INTERVAL_MINUTES) + " minutes)"),
        State="ENABLED",
        Targets=[events.Target(Id="Sweeper", Arn=GetAtt(BY_NAME["Sweeper"].logical_id, "Arn"))],
    )


def sweeper_schedule_permission() -> lambda_.Permission:
    return lambda_.Permission(
        "SweeperSchedulePermission",
        FunctionName=GetAtt(BY_NAME["Sweeper"].logical_id, "Arn"),
        Action="lambda:InvokeFunction",
        Principal="events.amazonaws.com",
        SourceArn=GetAtt(SWEEPER_SCHEDULE, "Arn"),
    )


def job_event_rule() -> events.Rule:
    return events.Rule(
        JOB_EVENT_RULE,
        Description="HealthImaging import jobs of this stack's data store that completed or failed: wakes the workflow",
        EventPattern=job_events.pattern(c.datastore_id()),
        State="ENABLED",
        Targets=[
            events.Target(
                Id=fn.name,
                Arn=GetAtt(fn.logical_id, "Arn"),
                # Worth a few tries within the poll interval; after that the workflow has polled anyway.
                RetryPolicy=events.RetryPolicy(MaximumRetryAttempts=3, MaximumEventAgeInSeconds=600),
            )
            for fn in JOB_EVENT_FUNCTIONS
        ],
    )


def job_event_permission(fn: Function) -> lambda_.Permission:
    return lambda_.Permission(
        f"{fn.name}JobEventPermission",
        FunctionName=GetAtt(fn.logical_id, "Arn"),
        Action="lambda:InvokeFunction",
        Principal="events.amazonaws.com",
        SourceArn=GetAtt(JOB_EVENT_RULE, "Arn"),
    )


def dead_letter_queue() -> sqs_.Queue:
    return sqs_.Queue(
        c.DEAD_LETTER_QUEUE,
        # Its messages name the batches whose import never started: kept like the tables.
        **c.RETAIN,
        MessageRetentionPeriod=1209600,  # 14 days, SQS's maximum: time to re-drive failed manifests
        SqsManagedSseEnabled=If(c.HAS_KMS_KEY, NoValue, True),
        KmsMasterKeyId=c.kms_key_or_none(),
    )


def dead_letter_queue_policy() -> sqs_.QueuePolicy:
    return sqs_.QueuePolicy(
        "ImportEventDeadLetterQueuePolicy",
        Queues=[Ref(c.DEAD_LETTER_QUEUE)],
        PolicyDocument=PolicyDocument(
            Version="2012-10-17",
            Statement=[
                Statement(
                    Sid="DenyInsecureTransport",
                    Effect=Deny,
                    Principal=Principal("*"),
                    Action=[Action("sqs", "*")],
                    Resource=[GetAtt(c.DEAD_LETTER_QUEUE, "Arn")],
                    Condition=Condition(Bool("aws:SecureTransport", "false")),
                )
            ],
        ),
    )


def function_role(fn: Function) -> iam.Role:
    statements = [s for permission in fn.permissions for s in permission()]
    statements += table_statements(fn)
    statements += [
        Statement(
            Effect=Allow,
            Action=[logs.CreateLogStream, logs.PutLogEvents],
            Resource=[GetAtt(f"{fn.name}LogGroup", "Arn")],
        ),
        _XRAY,
    ]
    if fn.invoked_async:
        statements.append(
            Statement(Effect=Allow, Action=[sqs.SendMessage], Resource=[GetAtt(c.DEAD_LETTER_QUEUE, "Arn")])
        )
    return iam.Role(
        f"{fn.name}Role",
        AssumeRolePolicyDocument=_lambda_trust(),
        Policies=[
            iam.Policy(
                PolicyName=fn.service_name,
                PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=statements),
            ),
            c.kms_key_policy("use-stack-key", fn.key_uses),
            *(
                If(
                    condition,
                    iam.Policy(
                        PolicyName=name,
                        PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=statements()),
                    ),
                    NoValue,
                )
                for condition, name, statements in fn.conditional
            ),
        ],
    )


def lambda_function(fn: Function, env: dict[str, object]) -> lambda_.Function:
    skips = [
        (
            "CKV_AWS_117",
            "The function calls only AWS APIs; placing it in the VPC would add NAT or endpoints for nothing.",
        ),
        ("CKV_AWS_173", "The environment holds resource names only, no secrets."),
    ]
    if not fn.invoked_async:
        skips.append(("CKV_AWS_116", "Invoked synchronously by the workflow, which catches and records failures."))
    if fn.reserved_concurrency is None:
        skips.append(
            (
                "CKV_AWS_115",
                "No reserved concurrency: a reservation fails stack creation in new accounts; the workflow's "
                "Retry with backoff paces the import API instead.",
            )
        )
    variables = {name: env[name] for name in fn.env}
    variables["POWERTOOLS_SERVICE_NAME"] = Sub(powertools_service(fn))
    return lambda_.Function(
        fn.logical_id,
        Metadata=c.skip_checks(*skips),
        Runtime=RUNTIME,
        Handler=fn.handler,
        Code=release.functions_code(),
        Role=GetAtt(f"{fn.name}Role", "Arn"),
        Timeout=fn.timeout,
        MemorySize=fn.memory,
        Environment=lambda_.Environment(Variables=variables),
        LoggingConfig=lambda_.LoggingConfig(LogGroup=Ref(f"{fn.name}LogGroup")),
        TracingConfig=lambda_.TracingConfig(Mode="Active"),
        ReservedConcurrentExecutions=(NoValue if fn.reserved_concurrency is None else fn.reserved_concurrency),
        DeadLetterConfig=(
            lambda_.DeadLetterConfig(TargetArn=GetAtt(c.DEAD_LETTER_QUEUE, "Arn")) if fn.invoked_async else NoValue
        ),
    )


def workflow_role() -> iam.Role:
    invoked = [GetAtt(fn.logical_id, "Arn") for fn in WORKFLOW_FUNCTIONS]
    return iam.Role(
        WORKFLOW_ROLE,
        AssumeRolePolicyDocument=_states_trust(),
        Policies=[
            iam.Policy(
                PolicyName="import-workflow",
                PolicyDocument=PolicyDocument(
                    Version="2012-10-17",
                    Statement=[
                        Statement(
                            Effect=Allow,
                            Action=[awslambda.InvokeFunction],
                            Resource=[*invoked, *(Sub("${Arn}:*", Arn=arn) for arn in invoked)],
                        ),
                        # CloudWatch Logs' vended-log delivery APIs have no resource types: "*" only.
                        Statement(
                            Effect=Allow,
                            Action=[
                                logs.CreateLogDelivery,
                                logs.GetLogDelivery,
                                logs.UpdateLogDelivery,
                                logs.DeleteLogDelivery,
                                logs.ListLogDeliveries,
                                logs.PutResourcePolicy,
                                logs.DescribeResourcePolicies,
                                logs.DescribeLogGroups,
                            ],
                            Resource=["*"],
                        ),
                        _XRAY,
                    ],
                ),
            ),
            # No KMS: the state machine keeps no data under the stack's key (its log group is encrypted by
            # CloudWatch Logs under the key's policy, not with this role).
        ],
    )


def state_machine(asl_definition: str) -> stepfunctions.StateMachine:
    return stepfunctions.StateMachine(
        c.STATE_MACHINE,
        StateMachineType="STANDARD",
        RoleArn=GetAtt(WORKFLOW_ROLE, "Arn"),
        DefinitionString=asl_definition,
        DefinitionSubstitutions=definition_substitutions(),
        # Execution data names patients' studies (UIDs): the log keeps the events, not the payloads.
        LoggingConfiguration=stepfunctions.LoggingConfiguration(
            Level="ALL",
            IncludeExecutionData=False,
            Destinations=[
                stepfunctions.LogDestination(
                    CloudWatchLogsLogGroup=stepfunctions.CloudWatchLogsLogGroup(
                        LogGroupArn=GetAtt(WORKFLOW_LOG_GROUP, "Arn")
                    )
                )
            ],
        ),
        TracingConfiguration=stepfunctions.TracingConfiguration(Enabled=True),
    )
