"""What launching the stack asks of an account: the facts the template and ``dicom-store-scp preflight`` share.

The template (template_gen) builds the stack from these; the preflight command (which runs where template_gen is not
installed: the container image carries only dicom_store_scp and this package) checks an account against them.
tests/contract/test_launch.py holds them to the rendered template.
"""

from __future__ import annotations

from dataclasses import dataclass

# Fargate's valid task size pairs (CPU units -> memory MiB), Linux platform.
FARGATE_CPU_MEMORY: dict[str, tuple[int, ...]] = {
    "256": (512, 1024, 2048),
    "512": tuple(range(1024, 4096 + 1, 1024)),
    "1024": tuple(range(2048, 8192 + 1, 1024)),
    "2048": tuple(range(4096, 16384 + 1, 1024)),
    "4096": tuple(range(8192, 30720 + 1, 1024)),
    "8192": tuple(range(16384, 61440 + 1, 4096)),
    "16384": tuple(range(32768, 122880 + 1, 8192)),
}
CPU_UNITS_PER_VCPU = 1024

# The defaults of the template's TaskCPU, TaskDesiredCount and AutoscaleMaxCapacity parameters.
# LoadBalancerScheme: internal unless the deployer chooses internet-facing (with TLS, or the clear-text opt-in).
LOAD_BALANCER_SCHEME_DEFAULT = "internal"
TASK_CPU_DEFAULT = "1024"
TASK_DESIRED_COUNT_DEFAULT = 1
AUTOSCALE_MAX_CAPACITY_DEFAULT = 3
# The service's deployment runs new tasks beside the old ones, up to this percentage of the desired count.
DEPLOYMENT_MAXIMUM_PERCENT = 200

# AWS Marketplace keeps a container product's images in its own ECR registry in us-east-1, for every region.
IMAGE_REGION = "us-east-1"

# The SCP task runs in the private subnets without a public IP (AssignPublicIp DISABLED).
TASK_ASSIGNS_PUBLIC_IP = False


@dataclass(frozen=True)
class TaskEndpoint:
    """An AWS service the SCP task calls from its subnets (itself, or ECS on its behalf), over HTTPS.

    ``gateway``: a gateway VPC endpoint serves it (S3, DynamoDB); otherwise an interface endpoint with private DNS.
    ``image``: reached in the image's region (ECR, pulling the image), not the stack's.
    """

    service: str  # the VPC endpoint service's last part: com.amazonaws.<region>.<service>
    why: str
    gateway: bool = False
    image: bool = False
    iam: str = ""  # the IAM action prefix where the endpoint's name does not give it

    @property
    def iam_prefix(self) -> str:
        """The service's IAM action prefix (ecr.api and ecr.dkr are both ``ecr``)."""
        return self.iam or self.service.split(".")[0]

    def service_name(self, region: str) -> str:
        return f"com.amazonaws.{region}.{self.service}"


# Exactly what the task calls: the task role (S3, DynamoDB for storage commitment) and the execution role (ECR,
# CloudWatch Logs). The import functions run outside the VPC (Lambda's own network): Step Functions and HealthImaging
# need no route from these subnets.
TASK_ENDPOINTS: tuple[TaskEndpoint, ...] = (
    TaskEndpoint("s3", "instances and manifests (and, in the image's region, the image's layers)", gateway=True),
    TaskEndpoint("dynamodb", "storage commitment's tables", gateway=True),
    TaskEndpoint("ecr.api", "the image's manifest", image=True),
    TaskEndpoint("ecr.dkr", "the image's registry", image=True),
    TaskEndpoint("logs", "the task's log stream"),
)

# With IngestMode stow only: the data store's DICOMweb endpoint (dicom-medical-imaging.<region>.amazonaws.com), where
# the task stores each instance (StoreDICOM): the preflight command's --ingest-mode stow checks a route to it too.
STOW_ENDPOINTS: tuple[TaskEndpoint, ...] = (
    TaskEndpoint("dicom-medical-imaging", "StoreDICOM, with IngestMode stow", iam="medical-imaging"),
)

# With the audit repository's secrets (AuditSyslogCASecretArn and the client certificate's): ECS reads them from
# Secrets Manager when a task starts, from the task's subnets; the preflight command's --audit-secrets checks it.
AUDIT_SECRETS_ENDPOINTS: tuple[TaskEndpoint, ...] = (
    TaskEndpoint("secretsmanager", "the audit repository's CA and client certificate, AuditSyslog*SecretArn"),
)


@dataclass(frozen=True)
class KeyUser:
    """An AWS service that uses the customer's KMS key (KmsKeyArn) for the stack's resources.

    ``service_principal``: the service itself is the key's user and must be named in the key policy (CloudWatch Logs
    encrypts a log group as ``logs.<region>.amazonaws.com``). Otherwise the stack's roles use the key through the
    service (kms:ViaService): a key policy that lets the account's IAM policies grant the key is enough.
    """

    service: str  # the endpoint prefix: <service>.<region>.amazonaws.com
    what: str
    actions: tuple[str, ...]
    service_principal: bool = False


KEY_USERS: tuple[KeyUser, ...] = (
    KeyUser("s3", "the DICOM and import result buckets", ("kms:Decrypt", "kms:GenerateDataKey")),
    KeyUser("dynamodb", "the import job, instance and commitment tables", ("kms:Decrypt",)),
    KeyUser("sqs", "the dead-letter queue", ("kms:Decrypt", "kms:GenerateDataKey")),
    KeyUser("medical-imaging", "the data store", ("kms:DescribeKey", "kms:Decrypt", "kms:GenerateDataKey")),
    KeyUser(
        "logs",
        "the log groups",
        ("kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"),
        service_principal=True,
    ),
)

# Lambda: the import functions the stack creates, and the concurrency they reserve (none: a reservation fails
# stack creation where the account's unreserved pool would drop below Lambda's minimum, as in new accounts).
LAMBDA_FUNCTIONS = 6
LAMBDA_RESERVED_CONCURRENCY = 0

# Service Quotas codes of the quotas the preflight command reads.
FARGATE_VCPU_QUOTA = ("fargate", "L-3032A538")  # Fargate On-Demand vCPU resource count
LAMBDA_CONCURRENCY_QUOTA = ("lambda", "L-B99A9384")  # Concurrent executions

# The ECS service-linked role, which ECS needs to attach the tasks' network interfaces and register them with the
# load balancer. ECS creates it on first use only when the caller may; a fresh account's stack can fail without it.
ECS_SERVICE_LINKED_ROLE = "AWSServiceRoleForECS"
ECS_SERVICE_PRINCIPAL = "ecs.amazonaws.com"
