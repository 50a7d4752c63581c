"""The stack's parameters: one declarative table, from which the console's Interface metadata is generated.

A parameter cannot exist without a group, a label and a description: the table's row type requires them, and
the tests assert every parameter is used by the template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dicom_store_contract import ingest, launch, limits, uids
from troposphere import Parameter, Template

NETWORK = "Network"
DICOM = "DICOM"
SCALING = "Scaling"
SECURITY = "Security"
STORAGE = "Storage and import"
OPERATIONS = "Operations"

# Console order of the groups.
GROUP_ORDER = (NETWORK, DICOM, SECURITY, SCALING, STORAGE, OPERATIONS)

# A DICOM AE title: 1-16 characters of the default repertoire, no backslash, not all spaces (PS3.5 6.2).
AE_TITLE_PATTERN = r"^[ -\[\]-~]*[!-\[\]-~][ -\[\]-~]*$"
_OCTET = r"(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
CIDR_PATTERN = rf"^({_OCTET}\.){{3}}{_OCTET}/(3[0-2]|[12]?\d)$"
OPTIONAL_CIDR_PATTERN = rf"^(({_OCTET}\.){{3}}{_OCTET}/(3[0-2]|[12]?\d))?$"
ACM_CERTIFICATE_PATTERN = r"^(arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+)?$"
KMS_KEY_PATTERN = r"^(arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[a-f0-9-]{36})?$"
# tls://host:port, the host an IPv4 address or a DNS name (no colon: the template reads the port after the second).
AUDIT_SYSLOG_URL_PATTERN = r"^(tls://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:[0-9]{1,5})?$"
# A Secrets Manager secret's full ARN (with the six characters Secrets Manager appends to its name).
SECRET_ARN_PATTERN = r"^(arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6})?$"  # noqa: S105
# AE=host:port, the host an IPv4 address or a DNS name (no colon: the template reads the port after the only one).
_COMMITMENT_PEER = r"[^,=\\]{1,16}=[^,=:\s]+:[0-9]{1,5}"
COMMITMENT_PEERS_PATTERN = rf"^({_COMMITMENT_PEER}(,{_COMMITMENT_PEER}){{0,2}})?$"
# Empty, or a comma list of UIDs: the form only; the SCP checks each one whole when it starts (config.py).
UID_LIST_PATTERN = rf"^({uids.UID_FORM}(,{uids.UID_FORM})*)?$"

# Fargate's valid task size pairs: the launch contract's (the preflight command checks the quota against them).
FARGATE_CPU_MEMORY = launch.FARGATE_CPU_MEMORY
ALL_FARGATE_MEMORY = tuple(str(m) for m in sorted({m for ms in FARGATE_CPU_MEMORY.values() for m in ms}))

# The regions where AWS HealthImaging runs (the stack is pointless anywhere else): the limits module's table.
HEALTHIMAGING_REGIONS = limits.HEALTHIMAGING_REGIONS

LOG_RETENTION_CHOICES = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)


# The parameters' names (their logical ids): the table below and every module that refers to one use these.
VPC_ID = "VpcID"
LOAD_BALANCER_SUBNET_IDS = "LoadBalancerSubnetIDs"
PRIVATE_SUBNET_IDS = "PrivateSubnetIDs"
SECURITY_GROUP_ID = "SecurityGroupID"
LOAD_BALANCER_SCHEME = "LoadBalancerScheme"
ENABLE_VPC_FLOW_LOGS = "EnableVPCFlowLogs"
SCP_AE_TITLE = "SCPAETitle"
LISTENER_PORT = "ListenerPort"
SCP_PORT = "SCPPort"
PEER_CIDR1 = "PeerCIDR1"
PEER_CIDR2 = "PeerCIDR2"
PEER_CIDR3 = "PeerCIDR3"
REQUIRE_CALLED_AE_TITLE = "RequireCalledAETitle"
REQUIRE_CALLING_AE_TITLE = "RequireCallingAETitle"
COMMITMENT_PEERS = "CommitmentPeers"
COMMITMENT_PEERS_CIDR = "CommitmentPeersCIDR"
# At most this many storage commitment peers: the template opens the task's egress to each one's port, one rule
# per port, and CloudFormation cannot loop over a list.
MAX_COMMITMENT_PEERS = 3
DIMSE_TIMEOUT = "DIMSETimeout"
NETWORK_TIMEOUT = "NetworkTimeout"
ACSE_TIMEOUT = "ACSETimeout"
MAXIMUM_ASSOCIATIONS = "MaximumAssociations"
MAXIMUM_PDU_SIZE = "MaximumPDUSize"
SUPPORTED_SOP_CLASS_UIDS = "SupportedSOPClassUIDs"
TLS_CERTIFICATE_ARN = "TLSCertificateARN"
ALLOW_CLEAR_TEXT_DICOM_FROM_THE_INTERNET = "AllowClearTextDicomFromTheInternet"
CREATE_ECS_SERVICE_LINKED_ROLE = "CreateECSServiceLinkedRole"
KMS_KEY_ARN = "KmsKeyArn"
TASK_CPU = "TaskCPU"
TASK_MEMORY_LIMIT = "TaskMemoryLimit"
TASK_EPHEMERAL_STORAGE_GIB = "TaskEphemeralStorageGiB"
TASK_DESIRED_COUNT = "TaskDesiredCount"
AUTOSCALE_MAX_CAPACITY = "AutoscaleMaxCapacity"
WORKERS = "Workers"
MAX_POOL_CONNECTIONS = "MaxPoolConnections"
SHUTDOWN_GRACE_SECONDS = "ShutdownGraceSeconds"
DICOM_PREFIX = "DICOMPrefix"
INGEST_MODE = "IngestMode"
STOW_KEEP_S3_COPY = "StowKeepS3Copy"
BATCH_MAX_INSTANCES = "BatchMaxInstances"
BATCH_MAX_BYTES = "BatchMaxBytes"
DICOM_OBJECT_RETENTION_DAYS = "DICOMObjectRetentionDays"
IMPORT_RESULTS_RETENTION_DAYS = "ImportResultsRetentionDays"
EXISTING_DATASTORE_ID = "ExistingDatastoreID"
IMPORT_POLL_SECONDS = "ImportPollSeconds"
IMPORT_MAX_POLLS = "ImportMaxPolls"
# A Standard workflow fails outright at 25,000 history events, without running its failure path (the instances
# would stay RECEIVED/IMPORTING for ever); each wait-and-check round writes about 13, so at most ~1,900 rounds fit.
# 1,500 leaves room for the other states (at the 120 s default interval: 50 hours of import).
MAX_IMPORT_POLLS = 1500
SWEEP_INTERVAL_MINUTES = "SweepIntervalMinutes"
SWEEP_MIN_AGE_MINUTES = "SweepMinAgeMinutes"
LOG_LEVEL = "LogLevel"
LOG_RETENTION_DAYS = "LogRetentionDays"
AUDIT_LOG_RETENTION_DAYS = "AuditLogRetentionDays"
AUDIT_SYSLOG_URL = "AuditSyslogURL"
AUDIT_SYSLOG_CIDR = "AuditSyslogCIDR"
# Parameter names (of secrets' ARNs), not secrets.
AUDIT_SYSLOG_CA_SECRET_ARN = "AuditSyslogCASecretArn"  # noqa: S105
AUDIT_SYSLOG_CERT_SECRET_ARN = "AuditSyslogCertSecretArn"  # noqa: S105
AUDIT_SYSLOG_KEY_SECRET_ARN = "AuditSyslogKeySecretArn"  # noqa: S105
AUDIT_SYSLOG_SECRETS_KMS_KEY_ARN = "AuditSyslogSecretsKmsKeyArn"
ALARM_TOPIC_ARN = "AlarmTopicARN"


def in_sub(name: str) -> str:
    """A parameter's value inside an Fn::Sub string: ``${Name}``."""
    return "${" + name + "}"


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    group: str
    label: str
    description: str
    default: str | int | None = None
    constraints: dict[str, Any] = field(default_factory=dict)


PARAMETERS: tuple[Param, ...] = (
    # --- Network
    Param(VPC_ID, "AWS::EC2::VPC::Id", NETWORK, "VPC",
          "The VPC that holds the load balancer and the SCP tasks."),
    Param(LOAD_BALANCER_SUBNET_IDS, "List<AWS::EC2::Subnet::Id>", NETWORK, "Load balancer subnets",
          "Subnets of the load balancer, one per Availability Zone of the private subnets: public subnets when "
          "the scheme is internet-facing; with the internal scheme, the private subnets themselves will do."),
    Param(PRIVATE_SUBNET_IDS, "List<AWS::EC2::Subnet::Id>", NETWORK, "Private subnets",
          "Subnets of the SCP tasks (and of an internal load balancer). They need a route to Amazon S3, DynamoDB, "
          "ECR and CloudWatch Logs (NAT gateway or VPC endpoints; dicom-store-scp preflight checks it)."),
    Param(SECURITY_GROUP_ID, "String", NETWORK, "Additional task security group",
          "Optional existing security group attached to the SCP tasks as well, e.g. one admitted by your VPC "
          "endpoints. Leave empty for none.",
          default="",
          constraints={"AllowedPattern": r"^(sg-[0-9a-f]{8,17})?$",
                       "ConstraintDescription": "empty or a security group id (sg-...)"}),
    Param(LOAD_BALANCER_SCHEME, "String", NETWORK, "Load balancer scheme",
          "internal (reached over VPN or Direct Connect) or internet-facing (load balancer subnets public). "
          "Internet-facing without TLSCertificateARN is refused unless AllowClearTextDicomFromTheInternet is true.",
          default=launch.LOAD_BALANCER_SCHEME_DEFAULT,
          constraints={"AllowedValues": ["internet-facing", "internal"]}),
    Param(ENABLE_VPC_FLOW_LOGS, "String", NETWORK, "VPC flow logs",
          "Record the VPC's flow logs in the stack's access-log bucket.",
          default="false", constraints={"AllowedValues": ["true", "false"]}),
    # --- DICOM
    Param(SCP_AE_TITLE, "String", DICOM, "SCP AE title",
          "The AE title the SCP answers to.",
          default="STORESCP",
          constraints={"AllowedPattern": AE_TITLE_PATTERN, "MinLength": 1, "MaxLength": 16,
                       "ConstraintDescription": "1-16 printable ASCII characters, no backslash"}),
    Param(LISTENER_PORT, "Number", DICOM, "DICOM port",
          "TCP port of the DICOM endpoint on the load balancer (104 is DICOM's well-known port).",
          default=11112, constraints={"MinValue": 1, "MaxValue": 65535}),
    Param(SCP_PORT, "Number", DICOM, "Container port",
          "TCP port the SCP listens on inside the task (unprivileged); the load balancer forwards the DICOM "
          "port to it.",
          default=11112, constraints={"MinValue": 1024, "MaxValue": 65535}),
    Param(PEER_CIDR1, "String", DICOM, "Allowed peers (1)",
          "IPv4 CIDR of senders (modalities, PACS) admitted to the DICOM port.",
          constraints={"AllowedPattern": CIDR_PATTERN,
                       "ConstraintDescription": "an IPv4 CIDR block such as 192.0.2.0/24"}),
    Param(PEER_CIDR2, "String", DICOM, "Allowed peers (2)",
          "Optional second IPv4 CIDR of senders. Leave empty for none.",
          default="",
          constraints={"AllowedPattern": OPTIONAL_CIDR_PATTERN,
                       "ConstraintDescription": "empty or an IPv4 CIDR block"}),
    Param(PEER_CIDR3, "String", DICOM, "Allowed peers (3)",
          "Optional third IPv4 CIDR of senders. Leave empty for none.",
          default="",
          constraints={"AllowedPattern": OPTIONAL_CIDR_PATTERN,
                       "ConstraintDescription": "empty or an IPv4 CIDR block"}),
    Param(REQUIRE_CALLED_AE_TITLE, "String", DICOM, "Require called AE title",
          "Reject associations whose called AE title is not the SCP's AE title.",
          default="false", constraints={"AllowedValues": ["true", "false"]}),
    Param(REQUIRE_CALLING_AE_TITLE, "String", DICOM, "Allowed calling AE titles",
          "Comma-separated calling AE titles admitted; empty admits any.",
          default="",
          constraints={"AllowedPattern": r"^([^,\\]{1,16}(,[^,\\]{1,16})*)?$",
                       "ConstraintDescription": "empty or comma-separated AE titles of 1-16 characters"}),
    Param(COMMITMENT_PEERS, "String", DICOM, "Storage commitment peers",
          "Comma-separated AE=host:port (at most 3; host an IPv4 address or DNS name): where the SCP sends a "
          "storage commitment report once the requesting association has closed (as PACS configure their peers). "
          "Needs CommitmentPeersCIDR. Empty: reports go only on the requesting association.",
          default="",
          constraints={"AllowedPattern": COMMITMENT_PEERS_PATTERN,
                       "ConstraintDescription": "empty or up to 3 comma-separated AE=host:port"}),
    Param(COMMITMENT_PEERS_CIDR, "String", DICOM, "Storage commitment peers' network",
          "IPv4 CIDR holding every CommitmentPeers host (e.g. 10.0.1.23/32 for one PACS): the SCP tasks may "
          "open TCP connections to it on the CommitmentPeers ports, and to nothing else outside HTTPS. The "
          "private subnets need a route to it (VPN, Direct Connect, Transit Gateway). Empty without "
          "CommitmentPeers.",
          default="",
          constraints={"AllowedPattern": OPTIONAL_CIDR_PATTERN,
                       "ConstraintDescription": "empty or an IPv4 CIDR block"}),
    Param(DIMSE_TIMEOUT, "Number", DICOM, "DIMSE timeout (s)",
          "Seconds to wait for a DIMSE message.",
          default=60, constraints={"MinValue": 1, "MaxValue": 3600}),
    Param(NETWORK_TIMEOUT, "Number", DICOM, "Network timeout (s)",
          "Seconds of network inactivity before an association is aborted.",
          default=90, constraints={"MinValue": 1, "MaxValue": 3600}),
    Param(ACSE_TIMEOUT, "Number", DICOM, "ACSE timeout (s)",
          "Seconds to wait for association negotiation messages.",
          default=30, constraints={"MinValue": 1, "MaxValue": 3600}),
    Param(MAXIMUM_ASSOCIATIONS, "Number", DICOM, "Maximum associations",
          "Concurrent associations per task.",
          default=300, constraints={"MinValue": 1, "MaxValue": 2000}),
    # Default and bounds from the limits table (the SCP's own); 0 (which the SCP reads as 1 MiB) is not offered.
    Param(MAXIMUM_PDU_SIZE, "Number", DICOM, "Maximum PDU size (bytes)",
          f"Maximum PDU size the SCP accepts ({limits.PDU_SIZE_FLOOR.whole} or more); bounds the memory each "
          "association takes.",
          default=limits.MAXIMUM_PDU_SIZE.whole,
          constraints={"MinValue": limits.PDU_SIZE_FLOOR.whole, "MaxValue": limits.PDU_SIZE_CEILING.whole}),
    Param(SUPPORTED_SOP_CLASS_UIDS, "String", DICOM, "Supported SOP classes",
          "Comma-separated SOP Class UIDs accepted; empty accepts every storage SOP class.",
          default="",
          constraints={"AllowedPattern": UID_LIST_PATTERN,
                       "ConstraintDescription": "empty or comma-separated UIDs (digits and dots)"}),
    # --- Security
    Param(TLS_CERTIFICATE_ARN, "String", SECURITY, "TLS certificate (ACM)",
          "Optional ACM certificate ARN: the load balancer then terminates DICOM TLS on the DICOM port. "
          "Leave empty for plain TCP.",
          default="",
          constraints={"AllowedPattern": ACM_CERTIFICATE_PATTERN,
                       "ConstraintDescription": "empty or an ACM certificate ARN"}),
    Param(ALLOW_CLEAR_TEXT_DICOM_FROM_THE_INTERNET, "String", SECURITY, "Allow clear-text DICOM from the internet",
          "true: an internet-facing load balancer may take plain TCP (no TLSCertificateARN), so patient data "
          "crosses the internet in clear text, whatever PeerCIDR1-3 say. Without it the stack refuses that.",
          default="false", constraints={"AllowedValues": ["true", "false"]}),
    Param(KMS_KEY_ARN, "String", SECURITY, "KMS key",
          "Optional customer managed KMS key ARN for the buckets, tables, logs, queue and data store. Its "
          "key policy must admit this account's S3, DynamoDB, CloudWatch Logs, SQS and HealthImaging "
          "use. Leave empty for AWS owned keys.",
          default="",
          constraints={"AllowedPattern": KMS_KEY_PATTERN,
                       "ConstraintDescription": "empty or a KMS key ARN (arn:...:key/<uuid>)"}),
    Param(AUDIT_SYSLOG_URL, "String", SECURITY, "Audit repository (syslog over TLS)",
          "tls://host:port of your audit record repository (IHE ATNA: syslog over TLS, RFC 5424/5425, often port "
          "6514): the SCP sends it every DICOM audit message, queued on the task's disk while it is unreachable. "
          "Needs AuditSyslogCIDR. Empty: the audit messages go to the stack's audit log group only.",
          default="",
          constraints={"AllowedPattern": AUDIT_SYSLOG_URL_PATTERN,
                       "ConstraintDescription": "empty or tls://host:port"}),
    Param(AUDIT_SYSLOG_CIDR, "String", SECURITY, "Audit repository's network",
          "IPv4 CIDR holding the AuditSyslogURL host (e.g. 10.0.2.15/32): the SCP tasks may open TCP connections "
          "to it on that URL's port, and to nothing else outside HTTPS. The private subnets need a route to it. "
          "Empty without AuditSyslogURL.",
          default="",
          constraints={"AllowedPattern": OPTIONAL_CIDR_PATTERN,
                       "ConstraintDescription": "empty or an IPv4 CIDR block"}),
    Param(AUDIT_SYSLOG_CA_SECRET_ARN, "String", SECURITY, "Audit repository's CA (secret)",
          "Optional full ARN of a Secrets Manager secret whose text is the PEM CA bundle the repository's "
          "certificate is checked against. Empty: the public CAs the image trusts.",
          default="",
          constraints={"AllowedPattern": SECRET_ARN_PATTERN,
                       "ConstraintDescription": "empty or a Secrets Manager secret's full ARN"}),
    Param(AUDIT_SYSLOG_CERT_SECRET_ARN, "String", SECURITY, "Audit client certificate (secret)",
          "Optional full ARN of a secret whose text is the PEM client certificate the SCP presents to the "
          "repository. Needs AuditSyslogKeySecretArn.",
          default="",
          constraints={"AllowedPattern": SECRET_ARN_PATTERN,
                       "ConstraintDescription": "empty or a Secrets Manager secret's full ARN"}),
    Param(AUDIT_SYSLOG_KEY_SECRET_ARN, "String", SECURITY, "Audit client key (secret)",
          "Optional full ARN of a secret whose text is the PEM private key of AuditSyslogCertSecretArn.",
          default="",
          constraints={"AllowedPattern": SECRET_ARN_PATTERN,
                       "ConstraintDescription": "empty or a Secrets Manager secret's full ARN"}),
    Param(AUDIT_SYSLOG_SECRETS_KMS_KEY_ARN, "String", SECURITY, "Audit secrets' KMS key",
          "Optional customer managed KMS key ARN the audit secrets are encrypted with (the task's execution role "
          "may decrypt with it through Secrets Manager only). Empty: the secrets use Secrets Manager's AWS "
          "managed key.",
          default="",
          constraints={"AllowedPattern": KMS_KEY_PATTERN,
                       "ConstraintDescription": "empty or a KMS key ARN (arn:...:key/<uuid>)"}),
    # --- Scaling
    Param(TASK_CPU, "String", SCALING, "Task CPU (units)",
          "Fargate CPU units per task (1024 = 1 vCPU).",
          default=launch.TASK_CPU_DEFAULT, constraints={"AllowedValues": list(FARGATE_CPU_MEMORY)}),
    Param(TASK_MEMORY_LIMIT, "String", SCALING, "Task memory (MiB)",
          "Fargate memory per task; must be a valid pair with the CPU.",
          default="2048", constraints={"AllowedValues": list(ALL_FARGATE_MEMORY)}),
    Param(TASK_EPHEMERAL_STORAGE_GIB, "Number", SCALING, "Task ephemeral storage (GiB)",
          "Scratch disk per task: received instances are streamed to disk before they are stored.",
          default=50, constraints={"MinValue": 21, "MaxValue": 200}),
    Param(TASK_DESIRED_COUNT, "Number", SCALING, "Minimum tasks",
          "Tasks always running (the autoscaling minimum).",
          default=launch.TASK_DESIRED_COUNT_DEFAULT, constraints={"MinValue": 1, "MaxValue": 100}),
    Param(AUTOSCALE_MAX_CAPACITY, "Number", SCALING, "Maximum tasks",
          "Most tasks CPU target tracking may run; at least the minimum.",
          default=launch.AUTOSCALE_MAX_CAPACITY_DEFAULT, constraints={"MinValue": 1, "MaxValue": 100}),
    Param(WORKERS, "Number", SCALING, "Receiving processes per task",
          "DICOM receiving processes sharing the port in each task; 0 = one per task vCPU.",
          default=0, constraints={"MinValue": 0, "MaxValue": 16}),
    Param(MAX_POOL_CONNECTIONS, "Number", SCALING, "S3 connections per process",
          "Size of each receiving process's S3 connection pool; 0 = as many as the association limit.",
          default=0, constraints={"MinValue": 0, "MaxValue": 1000}),
    Param(SHUTDOWN_GRACE_SECONDS, "Number", SCALING, "Shutdown grace (s)",
          "Seconds a stopping task gives open associations to finish; below the 120 s stop timeout.",
          default=100, constraints={"MinValue": 1, "MaxValue": 110}),
    # --- Storage and import
    Param(DICOM_PREFIX, "String", STORAGE, "Object key prefix",
          "Optional key prefix inside the DICOM bucket, ending with a slash (e.g. site-a/). Empty for none.",
          default="",
          constraints={"AllowedPattern": r"^([A-Za-z0-9!_.*'()-]+/)*$",
                       "ConstraintDescription": "empty or path segments each ending with a slash"}),
    Param(INGEST_MODE, "String", STORAGE, "Ingest mode",
          "import: the sender's success means the instance is durably in S3, and import jobs bring it into "
          "HealthImaging minutes later. stow: the success means HealthImaging has stored it (DICOMweb STOW-RS, one "
          "request per instance), failures tell the sender to retry or that HealthImaging refused it. "
          "stow-batched: the success means durably in S3, as import; the workflow then stores the batch by "
          "STOW-RS instead of an import job (seconds instead of minutes).",
          default=ingest.DEFAULT, constraints={"AllowedValues": list(ingest.MODES)}),
    Param(STOW_KEEP_S3_COPY, "String", STORAGE, "Keep an S3 copy in stow mode",
          "With the stow ingest mode, also keep every instance HealthImaging stored in the DICOM bucket (under "
          "stowed/, where no import job reads it). Ignored in import mode.",
          default="false", constraints={"AllowedValues": ["true", "false"]}),
    Param(BATCH_MAX_INSTANCES, "Number", STORAGE, "Instances per import batch",
          "An association's instances are split into import batches of at most this many (AHI's default quota is "
          f"{limits.FILES_PER_IMPORT_JOB.whole:,} files per job; raise this only to a quota raised for the account).",
          default=limits.BATCH_MAX_INSTANCES.whole,
          constraints={"MinValue": 1, "MaxValue": limits.BATCH_MAX_INSTANCES_CEILING.whole}),
    Param(BATCH_MAX_BYTES, "Number", STORAGE, "Bytes per import batch",
          f"Import batches hold at most this many bytes (AHI allows {limits.BYTES_PER_IMPORT_JOB.whole:,} per job).",
          default=limits.BATCH_MAX_BYTES.whole,
          constraints={"MinValue": 1048576, "MaxValue": limits.BYTES_PER_IMPORT_JOB.whole}),
    Param(DICOM_OBJECT_RETENTION_DAYS, "Number", STORAGE, "DICOM object retention (days)",
          "Days received objects and manifests stay in the DICOM bucket (HealthImaging keeps the images).",
          default=30, constraints={"MinValue": 1, "MaxValue": 3650}),
    Param(IMPORT_RESULTS_RETENTION_DAYS, "Number", STORAGE, "Import result retention (days)",
          "Days HealthImaging's job output (success and failure reports) is kept.",
          default=365, constraints={"MinValue": 1, "MaxValue": 3650}),
    Param(EXISTING_DATASTORE_ID, "String", STORAGE, "Existing data store id",
          "Optional id of an existing HealthImaging data store in this region. Leave empty to create one.",
          default="",
          constraints={"AllowedPattern": r"^([0-9a-z]{32})?$",
                       "ConstraintDescription": "empty or a 32-character data store id"}),
    Param(IMPORT_POLL_SECONDS, "Number", STORAGE, "Import status check interval (s)",
          "Seconds the workflow waits for HealthImaging's job event before it checks the job's status itself (the"
          " fallback when an event is lost).",
          default=120, constraints={"MinValue": 5, "MaxValue": 3600}),
    Param(IMPORT_MAX_POLLS, "Number", STORAGE, "Import status checks",
          "Status checks before an import job is recorded as failed (check interval x checks = time limit).",
          default=120, constraints={"MinValue": 1, "MaxValue": MAX_IMPORT_POLLS}),
    Param(SWEEP_INTERVAL_MINUTES, "Number", STORAGE, "Sweep interval (min)",
          "How often the sweeper seals batches left open by a task that died.",
          default=15, constraints={"MinValue": 5, "MaxValue": 1440}),
    Param(SWEEP_MIN_AGE_MINUTES, "Number", STORAGE, "Sweep age (min)",
          "A batch without a manifest is sealed once its newest object is this old.",
          default=60, constraints={"MinValue": 10, "MaxValue": 10080}),
    # --- Operations
    Param(LOG_LEVEL, "String", OPERATIONS, "Log level",
          "Log level of the SCP and the import functions.",
          default="INFO", constraints={"AllowedValues": ["DEBUG", "INFO", "WARNING", "ERROR"]}),
    Param(LOG_RETENTION_DAYS, "Number", OPERATIONS, "Log retention (days)",
          "Days CloudWatch Logs keeps the SCP's, the functions' and the workflow's logs.",
          default=365, constraints={"AllowedValues": list(LOG_RETENTION_CHOICES)}),
    Param(AUDIT_LOG_RETENTION_DAYS, "Number", OPERATIONS, "Audit log retention (days)",
          "Days CloudWatch Logs keeps the DICOM audit messages (who sent which patient's studies, refused "
          "attempts). Six years by default: HIPAA's retention for security documentation.",
          default=2192, constraints={"AllowedValues": list(LOG_RETENTION_CHOICES)}),
    Param(ALARM_TOPIC_ARN, "String", OPERATIONS, "Alarm SNS topic",
          "Optional SNS topic ARN notified by the stack's alarms. Leave empty for none.",
          default="",
          constraints={"AllowedPattern": r"^(arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256})?$",
                       "ConstraintDescription": "empty or an SNS topic ARN"}),
    Param(CREATE_ECS_SERVICE_LINKED_ROLE, "String", OPERATIONS, "Create the ECS service-linked role",
          "true only in an account that has never used Amazon ECS (no role AWSServiceRoleForECS): the stack "
          "then creates it before its cluster, which otherwise often fails the first time. Where the role "
          "exists, true fails the stack.",
          default="false", constraints={"AllowedValues": ["true", "false"]}),
)  # fmt: skip

BY_NAME = {p.name: p for p in PARAMETERS}


def add_parameters(template: Template) -> dict[str, Parameter]:
    added = {}
    for p in PARAMETERS:
        kwargs: dict[str, Any] = {"Type": p.type, "Description": p.description, **p.constraints}
        if p.default is not None:
            kwargs["Default"] = p.default
        added[p.name] = template.add_parameter(Parameter(p.name, **kwargs))
    return added


def interface_metadata() -> dict[str, Any]:
    groups = [
        {"Label": {"default": group}, "Parameters": [p.name for p in PARAMETERS if p.group == group]}
        for group in GROUP_ORDER
    ]
    labels = {p.name: {"default": p.label} for p in PARAMETERS}
    return {"AWS::CloudFormation::Interface": {"ParameterGroups": groups, "ParameterLabels": labels}}
