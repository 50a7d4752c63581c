"""The storage layout: the same keys in a local folder and in S3.

``<prefix>incoming/<batch-id>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` and ``<prefix>manifests/<batch-id>.json``.
The batch prefix is the unit of an AWS HealthImaging import job (AHI imports every Part 10 file under
``inputS3Uri``), so a batch id must never repeat.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

INCOMING = "incoming/"
MANIFESTS = "manifests/"
# Local store only: storage commitment transactions (container/dicom_store_scp/commitment/local.py), one JSON each.
COMMITMENTS = "commitments/"
# INGEST_MODE=stow with STOW_KEEP_S3_COPY: the archive copy's layout lives under this folder
# (``<prefix>stowed/incoming/``, ``<prefix>stowed/manifests/``), where neither the manifest notification nor the
# sweeper looks: those instances are already in HealthImaging, and an import job must not store them again.
STOWED = "stowed/"
# Local store only: refused C-STOREs (dicom_store_contract.refusals), one JSON each, a folder per UTC day:
# refused/<YYYYMMDD>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.json, "unknown" for a UID the refusal does not know
# (no UID is a word).
REFUSED = "refused/"
REFUSED_UNKNOWN_UID = "unknown"
REFUSAL_SUFFIX = ".json"
INSTANCE_SUFFIX = ".dcm"
MANIFEST_SUFFIX = ".json"
# Local store in stow mode without an instance table: what HealthImaging answered for each instance sent (the
# instance table's stow item, as JSON: dicom_store_contract.ingest.STOW_ITEM_ATTRIBUTES), where ``dicom-store-scp
# status`` reads it: stowed/outcomes/<batch-id>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.json, one per association
# that sent the instance (status shows its newest stored outcome, else its newest refusal, as the table would).
STOW_OUTCOMES = STOWED + "outcomes/"
OUTCOME_SUFFIX = ".json"

# UTC time the batch opened, then a uuid4: sortable by time, never repeated, and within both a Step Functions
# execution name and an AHI clientToken (limits.EXECUTION_NAME_LENGTH, limits.CLIENT_TOKEN_LENGTH).
BATCH_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{32}$")
BATCH_ID_FORM = "YYYYMMDDTHHMMSSZ-<32 hex>"


def new_batch_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex}"


def is_batch_id(text: str) -> bool:
    return BATCH_ID_PATTERN.match(text) is not None


def normalise_prefix(prefix: str) -> str:
    """``DICOM_PREFIX`` as a user gives it (``site-a``, ``/site-a/``) to the form keys use (``site-a/``)."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def incoming_prefix(prefix: str) -> str:
    """Where every batch's folder lives."""
    return f"{prefix}{INCOMING}"


def manifests_prefix(prefix: str) -> str:
    """Where every manifest lives; the S3 notification that starts an import filters on it."""
    return f"{prefix}{MANIFESTS}"


def batch_prefix(prefix: str, batch_id: str) -> str:
    return f"{incoming_prefix(prefix)}{batch_id}/"


def instance_key(prefix: str, batch_id: str, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    return f"{batch_prefix(prefix, batch_id)}{study_uid}/{series_uid}/{sop_instance_uid}{INSTANCE_SUFFIX}"


def manifest_key(prefix: str, batch_id: str) -> str:
    return f"{manifests_prefix(prefix)}{batch_id}{MANIFEST_SUFFIX}"


def refusal_key(day: str, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """Where the local store records a refusal (``day``: YYYYMMDD, UTC)."""
    study, series = (uid or REFUSED_UNKNOWN_UID for uid in (study_uid, series_uid))
    return f"{REFUSED}{day}/{study}/{series}/{sop_instance_uid}{REFUSAL_SUFFIX}"


def stow_outcome_key(batch_id: str, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """Where the local store records HealthImaging's answer for one instance sent in stow mode."""
    batch, study, series = (part or REFUSED_UNKNOWN_UID for part in (batch_id, study_uid, series_uid))
    return f"{STOW_OUTCOMES}{batch}/{study}/{series}/{sop_instance_uid}{OUTCOME_SUFFIX}"


def batch_id_of_folder(folder: str) -> str | None:
    """The batch id of a listed ``<prefix>incoming/<batch-id>/`` folder, or None when it is not one."""
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    return name if is_batch_id(name) else None


def uids_of_instance_key(key: str) -> tuple[str, str, str]:
    """(study, series, SOP instance) UIDs as the key names them; empty strings where the key is too short."""
    study, series, name = ["", "", "", *key.rsplit("/", 3)][-3:]
    if name.endswith(INSTANCE_SUFFIX):
        name = name[: -len(INSTANCE_SUFFIX)]
    return study, series, name
