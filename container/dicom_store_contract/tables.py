"""The tracking tables' keys and indexes: what the template defines and every reader queries by.

The items themselves (their attributes and states) belong to ``functions/tracking.py``; this module names only
what a reader needs to find them without a scan: the instance table is keyed by SOP Instance UID and has one
index per other way an operator asks ("this study", "this series", "this batch"), each sorted by SOP Instance UID.
"""

from __future__ import annotations

from dataclasses import dataclass

# Instance table: one item per SOP instance.
SOP_INSTANCE_UID = "sopInstanceUID"
STUDY_INSTANCE_UID = "studyInstanceUID"
SERIES_INSTANCE_UID = "seriesInstanceUID"
BATCH_ID = "batchId"
# Present (true) on an instance the workflow gave up on (RecordFailure: FAILED or TIMED_OUT) rather than one
# HealthImaging refused: no outcome of the batch's, so a re-drive of the batch sends it again. Every other write of
# the instance's state removes it (functions/tracking.py).
WORKFLOW_GAVE_UP = "workflowGaveUp"

# Job table: one item per import job.
JOB_ID = "jobId"

# Commitment table: one item per storage commitment transaction (container/dicom_store_scp/commitment/dynamo.py).
RECORD_ID = "recordId"
PENDING = "pending"  # present only while the transaction awaits its report: the index below is sparse
EXPIRES_AT = "expiresAt"  # epoch seconds: DynamoDB's time to live removes the item (the retention)


@dataclass(frozen=True)
class Index:
    """A global secondary index: its name, partition key and (optional) sort key, all string attributes."""

    name: str
    partition_key: str
    sort_key: str | None = None


INSTANCES_BY_STUDY = Index("studyInstanceUID-index", STUDY_INSTANCE_UID, SOP_INSTANCE_UID)
INSTANCES_BY_SERIES = Index("seriesInstanceUID-index", SERIES_INSTANCE_UID, SOP_INSTANCE_UID)
INSTANCES_BY_BATCH = Index("batchId-index", BATCH_ID, SOP_INSTANCE_UID)
INSTANCE_INDEXES = (INSTANCES_BY_STUDY, INSTANCES_BY_SERIES, INSTANCES_BY_BATCH)

JOBS_BY_BATCH = Index("batchId-index", BATCH_ID)
JOB_INDEXES = (JOBS_BY_BATCH,)

# Transactions still to report, for a task that takes over those of a task that stopped.
PENDING_COMMITMENTS = Index("pending-index", PENDING)
COMMITMENT_INDEXES = (PENDING_COMMITMENTS,)
