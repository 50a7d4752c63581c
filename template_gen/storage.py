"""Storage: the DICOM bucket, the import results bucket, the HealthImaging data store and its data-access
role, and the DynamoDB tables of import jobs and instances."""

from __future__ import annotations

from awacs import dynamodb as ddb
from awacs import kms
from awacs import s3 as s3_actions
from awacs.aws import (
    Allow,
    Condition,
    ForAllValuesStringEquals,
    PolicyDocument,
    Statement,
    StringEqualsIfExists,
    StringLike,
)
from dicom_store_contract import ingest, refusals, tables
from troposphere import GetAtt, If, NoValue, Ref, Sub, Tags, Template, dynamodb, healthimaging, iam, s3

from template_gen import common as c
from template_gen import parameters as p
from template_gen.network import S3_ACCESS_LOG_PREFIX, tls_only_statement

NONCURRENT_VERSION_DAYS = 7

KMS_OPTIONAL_REASON = "SSE-KMS with the customer's key when KmsKeyArn is given, SSE-S3 otherwise."


def add_storage(template: Template) -> None:
    _add_buckets(template)
    _add_datastore(template)
    _add_tables(template)


def _bucket_encryption() -> s3.BucketEncryption:
    return s3.BucketEncryption(
        ServerSideEncryptionConfiguration=[
            s3.ServerSideEncryptionRule(
                BucketKeyEnabled=True,
                ServerSideEncryptionByDefault=s3.ServerSideEncryptionByDefault(
                    SSEAlgorithm=If(c.HAS_KMS_KEY, "aws:kms", "AES256"),
                    KMSMasterKeyID=c.kms_key_or_none(),
                ),
            )
        ]
    )


def _bucket(logical_id: str, log_prefix: str, retention_days: Ref, **extra: object) -> s3.Bucket:
    return s3.Bucket(
        logical_id,
        **c.RETAIN,
        Metadata=c.skip_checks(
            ("CKV_AWS_19", "Default encryption is always on: " + KMS_OPTIONAL_REASON),
            ("CKV_AWS_145", KMS_OPTIONAL_REASON),
        ),
        BucketEncryption=_bucket_encryption(),
        OwnershipControls=s3.OwnershipControls(Rules=[s3.OwnershipControlsRule(ObjectOwnership="BucketOwnerEnforced")]),
        PublicAccessBlockConfiguration=s3.PublicAccessBlockConfiguration(
            BlockPublicAcls=True, BlockPublicPolicy=True, IgnorePublicAcls=True, RestrictPublicBuckets=True
        ),
        VersioningConfiguration=s3.VersioningConfiguration(Status="Enabled"),
        LifecycleConfiguration=s3.LifecycleConfiguration(
            Rules=[
                s3.LifecycleRule(
                    Id="Expire",
                    Status="Enabled",
                    ExpirationInDays=retention_days,
                    NoncurrentVersionExpiration=s3.NoncurrentVersionExpiration(NoncurrentDays=NONCURRENT_VERSION_DAYS),
                    AbortIncompleteMultipartUpload=s3.AbortIncompleteMultipartUpload(DaysAfterInitiation=1),
                )
            ]
        ),
        LoggingConfiguration=s3.LoggingConfiguration(
            DestinationBucketName=Ref(c.ACCESS_LOG_BUCKET), LogFilePrefix=S3_ACCESS_LOG_PREFIX + log_prefix
        ),
        **extra,
    )


def _add_buckets(template: Template) -> None:
    dicom = template.add_resource(
        _bucket(
            c.DICOM_BUCKET,
            "dicom/",
            Ref(p.DICOM_OBJECT_RETENTION_DAYS),
            BucketName=c.dicom_bucket_name(),
            # S3 checks the destination's invoke permission when the notification is set.
            DependsOn=[c.TRIGGER_IMPORT_S3_PERMISSION],
            NotificationConfiguration=s3.NotificationConfiguration(
                LambdaConfigurations=[
                    s3.LambdaConfigurations(
                        Event="s3:ObjectCreated:*",
                        Function=GetAtt(c.TRIGGER_IMPORT_FUNCTION, "Arn"),
                        Filter=s3.Filter(
                            S3Key=s3.S3Key(
                                Rules=[
                                    s3.Rules(Name="prefix", Value=Sub(p.in_sub(p.DICOM_PREFIX) + "manifests/")),
                                    s3.Rules(Name="suffix", Value=".json"),
                                ]
                            )
                        ),
                    )
                ]
            ),
        )
    )
    results = template.add_resource(_bucket(c.RESULTS_BUCKET, "import-results/", Ref(p.IMPORT_RESULTS_RETENTION_DAYS)))
    for bucket, name in ((dicom, "DicomBucketPolicy"), (results, "ImportResultsBucketPolicy")):
        template.add_resource(
            s3.BucketPolicy(
                name,
                Bucket=Ref(bucket),
                PolicyDocument=PolicyDocument(
                    Version="2012-10-17", Statement=[tls_only_statement(GetAtt(bucket, "Arn"))]
                ),
            )
        )


def _add_datastore(template: Template) -> None:
    template.add_resource(
        healthimaging.Datastore(
            c.DATASTORE,
            **c.RETAIN,
            Condition=c.CREATE_DATASTORE,
            DatastoreName=Sub("${AWS::StackName}"),
            KmsKeyArn=c.kms_key_or_none(),
        )
    )
    results_arn = GetAtt(c.RESULTS_BUCKET, "Arn")
    template.add_resource(
        iam.Role(
            c.DATA_ACCESS_ROLE,
            # Only this account's data store may use the role.
            AssumeRolePolicyDocument=c.service_trust("medical-imaging.amazonaws.com", c.datastore_arn()),
            Policies=[
                iam.Policy(
                    PolicyName="read-incoming-write-results",
                    PolicyDocument=PolicyDocument(
                        Version="2012-10-17",
                        Statement=[
                            Statement(
                                Effect=Allow,
                                Action=[s3_actions.ListBucket],
                                Resource=[c.dicom_bucket_arn()],
                                Condition=Condition(
                                    StringLike("s3:prefix", Sub(p.in_sub(p.DICOM_PREFIX) + "incoming/*"))
                                ),
                            ),
                            Statement(
                                Effect=Allow,
                                Action=[s3_actions.GetObject],
                                Resource=[c.dicom_bucket_arn("incoming/*")],
                            ),
                            Statement(
                                Effect=Allow,
                                Action=[s3_actions.ListBucket],
                                Resource=[results_arn],
                            ),
                            Statement(
                                Effect=Allow,
                                Action=[s3_actions.PutObject],
                                Resource=[Sub("${Arn}/*", Arn=results_arn)],
                            ),
                        ],
                    ),
                ),
                # HealthImaging reads the incoming objects and writes its job output with this role.
                c.kms_key_policy("use-bucket-key", [c.KeyUse("s3", (kms.Decrypt, kms.GenerateDataKey))]),
            ],
        )
    )


def _sse() -> dynamodb.SSESpecification:
    # SSEEnabled true means KMS: the customer's key with KMSMasterKeyId, else the AWS managed key aws/dynamodb
    # (KMS requests billed). False (or absent) means DynamoDB's AWS owned key, free, as every table is encrypted.
    return dynamodb.SSESpecification(
        SSEEnabled=If(c.HAS_KMS_KEY, True, False),
        SSEType=If(c.HAS_KMS_KEY, "KMS", NoValue),
        KMSMasterKeyId=c.kms_key_or_none(),
    )


def _gsi(index: tables.Index) -> dynamodb.GlobalSecondaryIndex:
    keys = [dynamodb.KeySchema(AttributeName=index.partition_key, KeyType="HASH")]
    if index.sort_key:
        keys.append(dynamodb.KeySchema(AttributeName=index.sort_key, KeyType="RANGE"))
    return dynamodb.GlobalSecondaryIndex(
        IndexName=index.name, KeySchema=keys, Projection=dynamodb.Projection(ProjectionType="ALL")
    )


def _table(logical_id: str, key: str, indexes: tuple[tables.Index, ...]) -> dynamodb.Table:
    # Every key attribute, the table's and its indexes', once and in a stable order.
    attributes = list(dict.fromkeys([key, *(a for i in indexes for a in (i.partition_key, i.sort_key) if a)]))
    return dynamodb.Table(
        logical_id,
        **c.RETAIN,
        Metadata=c.skip_checks(
            (
                "CKV_AWS_119",
                "Encrypted with the customer's KMS key when KmsKeyArn is given, an AWS owned key otherwise.",
            )
        ),
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[dynamodb.AttributeDefinition(AttributeName=a, AttributeType="S") for a in attributes],
        KeySchema=[dynamodb.KeySchema(AttributeName=key, KeyType="HASH")],
        GlobalSecondaryIndexes=[_gsi(index) for index in indexes],
        SSESpecification=_sse(),
        PointInTimeRecoverySpecification=dynamodb.PointInTimeRecoverySpecification(PointInTimeRecoveryEnabled=True),
        Tags=Tags(Component="import-pipeline"),
    )


def _add_tables(template: Template) -> None:
    template.add_resource(_table(c.JOB_TABLE, tables.JOB_ID, tables.JOB_INDEXES))
    # Indexes by study, series and batch: `dicom-store-scp status` queries them (never a scan).
    instances = _table(c.INSTANCE_TABLE, tables.SOP_INSTANCE_UID, tables.INSTANCE_INDEXES)
    # Only the SCP's refusal items carry expiresAt: they go 30 days on (dicom_store_contract.refusals); the
    # pipeline's items never expire.
    instances.TimeToLiveSpecification = dynamodb.TimeToLiveSpecification(AttributeName=tables.EXPIRES_AT, Enabled=True)
    template.add_resource(instances)
    template.resources[c.TASK_ROLE].Policies.append(refusal_policy())
    # Stow mode: the SCP records what HealthImaging answered (IMPORTED, FAILED) where the import pipeline would.
    template.resources[c.TASK_ROLE].Policies.append(If(c.INGEST_BY_STOW, stow_record_policy(), NoValue))


def _put_only(policy_name: str, attributes: tuple[str, ...]) -> iam.Policy:
    """PutItem on the instance table of these attributes only (IAM cannot check the values, nor the condition
    expression that keeps a later item: the SCP's code does)."""
    return iam.Policy(
        PolicyName=policy_name,
        PolicyDocument=PolicyDocument(
            Version="2012-10-17",
            Statement=[
                Statement(
                    Effect=Allow,
                    Action=[ddb.PutItem],
                    Resource=[GetAtt(c.INSTANCE_TABLE, "Arn")],
                    Condition=Condition(
                        [
                            ForAllValuesStringEquals("dynamodb:Attributes", list(attributes)),
                            StringEqualsIfExists("dynamodb:ReturnValues", ["NONE"]),
                        ]
                    ),
                )
            ],
        ),
    )


def stow_record_policy() -> iam.Policy:
    """In stow mode the SCP writes each instance's outcome item: its attributes only (ingest.STOW_ITEM_ATTRIBUTES)."""
    return _put_only("record-stored-instances", ingest.STOW_ITEM_ATTRIBUTES)


def refusal_policy() -> iam.Policy:
    """The SCP records the C-STOREs it refused in the instance table: PutItem of a refusal's attributes only
    (IAM cannot check the values, nor the condition that keeps a received instance's item: the SCP's code does)."""
    return _put_only("record-refused-instances", refusals.ITEM_ATTRIBUTES)
