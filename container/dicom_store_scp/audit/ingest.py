"""INGEST_MODE=stow: the ingest outcome in AWS HealthImaging, which the SCP itself learns, as audit messages.

stow.py hands HealthImaging's answer for each instance to its record writer (``records.record``), in the thread
that answers the C-STORE. :class:`StowAuditRecords` stands in that writer's place: it tells the audit trail (a list
append, nothing more: the answer never waits for an audit message) and passes the record on to the instance table
writer. At the association's end the trail reports each study's outcome in HealthImaging as one message, the same
kind CheckStatus writes for an import job (dicom_store_contract.audit_ingest).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from dicom_store_contract import ingest
from dicom_store_contract.audit_ingest import data_store_node

from .trail import AuditTrail


class StowAuditRecords:
    """stow.py's record writer, seen by the audit trail first."""

    def __init__(self, trail: AuditTrail, records: Any = None) -> None:
        self.trail = trail
        self.records = records

    def record(self, record: Any) -> None:
        self.trail.stow_answered(
            record.study_instance_uid,
            record.sop_class_uid,
            record.state == ingest.STOW_STORED,
            record.image_set_id,
            record.failure_reason,
        )
        if self.records is not None:
            self.records.record(record)


def name_data_store(trail: AuditTrail, datastore_id: str, studies_url: str) -> None:
    """The messages' destination: the data store (its id), at the DICOMweb endpoint stow.py posts to."""
    trail.data_store = data_store_node(datastore_id or "unknown", urlsplit(studies_url).hostname or studies_url)
