"""Object keys and batch ids: the storage layout shared by the SCP, the sweeper and the import pipeline.

See docs/contracts.md. The batch prefix is the unit of an AWS HealthImaging import job (AHI imports every
Part 10 file under ``inputS3Uri``), so a batch id must never repeat.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

INCOMING = "incoming/"
MANIFESTS = "manifests/"

# Sortable by time, unique by uuid4; fits a Step Functions execution name and an AHI clientToken.
BATCH_ID_PATTERN = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{32}$")


def new_batch_id(now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex}"


def batch_prefix(prefix: str, batch_id: str) -> str:
    return f"{prefix}{INCOMING}{batch_id}/"


def instance_key(prefix: str, batch_id: str, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    return f"{batch_prefix(prefix, batch_id)}{study_uid}/{series_uid}/{sop_instance_uid}.dcm"


def manifest_key(prefix: str, batch_id: str) -> str:
    return f"{prefix}{MANIFESTS}{batch_id}.json"


def normalise_prefix(prefix: str) -> str:
    """``DICOM_PREFIX`` as given by a user (``site-a``, ``/site-a/``) to the form keys use (``site-a/``)."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""
