"""Pipeline: the import functions, the import workflow (state machine) and the sweeper's schedule.

manifest ObjectCreated -> TriggerImport -> ImportWorkflow (StartImportJob, CheckStatus, RecordFailure);
Sweeper, on a schedule, seals batches whose task died (its manifest fires TriggerImport like any other).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    Allow,
    Condition,
    PolicyDocument,
    Principal,
    Statement,
    StringEquals,
    StringLike,
)
from awacs.sts import AssumeRole
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
from troposphere import logs as cwlogs
from troposphere import sqs as sqs_

from template_gen import common as c
from template_gen import release

RUNTIME = "python3.12"

# StartDICOMImportJob is throttled at 1 request/s per account (burst 2): one invocation at a time keeps the
# workflow's submissions below it; the workflow retries when Lambda throttles the next one.
START_IMPORT_JOB_CONCURRENCY = 1


# DefinitionSubstitutions of statemachine/import_workflow.asl.json (docs/contracts.md): exactly the ASL's.
def definition_substitutions() -> dict[str, AWSHelperFn]:
    return {
        "StartImportJobFunctionArn": GetAtt("StartImportJobFunction", "Arn"),
        "CheckStatusFunctionArn": GetAtt("CheckStatusFunction", "Arn"),
        "RecordFailureFunctionArn": GetAtt("RecordFailureFunction", "Arn"),
        "WaitSeconds": Ref("ImportPollSeconds"),
        "MaxPolls": Ref("ImportMaxPolls"),
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
        "DICOM_PREFIX": Ref("DICOMPrefix"),
        "RESULTS_BUCKET": Ref(c.RESULTS_BUCKET),
        "SWEEP_MIN_AGE_MINUTES": Ref("SweepMinAgeMinutes"),
        "LOG_LEVEL": Ref("LogLevel"),
    }


_COMMON_ENV = ("JOB_TABLE_NAME", "INSTANCE_TABLE_NAME", "DICOM_BUCKET", "DICOM_PREFIX", "LOG_LEVEL")


@dataclass(frozen=True)
class Function:
    name: str  # logical id stem and POWERTOOLS_SERVICE_NAME source
    handler: str
    service_name: str
    timeout: int
    memory: int
    env: tuple[str, ...]
    invoked_async: bool  # by S3 or EventBridge: failed events go to the dead-letter queue
    statements: tuple[str, ...]  # permission sets, see _statements()


# Environment per function: what each reads. STATE_MACHINE_ARN only where no cycle arises (the state machine
# depends on the functions it invokes).
FUNCTIONS = (
    Function("TriggerImport", "functions.trigger_import.handler", "trigger-import", 300, 512,
             (*_COMMON_ENV, "STATE_MACHINE_ARN"), True,
             ("read-manifests", "list-incoming", "tables", "start-execution")),
    Function("StartImportJob", "functions.start_import_job.handler", "start-import-job", 60, 256,
             (*_COMMON_ENV, "DATASTORE_ID", "DATA_ACCESS_ROLE_ARN", "RESULTS_BUCKET"), False,
             ("read-manifests", "tables", "start-import")),
    Function("CheckStatus", "functions.check_status.handler", "check-status", 300, 512,
             (*_COMMON_ENV, "DATASTORE_ID", "RESULTS_BUCKET"), False,
             ("read-manifests", "tables", "get-import", "read-results")),
    Function("RecordFailure", "functions.record_failure.handler", "record-failure", 300, 256,
             _COMMON_ENV, False, ("read-manifests", "tables")),
    Function("Sweeper", "functions.sweeper.handler", "sweeper", 300, 256,
             (*_COMMON_ENV, "SWEEP_MIN_AGE_MINUTES"), True, ("seal-batches",)),
)  # fmt: skip


def _table_resources() -> list[object]:
    arns: list[object] = []
    for table in (c.JOB_TABLE, c.INSTANCE_TABLE):
        arns += [GetAtt(table, "Arn"), Sub("${Arn}/index/*", Arn=GetAtt(table, "Arn"))]
    return arns


def _statements(name: str) -> list[Statement]:
    results_arn = GetAtt(c.RESULTS_BUCKET, "Arn")
    if name == "read-manifests":
        return [Statement(Effect=Allow, Action=[s3_actions.GetObject], Resource=[c.dicom_bucket_arn("manifests/*")])]
    if name == "list-incoming":
        # TriggerImport checks every listed object is stored: it lists the batch prefix, nothing else.
        return [
            Statement(
                Effect=Allow,
                Action=[s3_actions.ListBucket],
                Resource=[c.dicom_bucket_arn()],
                Condition=Condition(StringLike("s3:prefix", [Sub("${DICOMPrefix}incoming/*")])),
            )
        ]
    if name == "tables":
        return [
            Statement(
                Effect=Allow,
                Action=[
                    ddb.GetItem,
                    ddb.BatchGetItem,
                    ddb.Query,
                    ddb.PutItem,
                    ddb.UpdateItem,
                    ddb.BatchWriteItem,
                ],
                Resource=_table_resources(),
            )
        ]
    if name == "start-execution":
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
    if name == "start-import":
        return [
            Statement(Effect=Allow, Action=[medical_imaging.StartDICOMImportJob], Resource=[c.datastore_arn()]),
            Statement(
                Effect=Allow,
                Action=[iam_actions.PassRole],
                Resource=[GetAtt(c.DATA_ACCESS_ROLE, "Arn")],
                Condition=Condition(StringEquals("iam:PassedToService", "medical-imaging.amazonaws.com")),
            ),
        ]
    if name == "get-import":
        return [Statement(Effect=Allow, Action=[medical_imaging.GetDICOMImportJob], Resource=[c.datastore_arn()])]
    if name == "read-results":
        return [
            Statement(Effect=Allow, Action=[s3_actions.ListBucket], Resource=[results_arn]),
            Statement(Effect=Allow, Action=[s3_actions.GetObject], Resource=[Sub("${Arn}/*", Arn=results_arn)]),
        ]
    if name == "seal-batches":
        return [
            Statement(
                Effect=Allow,
                Action=[s3_actions.ListBucket],
                Resource=[c.dicom_bucket_arn()],
                Condition=Condition(
                    StringLike("s3:prefix", [Sub("${DICOMPrefix}incoming/*"), Sub("${DICOMPrefix}manifests/*")])
                ),
            ),
            Statement(
                Effect=Allow,
                Action=[s3_actions.GetObject],
                Resource=[c.dicom_bucket_arn("incoming/*"), c.dicom_bucket_arn("manifests/*")],
            ),
            Statement(Effect=Allow, Action=[s3_actions.PutObject], Resource=[c.dicom_bucket_arn("manifests/*")]),
        ]
    raise ValueError(name)


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


def _kms_policy() -> If:
    return c.kms_key_policy("use-stack-key", [kms.Decrypt, kms.GenerateDataKey])


# X-Ray trace submission has no resource type: it can only be granted on "*".
_XRAY = Statement(Effect=Allow, Action=[xray.PutTraceSegments, xray.PutTelemetryRecords], Resource=["*"])


def add_pipeline(template: Template, asl_definition: str) -> None:
    dead_letters = template.add_resource(
        sqs_.Queue(
            "ImportEventDeadLetterQueue",
            MessageRetentionPeriod=1209600,  # 14 days, SQS's maximum: time to re-drive failed manifests
            SqsManagedSseEnabled=If(c.HAS_KMS_KEY, NoValue, True),
            KmsMasterKeyId=c.kms_key_or_none(),
        )
    )
    env = function_environment()
    for fn in FUNCTIONS:
        _add_function(template, fn, env, dead_letters)

    template.add_resource(
        lambda_.Permission(
            c.TRIGGER_IMPORT_S3_PERMISSION,
            FunctionName=GetAtt(c.TRIGGER_IMPORT_FUNCTION, "Arn"),
            Action="lambda:InvokeFunction",
            Principal="s3.amazonaws.com",
            SourceAccount=Ref("AWS::AccountId"),
            SourceArn=c.dicom_bucket_arn(),
        )
    )
    _add_state_machine(template, asl_definition)
    schedule = template.add_resource(
        events.Rule(
            "SweeperSchedule",
            Description="Seal DICOM batches left without a manifest by a stopped task",
            ScheduleExpression=Sub("rate(${SweepIntervalMinutes} minutes)"),
            State="ENABLED",
            Targets=[events.Target(Id="Sweeper", Arn=GetAtt("SweeperFunction", "Arn"))],
        )
    )
    template.add_resource(
        lambda_.Permission(
            "SweeperSchedulePermission",
            FunctionName=GetAtt("SweeperFunction", "Arn"),
            Action="lambda:InvokeFunction",
            Principal="events.amazonaws.com",
            SourceArn=GetAtt(schedule, "Arn"),
        )
    )


def _add_function(template: Template, fn: Function, env: dict[str, object], dead_letters: sqs_.Queue) -> None:
    log_group = template.add_resource(
        cwlogs.LogGroup(
            f"{fn.name}LogGroup",
            RetentionInDays=Ref("LogRetentionDays"),
            KmsKeyId=c.kms_key_or_none(),
        )
    )
    statements = [s for name in fn.statements for s in _statements(name)]
    statements += [
        Statement(
            Effect=Allow,
            Action=[logs.CreateLogStream, logs.PutLogEvents],
            Resource=[GetAtt(log_group, "Arn")],
        ),
        _XRAY,
    ]
    if fn.invoked_async:
        statements.append(Statement(Effect=Allow, Action=[sqs.SendMessage], Resource=[GetAtt(dead_letters, "Arn")]))
    role = template.add_resource(
        iam.Role(
            f"{fn.name}Role",
            AssumeRolePolicyDocument=_lambda_trust(),
            Policies=[
                iam.Policy(
                    PolicyName=fn.service_name,
                    PolicyDocument=PolicyDocument(Version="2012-10-17", Statement=statements),
                ),
                _kms_policy(),
            ],
        )
    )
    skips = [
        (
            "CKV_AWS_117",
            "The function calls only AWS APIs; placing it in the VPC would add NAT or endpoints for nothing.",
        ),
        ("CKV_AWS_173", "The environment holds resource names only, no secrets."),
    ]
    if not fn.invoked_async:
        skips.append(("CKV_AWS_116", "Invoked synchronously by the workflow, which catches and records failures."))
    if fn.name != "StartImportJob":
        skips.append(("CKV_AWS_115", "Only StartImportJob needs a concurrency limit (the import API's throttle)."))
    variables = {name: env[name] for name in fn.env}
    variables["POWERTOOLS_SERVICE_NAME"] = fn.service_name
    template.add_resource(
        lambda_.Function(
            f"{fn.name}Function",
            Metadata=c.skip_checks(*skips),
            Runtime=RUNTIME,
            Handler=fn.handler,
            Code=release.functions_code(),
            Role=GetAtt(role, "Arn"),
            Timeout=fn.timeout,
            MemorySize=fn.memory,
            Environment=lambda_.Environment(Variables=variables),
            LoggingConfig=lambda_.LoggingConfig(LogGroup=Ref(log_group)),
            TracingConfig=lambda_.TracingConfig(Mode="Active"),
            ReservedConcurrentExecutions=(START_IMPORT_JOB_CONCURRENCY if fn.name == "StartImportJob" else NoValue),
            DeadLetterConfig=(
                lambda_.DeadLetterConfig(TargetArn=GetAtt(dead_letters, "Arn")) if fn.invoked_async else NoValue
            ),
        )
    )


def _add_state_machine(template: Template, asl_definition: str) -> None:
    log_group = template.add_resource(
        cwlogs.LogGroup(
            "ImportWorkflowLogGroup",
            RetentionInDays=Ref("LogRetentionDays"),
            KmsKeyId=c.kms_key_or_none(),
        )
    )
    invoked = [GetAtt(f"{name}Function", "Arn") for name in ("StartImportJob", "CheckStatus", "RecordFailure")]
    role = template.add_resource(
        iam.Role(
            "ImportWorkflowRole",
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
                _kms_policy(),
            ],
        )
    )
    template.add_resource(
        stepfunctions.StateMachine(
            c.STATE_MACHINE,
            StateMachineType="STANDARD",
            RoleArn=GetAtt(role, "Arn"),
            DefinitionString=asl_definition,
            DefinitionSubstitutions=definition_substitutions(),
            # Execution data names patients' studies (UIDs): the log keeps the events, not the payloads.
            LoggingConfiguration=stepfunctions.LoggingConfiguration(
                Level="ALL",
                IncludeExecutionData=False,
                Destinations=[
                    stepfunctions.LogDestination(
                        CloudWatchLogsLogGroup=stepfunctions.CloudWatchLogsLogGroup(
                            LogGroupArn=GetAtt(log_group, "Arn")
                        )
                    )
                ],
            ),
            TracingConfiguration=stepfunctions.TracingConfiguration(Enabled=True),
        )
    )
