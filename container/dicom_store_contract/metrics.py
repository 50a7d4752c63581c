"""The SCP's own CloudWatch metrics: one name, unit and meaning each, in one place.

The SCP writes them as embedded metric format (EMF) lines on standard error (dicom_store_scp/metrics.py), the
awslogs driver delivers them, and CloudWatch Logs turns them into metrics in :data:`NAMESPACE`. The template's
dashboard and alarms (template_gen/monitoring.py) name metrics only through this module, and a test checks that
every metric they name is one listed here or an AWS namespace's.

Dimensions are kept few: every metric carries :data:`SERVICE` (the stack name in the product), and two carry one
more whose values are bounded and listed here (:data:`REJECTION_REASONS`, :data:`STATUS_FAMILIES`).
"""

from __future__ import annotations

from dataclasses import dataclass

# The product's one namespace: the functions' Powertools metrics (FUNCTION_METRICS) are published in it too.
NAMESPACE = "DicomStoreScp"

# Dimension names.
# Powertools names its service dimension so; the SCP uses the same name (value: METRICS_SERVICE).
SERVICE = "service"
REASON = "Reason"
STATUS_FAMILY = "StatusFamily"

# What a metric's value is per EMF record.
COUNT = "count"  # events in the interval; graph with Sum
GAUGE = "gauge"  # one reading per worker and interval; graph with Sum (across workers) or Maximum
DISTRIBUTION = "distribution"  # every observation (EMF Values/Counts); graph with p50/p99


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str  # a CloudWatch StandardUnit
    kind: str
    meaning: str
    # A second dimension (besides SERVICE) this metric is also published under, "" for none.
    by: str = ""


ASSOCIATIONS_ACCEPTED = Metric("AssociationsAccepted", "Count", COUNT, "associations accepted (A-ASSOCIATE-AC)")
ASSOCIATIONS_REJECTED = Metric(
    "AssociationsRejected", "Count", COUNT, "associations rejected (A-ASSOCIATE-RJ), also by Reason", by=REASON
)
PROTOCOL_ABORTS = Metric("ProtocolAborts", "Count", COUNT, "connections the SCP aborted (A-ABORT) for a protocol fault")
ACTIVE_ASSOCIATIONS = Metric(
    "ActiveAssociations", "Count", GAUGE, "associations open, averaged over the interval, per worker"
)
INSTANCES_STORED = Metric("InstancesStored", "Count", COUNT, "instances stored durably and answered success")
STORES_FAILED = Metric(
    "StoresFailed",
    "Count",
    COUNT,
    "C-STORE requests answered with a failure status, also by StatusFamily",
    by=STATUS_FAMILY,
)
BYTES_RECEIVED = Metric("BytesReceived", "Bytes", COUNT, "bytes of the instances stored, as received")
STORE_LATENCY = Metric(
    "StoreLatency",
    "Milliseconds",
    DISTRIBUTION,
    "from the last byte of a data set received to it being durable (stow mode: stored in AWS HealthImaging)",
)
RECEIVE_LATENCY = Metric(
    "ReceiveLatency",
    "Milliseconds",
    DISTRIBUTION,
    "from a stored instance's C-STORE request in to its data set complete in the spool file (the sender's pace)",
)
AHI_STORE_LATENCY = Metric(
    "AHIStoreLatency",
    "Milliseconds",
    DISTRIBUTION,
    "one instance's STOW-RS store, request to response, retries included, whatever the answer (stow mode)",
)
S3_UPLOAD_LATENCY = Metric("S3UploadLatency", "Milliseconds", DISTRIBUTION, "one instance's upload to S3 (S3 mode)")
SPOOL_BYTES = Metric("SpoolBytes", "Bytes", GAUGE, "bytes in the worker's spool folder (data sets being received)")
BATCHES_SEALED = Metric("BatchesSealed", "Count", COUNT, "batches whose manifest was written")
MANIFESTS_FAILED = Metric("ManifestsFailed", "Count", COUNT, "manifests that could not be written (the sweeper seals)")
AUDIT_MESSAGES_DROPPED = Metric(
    "AuditMessagesDropped", "Count", COUNT, "audit messages dropped: a destination's queue was full while it was down"
)

SCP_METRICS: tuple[Metric, ...] = (
    ASSOCIATIONS_ACCEPTED,
    ASSOCIATIONS_REJECTED,
    PROTOCOL_ABORTS,
    ACTIVE_ASSOCIATIONS,
    INSTANCES_STORED,
    STORES_FAILED,
    BYTES_RECEIVED,
    STORE_LATENCY,
    RECEIVE_LATENCY,
    AHI_STORE_LATENCY,
    S3_UPLOAD_LATENCY,
    SPOOL_BYTES,
    BATCHES_SEALED,
    MANIFESTS_FAILED,
    AUDIT_MESSAGES_DROPPED,
)

# Values of the REASON dimension: why an association was rejected (PS3.8 7.1.1.9 and the SCP's own checks).
REJECTION_REASONS: tuple[str, ...] = (
    "CalledAETitle",  # called AE title is not this SCP's (REQUIRE_CALLED_AE_TITLE)
    "CallingAETitle",  # calling AE title not allowed (REQUIRE_CALLING_AE_TITLE)
    "PeerAddress",  # peer outside PEER_CIDRS
    "AssociationLimit",  # MAXIMUM_ASSOCIATIONS reached
    "Other",  # application context or protocol version not supported, or no reason given
)

# Values of the STATUS_FAMILY dimension: the C-STORE failure status families of PS3.4 B.2.3.
STATUS_FAMILIES: tuple[str, ...] = (
    "OutOfResources",  # A7xx: storage failed or the association was closing; the sender should retry
    "SOPClassNotSupported",  # 0122, 0211: not a storage request for its presentation context
    "DataSetMismatch",  # A9xx: data set does not match the request's SOP class or instance
    "CannotUnderstand",  # Cxxx: data set or request unusable
)


@dataclass(frozen=True)
class FunctionMetric:
    """A metric a Lambda function publishes with Powertools (``metrics.add_metric``) in :data:`NAMESPACE`.

    Powertools adds the dimension ``service`` = the function's POWERTOOLS_SERVICE_NAME, which the template makes
    ``<stack name>-<function's service name>`` (template_gen/pipeline.py): one stack's functions apart from another's.
    A test reads functions/ and checks each is still published there under this name.
    """

    name: str
    module: str  # functions/<module>.py
    meaning: str
    # Other functions/<module>.py that publish it too, each under its own service.
    also: tuple[str, ...] = ()

    @property
    def modules(self) -> tuple[str, ...]:
        return (self.module, *self.also)


INSTANCES_IMPORTED = FunctionMetric("InstancesImported", "check_status", "instances an import job imported")
INSTANCES_NOT_IMPORTED = FunctionMetric("InstancesFailed", "check_status", "instances an import job failed to import")
INSTANCES_WITH_WARNINGS = FunctionMetric(
    "InstancesImportedWithWarnings", "check_status", "instances imported with AHI warnings (warning.ndjson)"
)
INSTANCES_NOT_PRIMARY = FunctionMetric(
    "InstancesInNonPrimaryImageSets", "check_status", "instances AHI put in a non-primary image set (a conflict)"
)
IMPORT_JOBS_STARTED = FunctionMetric("ImportJobsStarted", "start_import_job", "import jobs started")
BATCH_INSTANCES_STORED = FunctionMetric(
    "BatchInstancesStored", "store_batch", "instances StoreDICOM stored (stow-batched: the import job's counterpart)"
)
BATCH_INSTANCES_NOT_STORED = FunctionMetric(
    "BatchInstancesNotStored", "store_batch", "instances StoreBatch recorded FAILED (HealthImaging refused, or missing)"
)
STORE_DICOM_REQUESTS = FunctionMetric("StoreDicomRequests", "store_batch", "StoreDICOM requests StoreBatch sent")
BATCHES_STARTED = FunctionMetric("BatchesStarted", "trigger_import", "batches whose import workflow started")
MANIFESTS_REJECTED = FunctionMetric("ManifestsRejected", "trigger_import", "manifests that failed the checks")
MANIFEST_ENTRIES_REJECTED = FunctionMetric(
    "ManifestEntriesRejected", "trigger_import", "manifest entries not imported as listed (recorded FAILED, or copies)"
)
BATCHES_FAILED = FunctionMetric("BatchesFailed", "record_failure", "batches whose import workflow failed")
BATCHES_TIMED_OUT = FunctionMetric("BatchesTimedOut", "record_failure", "batches whose import job did not end in time")
BATCHES_SWEPT = FunctionMetric("BatchesSwept", "sweeper", "abandoned batches the sweeper sealed")
# Every step that writes an ingest outcome to the audit log group (dicom_store_contract.audit_ingest) publishes it.
AUDIT_MESSAGES_NOT_WRITTEN = FunctionMetric(
    "AuditMessagesNotWritten",
    "check_status",
    "ingest audit messages given up after PutLogEvents retries",
    also=("store_batch", "record_failure"),
)

FUNCTION_METRICS: tuple[FunctionMetric, ...] = (
    INSTANCES_IMPORTED,
    INSTANCES_NOT_IMPORTED,
    INSTANCES_WITH_WARNINGS,
    INSTANCES_NOT_PRIMARY,
    IMPORT_JOBS_STARTED,
    BATCH_INSTANCES_STORED,
    BATCH_INSTANCES_NOT_STORED,
    STORE_DICOM_REQUESTS,
    BATCHES_STARTED,
    MANIFESTS_REJECTED,
    MANIFEST_ENTRIES_REJECTED,
    BATCHES_FAILED,
    BATCHES_TIMED_OUT,
    BATCHES_SWEPT,
    AUDIT_MESSAGES_NOT_WRITTEN,
)

# EMF allows at most 100 values in one metric's array (and 100 metrics in one document).
EMF_MAX_VALUES = 100


def by_name() -> dict[str, Metric]:
    return {metric.name: metric for metric in SCP_METRICS}
