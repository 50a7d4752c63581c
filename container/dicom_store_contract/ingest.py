"""How instances reach AWS HealthImaging: the ingest modes, and the DICOMweb store service facts the SCP (which
calls it), the template (which grants it) and the docs share.

- ``import`` (the default): the C-STORE success means "durably in S3"; a batch's manifest starts an import job.
- ``stow``: the C-STORE success means "in HealthImaging": each instance is sent by STOW-RS (StoreDICOM) and
  answered only once the response lists it as stored.
- ``stow-batched``: the C-STORE success means "durably in S3", as in import mode; the batch's manifest starts the
  same workflow, which stores the batch by STOW-RS (functions/store_batch.py) instead of an import job: seconds
  instead of minutes to "in HealthImaging".
"""

from __future__ import annotations

from . import tables
from .limits import STORING_PAGE

IMPORT = "import"
STOW = "stow"
STOW_BATCHED = "stow-batched"
MODES: tuple[str, ...] = (IMPORT, STOW, STOW_BATCHED)
# The modes whose C-STORE success means "durably in S3" and whose batches the workflow takes (manifests).
S3_FIRST: tuple[str, ...] = (IMPORT, STOW_BATCHED)
DEFAULT = IMPORT

# The job item of a stow-batched batch (StoreBatch writes it; no import job): its jobId is ours, and never one of
# HealthImaging's (JobId: [0-9a-z]{1,32}, no hyphen), so no reader asks HealthImaging about it.
STOW_JOB_PREFIX = "stow-"


def stow_job_id(batch_id: str) -> str:
    """The jobId of the job item StoreBatch writes for the batch."""
    return f"{STOW_JOB_PREFIX}{batch_id}"


def is_stow_job(job_id: str) -> bool:
    """A job item StoreBatch wrote, not a HealthImaging import job."""
    return job_id.startswith(STOW_JOB_PREFIX)


# SigV4 signing name of the DICOMweb APIs (STORING_PAGE's examples sign with aws:amz:<region>:medical-imaging).
SIGNING_SERVICE = "medical-imaging"
# The IAM action of StoreDICOM and StoreDICOMStudy; on the data store only, for the task role in stow mode and for
# the workflow's StoreBatch function in stow-batched mode.
STORE_ACTION = "medical-imaging:StoreDICOM"
SOURCE = STORING_PAGE


def dicomweb_base_url(region: str, datastore_id: str, url_suffix: str = "amazonaws.com") -> str:
    """The data store's DICOMweb base URL; StoreDICOM is ``POST <base>/studies``."""
    return f"https://dicom-medical-imaging.{region}.{url_suffix}/datastore/{datastore_id}"


# -- stow mode's record of each outcome, in the instance table --------------------------------------------------
# The states are the import pipeline's (functions/tracking.py InstanceState): a reader cannot tell, and need not,
# whether an import job or a STOW-RS response said it. IMPORTED: the response listed the instance as stored (with
# the image set its Retrieve URL names); FAILED: HealthImaging refused it (failureReason says what it answered).
STOW_STORED = "IMPORTED"
STOW_REFUSED = "FAILED"
IMAGE_SET_ID = "imageSetId"
FAILURE_REASON = "failureReason"
SOP_CLASS_UID = "sopClassUID"
UPDATED_AT = "updatedAt"  # UTC, ISO 8601 with milliseconds and Z: a record never replaces a later one

# Every attribute stow mode's item may have: in stow mode the template lets the SCP's task role write these.
STOW_ITEM_ATTRIBUTES = (
    tables.SOP_INSTANCE_UID,
    tables.STUDY_INSTANCE_UID,
    tables.SERIES_INSTANCE_UID,
    tables.BATCH_ID,
    SOP_CLASS_UID,
    "state",
    IMAGE_SET_ID,
    FAILURE_REASON,
    UPDATED_AT,
)
